"""AsyncMountedTokenCredential: the Azure SDK credential (asyncio) over the shared reader."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions

from ._token_file import DEFAULT_DIRECTORY, DEFAULT_MARGIN, TokenFile


class AsyncMountedTokenCredential:
    """An Azure SDK ``AsyncTokenCredential`` that hands out the token graphcred keeps fresh in a mounted Secret.

    Behaves exactly as ``MountedTokenCredential`` (see there), with ``async`` methods. The per-call check (a
    readlink and a stat of a local file) runs on the event loop: it is cheaper than handing it to a thread. Reading
    the files again, which may pause a few milliseconds while the kubelet swaps them, runs in a worker thread.

    :param directory: where the token Secret is mounted. Default ``/var/run/graphcred``.
    :keyword margin: re-read the files when the cached token expires within this (``timedelta`` or seconds);
        default 5 minutes.
    """

    def __init__(self, directory: str | os.PathLike[str] = DEFAULT_DIRECTORY, *,
                 margin: dt.timedelta | float = DEFAULT_MARGIN) -> None:
        self._file = TokenFile(directory, margin)

    async def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                        enable_cae: bool = False, **kwargs: Any) -> AccessToken:
        """The mounted token for ``scopes``, as ``AccessToken(token, expires_on)``; see ``MountedTokenCredential``."""
        info = await self._token_info(scopes, claims, tenant_id)
        return AccessToken(info.token, info.expires_on)

    async def get_token_info(self, *scopes: str, options: TokenRequestOptions | None = None) -> AccessTokenInfo:
        """Like ``get_token``, as an ``AccessTokenInfo``; see ``MountedTokenCredential.get_token_info``."""
        options = options or {}
        return await self._token_info(scopes, options.get("claims"), options.get("tenant_id"))

    async def _token_info(self, scopes: tuple[str, ...], claims: str | None, tenant_id: str | None) -> AccessTokenInfo:
        resources = self._file.check_request(scopes, claims)
        cached = self._file.fresh(time.time())
        if cached is None:
            cached = await asyncio.to_thread(self._file.reload)
        return self._file.approve(cached, resources, tenant_id, time.time())

    async def close(self) -> None:
        """Forget the cached token. The credential still works afterwards (it reads the file again)."""
        self._file.forget()

    async def __aenter__(self) -> AsyncMountedTokenCredential:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None = None, exc_value: BaseException | None = None,
                        traceback: TracebackType | None = None) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(directory={str(self._file.directory)!r})"


if TYPE_CHECKING:  # mypy checks that the class meets azure-core's protocols
    from azure.core.credentials_async import AsyncSupportsTokenInfo, AsyncTokenCredential

    def _conforms(credential: AsyncMountedTokenCredential) -> tuple[AsyncTokenCredential, AsyncSupportsTokenInfo]:
        return credential, credential
