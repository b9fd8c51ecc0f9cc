"""Per-object scheduling: one lightweight asyncio task per GraphAppCredential runs reconcile passes, sleeping
until the next refresh, a backoff step, or a wake-up (spec change, credential Secret change).

kopf feeds this from watch events (`observe`, `forget`); no kopf state is written to the objects (no finalizers,
no annotations), so the only writes are the token Secret and the status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import policy
from .reconciler import Memory, Reconciler, Snapshot

log = logging.getLogger(__name__)

Key = tuple[str, str]  # namespace, name


@dataclass
class _Worker:
    snapshot: Snapshot
    memory: Memory = field(default_factory=Memory)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    errors: int = 0


class Controller:
    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self._workers: dict[Key, _Worker] = {}

    def __len__(self) -> int:
        return len(self._workers)

    def observe(self, body: Mapping[str, Any]) -> None:
        """A GraphAppCredential was listed, added or modified."""
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            self.forget(meta["namespace"], meta["name"])
            return
        snap = Snapshot.of(body)
        key = (snap.namespace, snap.name)
        worker = self._workers.get(key)
        if worker is not None and worker.snapshot.uid != snap.uid:
            self.forget(*key)  # deleted and re-created under the same name
            worker = None
        if worker is None:
            worker = _Worker(snap)
            self._workers[key] = worker
            worker.task = asyncio.create_task(self._run(key, worker), name=f"graphcred:{key[0]}/{key[1]}")
            return
        generation_changed = snap.generation != worker.snapshot.generation
        worker.snapshot = snap
        if generation_changed:
            worker.wake.set()  # status-only updates (our own patches) do not wake

    def forget(self, namespace: str, name: str) -> None:
        worker = self._workers.pop((namespace, name), None)
        if worker is not None and worker.task is not None:
            worker.task.cancel()

    def credential_changed(self, namespace: str, secret_name: str) -> int:
        """A Secret changed: wake every credential in that namespace that reads it. Returns how many."""
        woken = 0
        for (ns, _), worker in self._workers.items():
            if ns == namespace and worker.memory.credential_secret == secret_name:
                worker.wake.set()
                woken += 1
        return woken

    async def _run(self, key: Key, worker: _Worker) -> None:
        while True:
            worker.wake.clear()
            try:
                delay = await self.reconciler.reconcile(worker.snapshot, worker.memory)
                worker.errors = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one object's bug must not stop the others
                worker.errors += 1
                delay = policy.backoff(worker.errors)
                # type only: messages of client errors can carry request bodies
                log.error("%s/%s: reconcile failed (%s); retrying in %.0f s", key[0], key[1],
                          type(exc).__name__, delay)
            if delay is None:
                await worker.wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(worker.wake.wait(), timeout=delay)

    async def stop(self) -> None:
        tasks = [w.task for w in self._workers.values() if w.task is not None]
        self._workers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
