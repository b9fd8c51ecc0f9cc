"""Leader election with a coordination.k8s.io Lease, so that of several replicas exactly one acts.

A standby waits until the Lease is free or expired, takes it, and only then starts the operator. The leader renews
the Lease; if it cannot renew before the Lease would expire, it stops acting (its replacement may already be
acting). On a clean shutdown the leader releases the Lease so a standby takes over at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any, cast

from kubernetes import client

log = logging.getLogger(__name__)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _micro(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str | None) -> dt.datetime | None:
    """MicroTime as the API sends it (...Z) or as the client serializes it (+00:00)."""
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


class LeaseElector:
    def __init__(self, api: client.ApiClient, namespace: str, name: str, identity: str,
                 lease_seconds: float = 15.0, renew_seconds: float = 5.0, retry_seconds: float = 2.0,
                 clock: Callable[[], dt.datetime] = _now) -> None:
        self.api = client.CoordinationV1Api(api)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_seconds, self.renew_seconds, self.retry_seconds = lease_seconds, renew_seconds, retry_seconds
        self._clock = clock
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # --- one attempt --------------------------------------------------------------------------------------------
    def try_acquire_or_renew(self) -> bool:
        now = self._clock()
        try:
            lease: dict[str, Any] | None = cast(dict[str, Any], self.api.api_client.sanitize_for_serialization(
                self.api.read_namespaced_lease(self.name, self.namespace)))
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            lease = None
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_seconds),
                "acquireTime": _micro(now), "renewTime": _micro(now), "leaseTransitions": 0}
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
            try:
                self.api.create_namespaced_lease(self.namespace, cast(Any, body))
            except client.ApiException as exc:
                if exc.status == 409:
                    return False  # someone else created it first
                raise
            return True
        current = lease.get("spec") or {}
        holder = current.get("holderIdentity") or ""
        renewed = _parse(current.get("renewTime"))
        duration = float(current.get("leaseDurationSeconds") or self.lease_seconds)
        expired = renewed is None or renewed + dt.timedelta(seconds=duration) < now
        if holder and holder != self.identity and not expired:
            return False
        if holder == self.identity:
            spec["acquireTime"] = current.get("acquireTime") or spec["acquireTime"]
            spec["leaseTransitions"] = int(current.get("leaseTransitions") or 0)
        else:
            spec["leaseTransitions"] = int(current.get("leaseTransitions") or 0) + 1
        body = {**lease, "spec": spec}  # carries metadata.resourceVersion: a concurrent writer gets a 409
        try:
            self.api.replace_namespaced_lease(self.name, self.namespace, cast(Any, body))
        except client.ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def wait_until_leader(self, stop: threading.Event | None = None) -> bool:
        """Block until this process holds the Lease (True) or `stop` is set (False)."""
        stop = stop or self._stop
        logged = False
        while not stop.is_set():
            try:
                if self.try_acquire_or_renew():
                    log.info("became leader (Lease %s/%s, identity %s)", self.namespace, self.name, self.identity)
                    return True
            except Exception as exc:  # noqa: BLE001 - keep trying through apiserver hiccups
                log.warning("leader election: %s", type(exc).__name__)
            if not logged:
                log.info("standing by: Lease %s/%s is held by another replica", self.namespace, self.name)
                logged = True
            stop.wait(self.retry_seconds)
        return False

    def keep_renewing(self, on_lost: Callable[[], None]) -> None:
        """Renew in a background thread; call `on_lost` if the Lease cannot be renewed in time."""

        def renew() -> None:
            last_ok = self._clock()
            while not self._stop.wait(self.renew_seconds):
                try:
                    if self.try_acquire_or_renew():
                        last_ok = self._clock()
                        continue
                    log.error("leader election: the Lease was taken over by another replica")
                except Exception as exc:  # noqa: BLE001
                    log.warning("leader election: renewal failed (%s)", type(exc).__name__)
                    if (self._clock() - last_ok).total_seconds() < self.lease_seconds - self.renew_seconds:
                        continue
                    log.error("leader election: could not renew the Lease in time")
                on_lost()
                return

        self._renewer = threading.Thread(target=renew, name="graphcred-lease", daemon=True)
        self._renewer.start()

    def release(self) -> None:
        """Stop renewing and hand the Lease over at once (clean shutdown)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=self.renew_seconds + 5)
        try:
            lease = cast(dict[str, Any], self.api.api_client.sanitize_for_serialization(
                self.api.read_namespaced_lease(self.name, self.namespace)))
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = None
                lease["spec"]["renewTime"] = None
                self.api.replace_namespaced_lease(self.name, self.namespace, cast(Any, lease))
                log.info("released the Lease")
        except Exception as exc:  # noqa: BLE001 - the Lease expires on its own anyway
            log.warning("could not release the Lease (%s); it expires in %.0f s", type(exc).__name__,
                        self.lease_seconds)
