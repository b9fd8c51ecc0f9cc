"""Leader election with a coordination.k8s.io Lease, so that of several replicas exactly one acts.

Clocks are never compared across replicas (as in client-go): a candidate judges a Lease expired when the record
(holder, renewTime, resourceVersion) has not changed for a whole lease duration since *it* first saw it so,
measured on its own monotonic clock. The leader counts from the start of its last successful renewal, also on its
monotonic clock, and stops acting once that is older than the renew deadline, which is shorter than the lease
duration: it stops before anyone can take the Lease, even when a renewal call hangs. The wall clock is only
written into the Lease for people reading it. On a clean shutdown the leader releases the Lease so a standby
takes over at once.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from kubernetes import client

from graphcred.base.times import rfc3339_micro

log = logging.getLogger(__name__)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _parse(text: str | None) -> dt.datetime | None:
    """MicroTime as the API sends it (...Z) or as the client serializes it (+00:00)."""
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


# --- the decisions: pure, on this process's monotonic clock ----------------------------------------------------
@dataclass(frozen=True)
class Seen:
    """A Lease record as this process last read it, and when (its monotonic clock) it first read it so."""

    holder: str
    renew_time: str
    resource_version: str
    at: float


def observe(seen: Seen | None, holder: str, renew_time: str, resource_version: str, now: float) -> Seen:
    """The record just read: a change restarts the count; an unchanged record keeps when it was first seen."""
    if seen is not None and (seen.holder, seen.renew_time, seen.resource_version) == (
            holder, renew_time, resource_version):
        return seen
    return Seen(holder, renew_time, resource_version, now)


def may_take(seen: Seen, identity: str, duration: float, now: float) -> bool:
    """Free, ours, or unchanged for a whole lease duration as *this* process saw it. The record's renewTime is
    another replica's wall clock: it is never compared with ours."""
    return not seen.holder or seen.holder == identity or now - seen.at >= duration


def renew_overdue(last_renew_started: float, renew_deadline: float, now: float) -> bool:
    """The leader must stop acting: its last successful renewal began more than the renew deadline ago. Counted
    from the start of the attempt, as the write may have landed at any moment of it."""
    return now - last_renew_started > renew_deadline


