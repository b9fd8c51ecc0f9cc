"""Per-object scheduling: one lightweight asyncio task per GraphAppCredential runs reconcile passes, sleeping
until the next refresh, a backoff step, or a wake-up (spec change, credential Secret or ServiceAccount change).

kopf feeds this from watch events (`observe`, `forget`); no kopf state is written to the objects (no finalizers,
no annotations), so the only writes are the token Secret and the status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from graphcred.api.keys import RENEW_ANNOTATION
from graphcred.base.backoff import backoff
from graphcred.kube.calls import Gone
from graphcred.kube.errors import KubeError, outage
from graphcred.reconcile.apps import labels_of
from graphcred.reconcile.appstatus import AppStatusWriter
from graphcred.reconcile.dependents import Dependents, named_by
from graphcred.reconcile.memory import Memory
from graphcred.reconcile.reconciler import Reconciler
from graphcred.reconcile.slots import PassSlot, RequestBudget, TokenPlaceGate, TurnedAway
from graphcred.reconcile.slots import running_as as running_as_pass
from graphcred.reconcile.snapshot import Snapshot

log = logging.getLogger(__name__)

Key = tuple[str, str]  # namespace, name (of a GraphAppCredential, a Secret or a ServiceAccount)
# Renew requests per credential: a few at once (a fix in Entra, then another), then one every 30 s.
RENEW_BURST = 3.0
RENEW_PER_MINUTE = 2.0


def _described(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, KubeError) else type(exc).__name__


def _newer(version: str, than: str | None) -> bool:
    """Is resourceVersion `version` newer than `than`? Numeric where possible (etcd revisions), else inequality."""
    if than is None:
        return False
    if version.isdigit() and than.isdigit():
        return int(version) > int(than)
    return version != than


def _app_named(spec: Mapping[str, Any]) -> str | None:
    ref = spec.get("appRef")
    name = ref.get("name") if isinstance(ref, Mapping) else None
    return name if isinstance(name, str) and name else None


class TokenSecretListener(Protocol):
    """Told which token Secret each credential writes (the consumer reports, --watch-consumers)."""

    def token_secret_added(self, credential: Key, secret: Key) -> None: ...

    def token_secret_removed(self, credential: Key, secret: Key) -> None: ...


class _NobodyListens:
    def token_secret_added(self, credential: Key, secret: Key) -> None:
        pass

    def token_secret_removed(self, credential: Key, secret: Key) -> None:
        pass


class Wake:
    """A worker's wake-up: what asyncio.Event does for its one waiter, the worker. An Event keeps a deque for its
    waiters (760 bytes, one per credential); this keeps a future only while the worker waits."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._set = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> None:
        if self._set:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


@dataclass
class _Worker:
    snapshot: Snapshot
    memory: Memory = field(default_factory=Memory)
    wake: Wake = field(default_factory=Wake)
    task: asyncio.Task[None] | None = None
    restarts: int = 0
    renew_seen: str | None = None  # value of the renew annotation already served (or present at start)
    renew_timer: asyncio.TimerHandle | None = None  # a renew request waiting for the credential's renew budget
    renewing: bool = False  # a pass serving a renew request is running


