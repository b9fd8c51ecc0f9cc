"""One token request for many GraphAppCredentials that ask for the same thing.

Credentials with identical authority, tenant, client, credential material and scopes would get interchangeable
tokens, so they share: concurrent requests for one key wait for a single acquisition (single flight), and a token
issued within the last `window` of its lifetime is handed out again instead of asking anew. The key is a digest
that includes the material's fingerprint (itself a digest): never the secret itself. For workload identity the
fingerprint is the ServiceAccount's uid, audience and client-id annotation, so credentials federating different
ServiceAccounts never share, and partners in one acquisition cause one TokenRequest (it is made inside it).

A refresh still writes a token different from the one it replaces: a shared token is at most `window` old, while
the token being replaced is about half a lifetime old.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import Awaitable, Callable, Sequence

from graphcred.acquire.credentials import Material
from graphcred.acquire.tokens import AcquisitionError, Token
from graphcred.api.model import AppIdentity, Reason

DEFAULT_WINDOW = 0.1  # of a token's lifetime: covers the refresh jitter (5% of a lifetime) with room to spare


def share_key(identity: AppIdentity, scopes: Sequence[str], material: Material) -> str:
    parts = [identity.authority_base(), identity.tenant_id, identity.client_id, " ".join(sorted(scopes)),
             material.fingerprint()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class SharedTokens:
    def __init__(self, window: float = DEFAULT_WINDOW,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.window = window
        self._clock = clock
        self._recent: dict[str, Token] = {}
        self._inflight: dict[str, asyncio.Task[Token]] = {}

    def __len__(self) -> int:
        return len(self._recent)

    async def get(self, key: str, acquire: Callable[[], Awaitable[Token]], *, reuse: bool = True,
                  newer_than: dt.datetime | None = None) -> tuple[Token, bool]:
        """The token for `key` and whether it was shared (True) or acquired for this caller (False).
        `reuse=False` skips recent tokens (for a caller that needs newer claims, e.g. just-granted roles);
        `newer_than`: a recent token is only handed out if issued after this (the caller's current token), so a
        refresh never gets back the very token it is replacing."""
        now = self._clock()
        recent = self._recent.get(key) if reuse else None
        if (recent is not None and self.window > 0 and now - recent.issued_at <= recent.lifetime * self.window
                and (newer_than is None or recent.issued_at > newer_than)):
            return recent, True
        task = self._inflight.get(key)
        shared = task is not None
        if task is None:
            # The request runs as a task of its own, not in the caller's: when the caller is cancelled (its
            # object deleted or re-created), the request carries on for everyone else waiting on it.
            task = asyncio.get_running_loop().create_task(self._acquire(key, acquire), name=f"token:{key[:12]}")
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # no "never retrieved" warning
            self._inflight[key] = task
        try:
            return await asyncio.shield(task), shared
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                # The shared request itself was cancelled (shutdown), not this caller: a transient failure here.
                raise AcquisitionError(Reason.AUTHORITY_UNAVAILABLE, "the token request was cancelled; retrying",
                                       permanent=False) from None
            raise

    async def _acquire(self, key: str, acquire: Callable[[], Awaitable[Token]]) -> Token:
        try:
            token = await acquire()
        finally:
            if self._inflight.get(key) is asyncio.current_task():
                del self._inflight[key]
        if self.window > 0:
            self._recent[key] = token
            self._prune(self._clock())
        return token

    def _prune(self, now: dt.datetime) -> None:
        if len(self._recent) % 64 == 0:  # amortised: expired entries go now and then
            for key in [k for k, t in self._recent.items() if t.expires_on <= now]:
                del self._recent[key]