# --- the I/O ---------------------------------------------------------------------------------------------------
class LeaseElector:
    """`lease_seconds`: how long a Lease lasts without renewal. `renew_deadline` (default 2/3 of it): how long
    the leader keeps acting without a successful renewal. `retry_seconds`: the pause between attempts. Each call
    to the apiserver times out well within the renew deadline."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str, identity: str,
                 lease_seconds: float = 15.0, renew_deadline: float | None = None,
                 retry_seconds: float | None = None, clock: Callable[[], dt.datetime] = _now,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.api = client.CoordinationV1Api(_without_retries(api))
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_seconds = lease_seconds
        self.renew_deadline = renew_deadline if renew_deadline is not None else lease_seconds * 2 / 3
        if not 0 < self.renew_deadline < lease_seconds:
            raise ValueError("the renew deadline must be shorter than the lease duration")
        self.retry_seconds = retry_seconds if retry_seconds is not None else max(0.2, lease_seconds / 7.5)
        # (connect, read) per call: an attempt, a read and a write, ends within 3/4 of the renew deadline, so a
        # hung connection costs one attempt, not the Lease. (The watchdog keeps the deadline regardless.)
        self.timeout = (max(0.25, self.renew_deadline / 8), max(0.5, self.renew_deadline / 4))
        self._clock, self._monotonic = clock, monotonic
        self._seen: Seen | None = None
        self._renewed_at = monotonic()  # start of the last successful attempt
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # --- one attempt --------------------------------------------------------------------------------------------
    def try_acquire_or_renew(self) -> bool:
        started = self._monotonic()
        lease = self._read()
        now = self._clock()
        # rounded up: a standby must never count a shorter lease than the one this leader keeps its deadline in
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": math.ceil(self.lease_seconds),
                "acquireTime": rfc3339_micro(now), "renewTime": rfc3339_micro(now), "leaseTransitions": 0}
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
            try:
                self.api.create_namespaced_lease(self.namespace, cast(Any, body), _request_timeout=self.timeout)
            except client.ApiException as exc:
                if exc.status == 409:
                    return False  # someone else created it first
                raise
            self._renewed_at = started
            return True
        current = lease.get("spec") or {}
        holder = current.get("holderIdentity") or ""
        self._seen = observe(self._seen, holder, str(current.get("renewTime") or ""),
                             str((lease.get("metadata") or {}).get("resourceVersion") or ""), self._monotonic())
        duration = float(current.get("leaseDurationSeconds") or self.lease_seconds)
        if not may_take(self._seen, self.identity, duration, self._monotonic()):
            return False
        if holder == self.identity:
            spec["acquireTime"] = current.get("acquireTime") or spec["acquireTime"]
            spec["leaseTransitions"] = int(current.get("leaseTransitions") or 0)
        else:
            spec["leaseTransitions"] = int(current.get("leaseTransitions") or 0) + 1
        body = {**lease, "spec": spec}  # carries metadata.resourceVersion: a concurrent writer gets a 409
        try:
            self.api.replace_namespaced_lease(self.name, self.namespace, cast(Any, body),
                                              _request_timeout=self.timeout)
        except client.ApiException as exc:
            if exc.status == 409:
                return False
            raise
        self._renewed_at = started
        return True

    def _read(self) -> dict[str, Any] | None:
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=self.timeout)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            return None
        return cast(dict[str, Any], self.api.api_client.sanitize_for_serialization(lease))

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def wait_until_leader(self, stop: threading.Event | None = None,
                          tick: Callable[[bool], None] = lambda reached: None) -> bool:
        """Block until this process holds the Lease (True) or `stop` is set (False). `tick(reached)` after every
        attempt, `reached` when the apiserver answered: the standby's sign of life for its probes."""
        stop = stop or self._stop
        logged = False
        while not stop.is_set():
            try:
                won = self.try_acquire_or_renew()
            except Exception as exc:  # noqa: BLE001 - keep trying through apiserver hiccups
                log.warning("leader election: %s", type(exc).__name__)
                tick(False)
            else:
                tick(True)
                if won:
                    log.info("became leader (Lease %s/%s, identity %s)", self.namespace, self.name, self.identity)
                    return True
                if not logged:
                    log.info("standing by: Lease %s/%s is held by another replica", self.namespace, self.name)
                    logged = True
            stop.wait(self.retry_seconds)
        return False

    def keep_renewing(self, on_lost: Callable[[], None]) -> None:
        """Renew in a background thread; call `on_lost` once if the Lease is taken over or was not renewed within
        the renew deadline. A watchdog thread keeps the deadline even while a renewal call hangs."""
        lost = threading.Lock()

        def lose(why: str) -> None:
            if lost.acquire(blocking=False):  # once, from whichever thread notices first
                log.error("leader election: %s", why)
                self._stop.set()
                on_lost()

        def renew() -> None:
            while not self._stop.wait(self.retry_seconds):
                try:
                    if not self.try_acquire_or_renew():
                        lose("the Lease was taken over by another replica")
                        return
                except Exception as exc:  # noqa: BLE001 - the watchdog decides when failures are too many
                    log.warning("leader election: renewal failed (%s)", type(exc).__name__)

        def watchdog() -> None:
            while not self._stop.is_set():
                now = self._monotonic()
                if renew_overdue(self._renewed_at, self.renew_deadline, now):
                    lose(f"could not renew the Lease within {self.renew_deadline:.1f} s")
                    return
                self._stop.wait(max(0.05, self._renewed_at + self.renew_deadline - now) + 0.01)

        self._renewer = threading.Thread(target=renew, name="graphcred-lease", daemon=True)
        self._renewer.start()
        threading.Thread(target=watchdog, name="graphcred-lease-watchdog", daemon=True).start()

    def release(self) -> None:
        """Stop renewing and hand the Lease over at once (clean shutdown)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=self.renew_deadline)
        try:
            lease = self._read()
            if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = None
                lease["spec"]["renewTime"] = None
                self.api.replace_namespaced_lease(self.name, self.namespace, cast(Any, lease),
                                                  _request_timeout=self.timeout)
                log.info("released the Lease")
        except Exception as exc:  # noqa: BLE001 - the Lease expires on its own anyway
            log.warning("could not release the Lease (%s); it expires in %.0f s", type(exc).__name__,
                        self.lease_seconds)


def _without_retries(api: client.ApiClient) -> client.ApiClient:
    """The same cluster and credentials, without urllib3's own retries: they would multiply each call's timeout,
    and the election loop retries anyway."""
    configuration = copy.deepcopy(api.configuration)
    configuration.retries = False
    return client.ApiClient(configuration)