class Controller:
    def __init__(self, reconciler: Reconciler, max_active: int = 64, *, max_waiting: int = 1024,
                 renews: RequestBudget | None = None) -> None:
        self.reconciler = reconciler
        # forced token requests per credential (renew annotations); further requests join the one pending
        self._renews = renews if renews is not None else RequestBudget(RENEW_BURST, RENEW_PER_MINUTE)
        # ... and per namespace and shared app (`_renew_with_app`), beyond which they wait in one batch
        self._app_renews = RequestBudget(RENEW_BURST, RENEW_PER_MINUTE)
        self._renew_batches: dict[str, list[_Worker]] = {}
        # Passes in progress at once. The I/O threads bound throughput anyway; this bounds memory in a burst (each
        # pass waiting for a thread holds a rendered Secret; docs/design/2026-12-06-no-kopf-daemons.md). A pass
        # waiting for a token holds no place (PassSlot.aside): requests to a slow authority hold up no other pass.
        self._active = asyncio.Semaphore(max_active)
        # Passes waiting for a token at once (at least as many as there are token slots), a quarter per namespace,
        # like the slots: each holds ~20 KiB (its spec, read and coroutines), and in a burst all of them waited. One
        # beyond it ends before it waits, and its worker waits for a place reserved for it, at the cost of a ticket
        # (docs/design/2026-12-06-lean-at-scale.md, third step).
        places = max(max_waiting, reconciler.acquirer.slots.fair.total)
        self._waits = TokenPlaceGate(places, max(1, places // 4, reconciler.acquirer.slots.fair.share))
        self._workers: dict[Key, _Worker] = {}
        # (namespace, secret name) -> objects that read it as credential / write it as token Secret
        self.dependents = Dependents()  # who reads and writes which Secret or ServiceAccount
        # the same for ServiceAccounts named by workload identity (a name may be both a Secret's and an account's)
        self._stopping = False
        self._listener: TokenSecretListener = _NobodyListens()
        # the ClusterGraphApps' status, from how their users' passes end
        self.app_status = AppStatusWriter(reconciler.apps, reconciler.app_outcomes, reconciler.calls,
                                          reconciler.emit)
        # what the certificate rotator learns reaches the credentials using the Secret through a pass of theirs
        reconciler.rotator.on_change = lambda owner: self._wake_all((owner,))

    def __len__(self) -> int:
        return len(self._workers)

    def worker_counts(self) -> tuple[int, int]:
        """(live, dead): registered objects with and without a running task. Dead must stay 0."""
        live = sum(1 for w in list(self._workers.values()) if w.task is not None and not w.task.done())
        return live, len(self._workers) - live

    def passes_waiting(self) -> tuple[int, int]:
        """(places taken, queued): passes waiting for a token (or a place reserved for one), and workers whose pass
        was turned away, waiting for a place."""
        return self._waits.places.held, self._waits.places.queued()

    def last_statuses(self) -> list[dict[str, Any] | None]:
        """The status each registered object's worker last wrote (None before its first), for the Ready gauge."""
        return [w.memory.report.last_status for w in list(self._workers.values())]

    def credential_statuses(self) -> list[tuple[str, str, Mapping[str, Any] | None]]:
        """(namespace, name, status) of each registered object: as last written, else as the object was seen."""
        return [(key[0], key[1], w.memory.report.last_status if w.memory.report.last_status is not None
                 else w.snapshot.status) for key, w in list(self._workers.items())]

    def credential_figures(self) -> list[tuple[str, str, float | None, int]]:
        """(namespace, name, token expiry, consecutive failures) of each registered object a pass has reported on."""
        return [(key[0], key[1], *w.memory.report.figures) for key, w in list(self._workers.items())
                if w.memory.report.figures is not None]

    # --- for the consumer reports and the pod watch ----------------------------------------------------------------
    def listen(self, listener: TokenSecretListener) -> None:
        """Tell `listener` which token Secret each credential writes, from the next index change on (the wiring
        calls it before the first watch event)."""
        self._listener = listener

    def writers_of(self, secret: Key) -> Collection[Key]:
        return self.dependents.writers_of(secret)

    def snapshot_of(self, key: Key) -> Snapshot | None:
        worker = self._workers.get(key)
        return worker.snapshot if worker is not None else None

    def token_secret_of(self, key: Key) -> Key | None:
        return self.dependents.token_secret_of(key)

    def writes_token_secret(self, namespace: str, name: str) -> bool:
        """Does a credential write this Secret? Called from the pod watch's thread: one dict lookup (atomic in
        CPython) while the loop may change the dict; an answer a moment old is corrected by the rescan that
        follows every new token Secret."""
        return (namespace, name) in self.dependents.writers

    def observe(self, body: Mapping[str, Any]) -> None:
        """A GraphAppCredential was listed, added or modified."""
        if self._stopping:
            return  # a watch event that reached the loop after the stop: no worker may start now
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            self.forget(meta["namespace"], meta["name"])
            return
        snap = Snapshot.of(body)
        key = (snap.namespace, snap.name)
        renew = (meta.get("annotations") or {}).get(RENEW_ANNOTATION)
        worker = self._workers.get(key)
        if worker is not None and worker.snapshot.uid != snap.uid:
            self.forget(*key)  # deleted and re-created under the same name
            worker = None
        if worker is None:
            worker = _Worker(snap, renew_seen=renew)
            if renew is not None and renew != snap.status.get("lastRenewRequest"):
                # requested while no replica was acting (a restart, a leader change): serve it now
                worker.memory.renew.requested, worker.memory.renew.value = True, renew
                worker.memory.renew.since = self.reconciler.now()
            self._workers[key] = worker
            self._start(key, worker)
            return
        generation_changed = snap.generation != worker.snapshot.generation
        worker.snapshot = snap
        if renew is not None and renew != worker.renew_seen:
            worker.renew_seen = renew
            worker.memory.renew.value = renew  # the newest value: the request that serves it answers them all
            self._renew(key, worker)
        if generation_changed:
            worker.wake.set()  # status-only updates (our own patches) do not wake

    # --- ClusterGraphApps and namespaces (the appRef's policy) -------------------------------------------------------
    def app_event(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        """A ClusterGraphApp was listed, added, modified or deleted: its users look again (a policy change that
        withdraws permission deletes their token Secrets; an app created late lets them have one)."""
        meta = body.get("metadata") or {}
        name = str(meta.get("name") or "")
        apps = self.reconciler.apps
        if deleted:
            apps.app_gone(name)
            self.app_status.forget(name)
            changed = True
        else:
            changed = apps.app_seen(body)
            self.app_status.seen(name, body.get("status"), int(meta.get("generation") or 1))
        if changed:
            self._wake_all(self.dependents.users_of(name))

    def namespace_event(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        """A namespace was listed, added, modified or deleted: if its labels changed, its credentials that name a
        ClusterGraphApp look again (a relabel may withdraw or grant permission)."""
        name = str((body.get("metadata") or {}).get("name") or "")
        apps = self.reconciler.apps
        if deleted:
            apps.namespace_gone(name)
            return
        if apps.namespace_seen(name, labels_of(body)):
            self._wake_all(self.dependents.app_users_in(name))

    def _wake_all(self, keys: Collection[Key]) -> None:
        for key in list(keys):
            worker = self._workers.get(key)
            if worker is not None:
                worker.wake.set()

    def _renew(self, key: Key, worker: _Worker) -> None:
        """A new renew request: served at once within the credential's renew budget, else when the budget allows;
        one already pending or being served answers it too (status.lastRenewRequest gets the newest value)."""
        if worker.renew_timer is not None or worker.memory.renew.requested or worker.renewing:
            return
        loop = asyncio.get_running_loop()
        worker.memory.renew.since = self.reconciler.now()  # a token issued after this answers the request
        app = _app_named(worker.snapshot.spec)
        if app is not None and self._renew_with_app(key[0], app, worker, loop):
            return
        wait = self._renews.reserve(f"{key[0]}/{key[1]}", loop.time())
        if wait <= 0:
            self._renew_now(worker)
        else:
            log.info("%s/%s: renew requested again within %.0f s; serving it in %.0f s", key[0], key[1],
                     60.0 / self._renews.per_minute, wait)
            worker.renew_timer = loop.call_later(wait, self._renew_now, worker)

    def _renew_with_app(self, namespace: str, app: str, worker: _Worker, loop: asyncio.AbstractEventLoop) -> bool:
        """A renew request of a credential using a shared app: its token requests are every namespace's using the
        app. A namespace's renew requests for one app are served within one budget (a credential's): beyond it they
        wait together and are served at once, by one token request (each wants a token issued after its request,
        and the batch's request is), however many credentials the namespace renews. Whether it was queued."""
        batch = f"{namespace}/app {app}"
        waiting = self._renew_batches.get(batch)
        if waiting is not None:
            waiting.append(worker)
            worker.renew_timer = waiting[0].renew_timer
            return True
        wait = self._app_renews.reserve(batch, loop.time())
        if wait <= 0:
            return False
        log.info("%s: renew requests for ClusterGraphApp %s beyond the namespace's budget; serving them together in "
                 "%.0f s", namespace, app, wait)
        self._renew_batches[batch] = [worker]
        worker.renew_timer = loop.call_later(wait, self._renew_batch, batch)
        return True

    def _leave_batch(self, worker: _Worker) -> bool:
        """A forgotten worker leaves the renew batch it waits in (the others still wait); whether it was in one."""
        for batch, waiting in self._renew_batches.items():
            if worker in waiting:
                waiting.remove(worker)
                if not waiting and worker.renew_timer is not None:
                    worker.renew_timer.cancel()
                    del self._renew_batches[batch]
                return True
        return False

    def _renew_batch(self, batch: str) -> None:
        for worker in self._renew_batches.pop(batch, []):
            if self._workers.get((worker.snapshot.namespace, worker.snapshot.name)) is worker:
                self._renew_now(worker)

    @staticmethod
    def _renew_now(worker: _Worker) -> None:
        worker.renew_timer = None
        worker.memory.renew.requested = True
        worker.wake.set()

    def _start(self, key: Key, worker: _Worker) -> None:
        worker.task = asyncio.create_task(self._run(key, worker), name=f"graphcred:{key[0]}/{key[1]}")
        worker.task.add_done_callback(lambda task: self._ended(key, worker, task))

    def _ended(self, key: Key, worker: _Worker, task: asyncio.Task[None]) -> None:
        """A worker's task ended. If its object is still registered it must not stay without one: restart it
        (after a short backoff, so a bug that ends it at once cannot spin)."""
        if self._stopping or self._workers.get(key) is not worker:
            return
        worker.restarts += 1
        self.reconciler.metrics.worker_restarts.inc()
        cause = "cancelled" if task.cancelled() else type(task.exception()).__name__
        delay = backoff(worker.restarts, None)
        log.error("%s/%s: worker ended unexpectedly (%s); restarting in %.1f s", key[0], key[1], cause, delay)
        worker.task = None
        asyncio.get_running_loop().call_later(delay, self._restart, key, worker)

    def _restart(self, key: Key, worker: _Worker) -> None:
        if not self._stopping and self._workers.get(key) is worker and worker.task is None:
            self._start(key, worker)

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        worker = self._workers.pop(key, None)
        self.reconciler.metrics.forget(namespace, name)
        self.reconciler.app_outcomes.forget(key)
        self.reconciler.rotator.untrack(key)
        self.reconciler.restarter.forget(key)
        if worker is not None:
            self._unindex(key)
            self._waits.forget(worker.wake)
            if worker.renew_timer is not None and not self._leave_batch(worker):
                worker.renew_timer.cancel()
            if worker.task is not None:
                worker.task.cancel()

    def secret_event(self, namespace: str, name: str, resource_version: str, deleted: bool) -> None:
        """From the Secret metadata watch. Wakes the objects that read a changed credential Secret (rotation,
        or a missing one appearing) and those whose token Secret was deleted (to write it again)."""
        secret = (namespace, name)
        self.reconciler.credential_reads.forget(secret, None if deleted else resource_version)
        self.reconciler.rotator.secret_changed(secret)
        self._credential_changed(self.dependents.saw_secret(secret, resource_version, deleted), resource_version,
                                 deleted)
        if deleted:
            for key in self.dependents.writers_of(secret):
                self._workers[key].memory.secret.version = None  # not ours to trust any more: read again
                self._workers[key].wake.set()

    def service_account_event(self, namespace: str, name: str, resource_version: str, deleted: bool) -> None:
        """From the ServiceAccount metadata watch (workload identity). Wakes the objects whose credential is this
        ServiceAccount, by the rules of a credential Secret: deleted, missing when last read, or newer than the
        version last read (its client-id annotation added, changed or removed)."""
        self._credential_changed(self.dependents.saw_account((namespace, name), resource_version, deleted),
                                 resource_version, deleted)

    def _credential_changed(self, readers: Collection[Key], resource_version: str, deleted: bool) -> None:
        """Wake the objects that read a credential the watch reported: deleted, missing when last read, or newer
        than the version they last read."""
        for key in readers:
            version = self._workers[key].memory.credential.version
            if deleted or version == "" or _newer(resource_version, version):
                self._workers[key].wake.set()

    def _index(self, key: Key, worker: _Worker) -> None:
        """Index what the object reads and writes, from its spec as it stands, before each pass: a change to them
        while the pass runs (a credential Secret created a moment after the object) must wake it."""
        status = worker.memory.report.last_status or worker.snapshot.status
        held = status.get("issuedByApp") if isinstance(status.get("issuedByApp"), str) else None
        read_before = self.dependents.reads_of(key)
        moved = self.dependents.index(key, named_by(key, worker.snapshot.spec, self.reconciler.apps, held))
        if moved.removed is not None:
            self._listener.token_secret_removed(key, moved.removed)
        if moved.added is not None:
            self._listener.token_secret_added(key, moved.added)
        self._unread(read_before)  # its spec may name another Secret now

    def _unindex(self, key: Key) -> None:
        """Drop the object from the indexes, and tell the consumer reports it no longer writes its token Secret; a
        credential Secret nobody reads any more leaves no kept read behind."""
        reads = self.dependents.reads_of(key)
        writes = self.dependents.remove(key)
        if writes is not None:
            self._listener.token_secret_removed(key, writes)
        self._unread(reads)

    def _unread(self, secret: Key | None) -> None:
        """A credential Secret no credential reads any more: its kept read goes (no Secret data left unused)."""
        if secret is not None and not self.dependents.read_by_anyone(secret):
            self.reconciler.credential_reads.forget(secret)

    async def _run(self, key: Key, worker: _Worker) -> None:
        while True:
            worker.wake.clear()
            try:
                self._index(key, worker)
                worker.renewing = worker.memory.renew.requested
                try:
                    async with PassSlot(self._active, self._waits, worker.wake, key[0]) as place:
                        with running_as_pass(place):
                            delay = await self.reconciler.reconcile(worker.snapshot, worker.memory)
                finally:
                    worker.renewing = False
                if _app_named(worker.snapshot.spec) is not None:
                    self._index(key, worker)  # the pass may have learnt the app (and the Secret it reads)
                if self._changed_during_pass(key, worker):
                    continue  # the credential changed while this pass ran: go again now
            except TurnedAway:
                delay = None  # no place to wait for a token: its wake is set when one is reserved for it
            except Gone:
                # The object is gone (its DELETED event may have been missed): end, do not re-create a Secret
                # the garbage collector is deleting.
                log.info("%s/%s: no longer exists; stopping its worker", key[0], key[1])
                self._drop(key, worker)
                return
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is None or current.cancelling():
                    raise  # this worker was cancelled (forget, stop)
                delay = await self._failed(key, worker, RuntimeError("a cancellation from another task"))
            except Exception as exc:  # noqa: BLE001 - one object's bug must not stop the others
                delay = await self._failed(key, worker, exc)
            if self._workers.get(key) is not worker:
                return  # dropped meanwhile (its object is gone)
            if delay is None:
                await worker.wake.wait()
            else:
                # a timer that sets the wake, not asyncio.wait_for, which wraps the wait in a second task and cancels
                # it at each timeout (docs/design/2026-12-06-no-kopf-daemons.md)
                timer = asyncio.get_running_loop().call_later(delay, worker.wake.set)
                try:
                    await worker.wake.wait()
                finally:
                    timer.cancel()

    def _changed_during_pass(self, key: Key, worker: _Worker) -> bool:
        """Did the watch report a credential Secret or ServiceAccount newer than the version the pass read?"""
        latest = self.dependents.latest_version(key, worker.memory.credential.secret)
        return latest is not None and _newer(latest, worker.memory.credential.version)

    async def _failed(self, key: Key, worker: _Worker, exc: BaseException) -> float | None:
        """An unexpected failure of a pass: reported in status, Event and metrics, then retried with backoff."""
        try:
            delay = await self.reconciler.internal_error(worker.snapshot, worker.memory, exc)
        except Gone:
            self._drop(key, worker)
            return None
        # the description names the API call and its HTTP status; never an exception's text (bodies)
        # an apiserver outage is ridden out (a warning); anything else is a bug or a misconfiguration
        level = logging.WARNING if outage(exc) else logging.ERROR
        log.log(level, "%s/%s: reconcile failed (%s); retrying in %.0f s", key[0], key[1], _described(exc), delay)
        return delay

    def _drop(self, key: Key, worker: _Worker) -> None:
        if self._workers.get(key) is worker:
            del self._workers[key]
            self._unindex(key)
            self._waits.forget(worker.wake)
            self.reconciler.metrics.forget(*key)
            self.reconciler.app_outcomes.forget(key)
        # a dropped worker's own task returns: the loop below notices it is no longer registered

    async def stop(self) -> None:
        self._stopping = True
        await self.reconciler.rotator.stop()
        await self.reconciler.restarter.stop()
        tasks = [w.task for w in self._workers.values() if w.task is not None]
        self._workers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
