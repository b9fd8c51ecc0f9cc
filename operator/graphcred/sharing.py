"""One token request for many GraphAppCredentials that ask for the same thing.

Credentials with identical authority, tenant, client, credential material and scopes would get interchangeable
tokens, so they share: concurrent requests for one key wait for a single acquisition (single flight), and a token
issued within the last `window` of its lifetime is handed out again instead of asking anew. The key is a digest
that includes the material's fingerprint (itself a digest): never the secret itself.

A refresh still writes a token different from the one it replaces: a shared token is at most `window` old, while
the token being replaced is about half a lifetime old.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import Awaitable, Callable

from .credentials import Material
from .model import GraphAppCredentialSpec
from .tokens import Token

DEFAULT_WINDOW = 0.1  # of a token's lifetime: covers the refresh jitter (5% of a lifetime) with room to spare


def share_key(spec: GraphAppCredentialSpec, material: Material) -> str:
    parts = [spec.authority_base(), spec.tenant_id, spec.client_id, " ".join(sorted(spec.scopes)),
             material.fingerprint()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class SharedTokens:
    def __init__(self, window: float = DEFAULT_WINDOW,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.window = window
        self._clock = clock
        self._recent: dict[str, Token] = {}
        self._inflight: dict[str, asyncio.Future[Token]] = {}

    def __len__(self) -> int:
        return len(self._recent)

    async def get(self, key: str, acquire: Callable[[], Awaitable[Token]], *, reuse: bool = True
                  ) -> tuple[Token, bool]:
        """The token for `key` and whether it was shared (True) or acquired for this caller (False).
        `reuse=False` skips recent tokens (for a caller that needs newer claims, e.g. just-granted roles)."""
        now = self._clock()
        recent = self._recent.get(key) if reuse else None
        if recent is not None and self.window > 0 and now - recent.issued_at <= recent.lifetime * self.window:
            return recent, True
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending), True
        future: asyncio.Future[Token] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # waiters may be gone: no warning
        self._inflight[key] = future
        try:
            token = await acquire()
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            del self._inflight[key]
        if self.window > 0:
            self._recent[key] = token
            self._prune(now)
        future.set_result(token)
        return token, False

    def _prune(self, now: dt.datetime) -> None:
        if len(self._recent) % 64 == 0:  # amortised: expired entries go now and then
            for key in [k for k, t in self._recent.items() if t.expires_on <= now]:
                del self._recent[key]
