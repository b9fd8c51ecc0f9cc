"""What the pod watch (--watch-consumers) finds, reported on the GraphAppCredential whose token Secret the pods
read: a Warning Event per pod, `status.unrefreshableConsumers`, and the gauge `graphcred_unrefreshable_consumers`.

Runs on the event loop, fed by the pod watch's thread (through call_soon_threadsafe) and by the controller (which
credential writes which Secret). One task reports, in batches: half a second after a change, and a credential only
once the pod watch covering its namespace has settled (its lists complete), so that at start a count is not cleared
before the pods were listed; a watch that cannot list one namespace holds back that namespace's reports only.

- Events: each credential hears once about each group of pods (a controller's pods: a ReplicaSet of 1,000 is one
  Event naming one pod and the count; an ownerless pod alone, by uid) while any of the group remains, in this
  process's life; later updates post nothing. After a restart or a leader change each group is reported again,
  once.
- The status field belongs to this module alone: one merge patch of that one field, only when the count differs
  from the object's, which the reconciler's status patches leave alone (`reporting.status_patch`): neither
  overwrites the other. Absent means none. Without --watch-consumers no pod is watched, and a count left by an
  earlier run is removed, so the field never claims what nobody checks.
- Only the acting replica runs this: standbys run neither kopf nor any watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any, Protocol

from graphcred.base.backoff import backoff
from graphcred.consumers.pods import ConsumerIndex, PodConsumer, PodKey, SecretKey, warning_message
from graphcred.consumers.podwatch import PodWatch
from graphcred.kube.calls import Gone, describe_failure
from graphcred.reconcile.ports import EventSink, StatusPort
from graphcred.reconcile.snapshot import Snapshot
from graphcred.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

Key = tuple[str, str]  # a GraphAppCredential: namespace, name
STATUS_FIELD = "unrefreshableConsumers"
REASON = "UnrefreshableConsumer"
SETTLE_SECONDS = 0.5  # a burst of pod events (a Deployment scaled up) makes one batch


class Credentials(Protocol):
    """What the reports need to know of the credentials (the controller)."""

    def writers_of(self, secret: SecretKey) -> Collection[Key]: ...

    def snapshot_of(self, key: Key) -> Snapshot | None: ...

    def token_secret_of(self, key: Key) -> SecretKey | None: ...


class ConsumerReports:
    """The reports of the pods reading token Secrets where no refresh reaches them (the module's docstring says
    what is reported and when). Fed on the event loop by the pod watches (`pod_changed`, `listed`) and by the
    controller as its `TokenSecretListener` (`token_secret_added`, `token_secret_removed`); one task (`start`,
    `stop`) writes the reports through `kube` (the status field) and `emit` (the Events).

    `watching`: --watch-consumers. Off, no pod is followed and the task only removes counts an earlier run left.
    """

    def __init__(self, credentials: Credentials, kube: StatusPort, emit: EventSink, metrics: Metrics,
                 run_blocking: Callable[..., Awaitable[Any]], *, watching: bool) -> None:
        self.credentials = credentials
        self.kube = kube
        self.emit = emit
        self.metrics = metrics
        self._run_blocking = run_blocking
        self.watching = watching  # off: no pods are followed; only counts left by an earlier run are removed
        self.index = ConsumerIndex()
        self.watches: list[PodWatch] = []
        self._dirty: set[Key] = set()  # credentials whose count, Events or gauge may be due
        # the count last patched on each object: its watch event may not have reached the snapshot yet
        self._written: dict[Key, int | None] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # the restarter's, for restartUnrefreshable: the pods reading a credential's token Secret changed
        self.on_consumers_changed: Callable[[Key], None] = lambda _key: None

    # --- wiring -------------------------------------------------------------------------------------------------
    def attach(self, watches: Iterable[PodWatch]) -> None:
        """The pod watches whose lists tell when a namespace has settled, and which list again for a new token
        Secret (the wiring creates them after the reports: they call back into them)."""
        self.watches = list(watches)

    def start(self) -> None:
        """Start the reporting task unless it runs (at startup, once the loop runs)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="graphcred:consumers")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- from the pod watch (on the loop) -----------------------------------------------------------------------
    def pod_changed(self, namespace: str, name: str, consumer: PodConsumer | None) -> None:
        self._touch(self.index.put((namespace, name), consumer))

    def listed(self, namespace: str | None, seen: frozenset[PodKey]) -> None:
        self._touch(self.index.retain(namespace, seen))
        self._wake.set()  # perhaps settled now

    # --- from the controller ------------------------------------------------------------------------------------
    def token_secret_added(self, key: Key, secret: SecretKey) -> None:
        """`key` writes `secret` from now on. The first writer of a Secret has its namespace listed again: its
        pods were not followed until now."""
        if self.watching and len(self.credentials.writers_of(secret)) == 1:
            for watch in self.watches:
                if watch.namespace in (None, secret[0]):
                    watch.rescan(secret[0])
        self._dirty.add(key)
        self._wake.set()

    def token_secret_removed(self, key: Key, secret: SecretKey) -> None:
        if not self.credentials.writers_of(secret):
            self.index.drop_secret(secret)  # no one writes it any more: its pods are nobody's concern
        self._dirty.discard(key)
        self._written.pop(key, None)

    def owners_of(self, key: Key) -> tuple[str, set[str]] | None:
        """The credential's token Secret and the controllers of the pods reading it where no refresh reaches them;
        None until the pod watch has listed the namespace (an empty set before that would mean "none")."""
        secret = self.credentials.token_secret_of(key)
        if secret is None or not self._settled(secret[0]):
            return None
        return secret[1], self.index.owners(secret)

    def _touch(self, secrets: Iterable[SecretKey]) -> None:
        for secret in secrets:
            writers = self.credentials.writers_of(secret)
            self._dirty.update(writers)
            for key in writers:
                self.on_consumers_changed(key)
        if self._dirty:
            self._wake.set()

    # --- reporting ----------------------------------------------------------------------------------------------
    def _settled(self, namespace: str) -> bool:
        return all(watch.settled() for watch in self.watches if watch.namespace in (None, namespace))

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            await asyncio.sleep(SETTLE_SECONDS)
            self._wake.clear()
            dirty = {key for key in self._dirty if self._settled(key[0])}
            self._dirty -= dirty  # the rest wait for their list under way, which wakes this (ConsumerReports.listed)
            failed = 0
            for key in sorted(dirty):
                try:
                    await self._report(key)
                except Exception as exc:  # noqa: BLE001 - retried: one object's failure must not stop the rest
                    failed += 1
                    self._dirty.add(key)
                    log.warning("%s/%s: could not report its unrefreshable consumers (%s)", key[0], key[1],
                                describe_failure("patch GraphAppCredential status", exc))
            failures = failures + 1 if failed else 0
            if failed:
                self._wake.set()
                await asyncio.sleep(backoff(failures, None))

    async def _report(self, key: Key) -> None:
        """The credential's Events due, gauge and status count, from what the index holds now."""
        snap, secret = self.credentials.snapshot_of(key), self.credentials.token_secret_of(key)
        if snap is None or secret is None:
            return  # forgotten meanwhile, or not indexed yet (its first pass indexes it and marks it again)
        count = self.index.count(secret) if self.watching else 0
        if self.watching:
            self.metrics.consumers.labels(*key).set(count)
            for pod, consumer, pods in self.index.unwarned(secret, snap.uid):
                message = warning_message(pod[0], pod[1], secret[1], consumer.findings, owner=consumer.owner,
                                          pods=pods)
                self.emit(snap.event_ref(), "Warning", REASON, message)
                log.warning("%s/%s: %s: %s", key[0], key[1], REASON, message)
        wanted = count or None
        if snap.status.get(STATUS_FIELD) == wanted and self._written.get(key, wanted) == wanted:
            return  # the object says so, and no patch of ours says otherwise since
        try:
            await self._run_blocking(self.kube.patch_status, key[0], key[1], {STATUS_FIELD: wanted})
        except Gone:
            return  # deleted: nothing to report on
        self._written[key] = wanted
