"""One read of a credential Secret for the passes that need it at the same time.

Credentials of one app name one credential Secret; created together (a namespace applied at once, an operator
start), their passes run together and each would read it. Here a read is shared while it is in flight and for as
long as a pass that took it is still running: a pass starting meanwhile takes it unless what the Secret watch
knows of the Secret changed since (then it reads anew: a read in flight may have been answered before that
change). Nothing is cached beyond that: a pass lets go of its read when it drops the credential material (after
its token request, or when it ends), and once the last pass holding a read lets go, the read is dropped: no Secret
data outlives the passes that need it. Of the answer only the resourceVersion and the data are kept, not the rest
of the metadata (annotations such as kubectl's last-applied-configuration can hold a copy of the data).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from graphcred.api.keys import CREDENTIAL_EXPIRES_ANNOTATION
from graphcred.kube.metawatch import Seen

Key = tuple[str, str]  # namespace, name


@dataclass(frozen=True)
class CredentialSecret:
    """A credential Secret as read: its resourceVersion and data (base64 values, as the API returns them)."""

    version: str
    data: dict[str, Any] = field(repr=False)
    expires_on: str | None = None  # its graphcred.io/credential-expires-on annotation (the one annotation kept)


Fetch = Callable[[], Awaitable[dict[str, Any] | None]]


@dataclass
class _Read:
    task: asyncio.Task[CredentialSecret | None]
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
    def __init__(self) -> None:
        self._reads: dict[Key, _Read] = {}
        self.reads = 0  # reads made (for tests and figures)

    def __len__(self) -> int:
        return len(self._reads)

    @contextlib.asynccontextmanager
    async def read(self, key: Key, fetch: Fetch, seen: Seen | None) -> AsyncIterator[CredentialSecret | None]:
        """The Secret (None: absent), read by `fetch` or taken from a pass running meanwhile; held until the block
        ends. `seen`: what the Secret watch knows of it now (None: nothing reliable)."""
        entry = self._reads.get(key)
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
