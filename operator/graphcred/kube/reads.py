"""One read of a credential Secret for the passes that need it, and for the next ones while the Secret is unchanged.

Credentials of one app name one credential Secret; created together (a namespace applied at once, an operator
start), their passes run together and each would read it. Here a read is shared while it is in flight and for as
long as a pass that took it is still running: a pass starting meanwhile takes it unless what the Secret watch
knows of the Secret changed since (then it reads anew: a read in flight may have been answered before that
change). Of the answer only the resourceVersion and the data are kept, not the rest of the metadata (annotations
such as kubectl's last-applied-configuration can hold a copy of the data).

Once the last pass holding a read lets go, a small read is kept (`KEEP_BYTES` of data at most, `KEPT_BUDGET` for
all with `ENTRY_BYTES` counted for each, least recently used dropped first) and answers later passes for as long as
the Secret watch has seen no other version of the Secret, `KEEP_FOR` at most (a watch that lags or cannot
reconnect is not trusted longer), and while a credential reads it: a refresh then costs no read of an unchanged
Secret (one apiserver request in four, a tenth of the operator's CPU: docs/design/2026-12-06-lean-at-scale.md). A
version the watch cannot vouch for (before its first list, during a relist) is read again; a changed or deleted
Secret's kept read, and one no credential reads any more, is dropped at once (`forget`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from graphcred.api.keys import CREDENTIAL_EXPIRES_ANNOTATION
from graphcred.kube.metawatch import Seen

Key = tuple[str, str]  # namespace, name
KEEP_BYTES = 8 * 1024  # data of a read kept beyond its passes, at most: a client secret ~40 bytes, a PEM chain KiBs
KEPT_BUDGET = 32 * 1024 * 1024  # for all reads kept: 10,000 credentials with certificates of 3 KiB fit
ENTRY_BYTES = 1024  # what keeping a read costs beside its data (the record, its key): counted against the budget
KEEP_FOR = 600.0  # seconds a kept read answers at most: a watch that lags or cannot reconnect is not trusted longer


@dataclass(frozen=True)
class CredentialSecret:
    """A credential Secret as read: its resourceVersion and data (base64 values, as the API returns them)."""

    version: str
    data: dict[str, Any] = field(repr=False)
    expires_on: str | None = None  # its graphcred.io/credential-expires-on annotation (the one annotation kept)

    def size(self) -> int:
        """Bytes of data, as the apiserver sends them (base64), with the keys: what keeping it costs, roughly."""
        return sum(len(str(k)) + len(str(v)) for k, v in self.data.items()) + len(self.expires_on or "")


Fetch = Callable[[], Awaitable[dict[str, Any] | None]]


@dataclass
class _Read:
    task: asyncio.Future[CredentialSecret | None]
    seen: Seen | None  # what the watch knew when the read began
    holders: int = 0

    def current(self, seen: Seen | None) -> bool:
        """May a pass starting now take this read? In flight: if the watch knows what it knew when the read began
        (the apiserver may have answered already, before a change the watch has seen since, the answer still on
        its way). Done: if the watch has seen the same version since (or the same absence); not if it cannot say."""
        if not self.task.done():
            return seen == self.seen
        if seen is None or self.task.cancelled() or self.task.exception() is not None:
            return False
        result = self.task.result()
        return (result.version if result is not None else None) == seen.version


async def _trimmed(fetch: Fetch) -> CredentialSecret | None:
    secret = await fetch()
    if secret is None:
        return None
    annotations = secret["metadata"].get("annotations") or {}
    expires_on = annotations.get(CREDENTIAL_EXPIRES_ANNOTATION)
    return CredentialSecret(str(secret["metadata"].get("resourceVersion", "")), dict(secret.get("data") or {}),
                            expires_on if isinstance(expires_on, str) else None)


class SharedReads:
    def __init__(self, keep_bytes: int = KEEP_BYTES, budget: int = KEPT_BUDGET, entry_bytes: int = ENTRY_BYTES,
                 keep_for: float = KEEP_FOR, clock: Callable[[], float] = time.monotonic) -> None:
        self._reads: dict[Key, _Read] = {}  # held by a pass, or in flight
        # let go of, done, small, in the order kept: (what it read, bytes counted, when kept). The answer only, not
        # its read's task: a done task with its context and weak reference is 1 KiB more for each credential.
        self._kept: OrderedDict[Key, tuple[CredentialSecret, int, float]] = OrderedDict()
        self._kept_bytes = 0
        self._keep_bytes, self._budget, self._entry_bytes = keep_bytes, budget, entry_bytes
        self._keep_for, self._clock = keep_for, clock
        self.reads = 0  # reads made (for tests and figures)

    def __len__(self) -> int:
        """Reads held by passes or in flight (not those kept for later passes)."""
        return len(self._reads)

    @property
    def kept(self) -> tuple[int, int]:
        """Reads kept beyond their passes, and the bytes counted for them."""
        return len(self._kept), self._kept_bytes

    def forget(self, key: Key, unless_version: str | None = None) -> None:
        """The Secret changed or is gone (the watch says), or no credential reads it any more: its kept read
        answers no one. Kept if it is of `unless_version` (the watch catching up with the version read)."""
        kept = self._kept.get(key)
        if kept is None:
            return
        if unless_version is not None and kept[0].version == unless_version:
            return
        del self._kept[key]
        self._kept_bytes -= kept[1]

    @contextlib.asynccontextmanager
    async def read(self, key: Key, fetch: Fetch, seen: Seen | None) -> AsyncIterator[CredentialSecret | None]:
        """The Secret (None: absent), read by `fetch` or taken from a pass running meanwhile, or kept from an
        earlier one (for KEEP_FOR at most); held until the block ends. `seen`: what the Secret watch knows of it now
        (None: nothing reliable)."""
        entry = self._reads.get(key)
        if entry is None and key in self._kept:
            kept, _, since = self._kept[key]
            self.forget(key)
            if self._clock() - since < self._keep_for:
                answered: asyncio.Future[CredentialSecret | None] = asyncio.get_running_loop().create_future()
                answered.set_result(kept)
                candidate = _Read(answered, seen)
                if candidate.current(seen):  # the watch has seen this very version since
                    entry = self._reads[key] = candidate
        if entry is None or not entry.current(seen):
            # a new read; an older one stays with the passes holding it, unreachable for new ones
            task = asyncio.get_running_loop().create_task(_trimmed(fetch), name=f"read:{key[0]}/{key[1]}")
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # no "never retrieved" warning
            entry = self._reads[key] = _Read(task, seen)
            self.reads += 1
        entry.holders += 1
        try:
            # shielded: a pass cancelled while waiting must not cancel the read others wait for
            yield await asyncio.shield(entry.task)
        finally:
            entry.holders -= 1
            if entry.holders == 0 and self._reads.get(key) is entry:
                del self._reads[key]
                self._keep(key, entry)

    def _keep(self, key: Key, entry: _Read) -> None:
        """Keep a done read for later passes if it is small; those kept too long and, over the budget, the least
        recently used go first."""
        now = self._clock()
        while self._kept and now - next(iter(self._kept.values()))[2] >= self._keep_for:
            self.forget(next(iter(self._kept)))
        task = entry.task
        if not task.done() or task.cancelled() or task.exception() is not None:
            return
        result = task.result()
        if result is None or result.size() > self._keep_bytes:
            return
        size = result.size() + self._entry_bytes
        self.forget(key)
        self._kept[key] = (result, size, now)
        self._kept_bytes += size
        while self._kept_bytes > self._budget:
            self.forget(next(iter(self._kept)))
