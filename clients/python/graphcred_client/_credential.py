"""MountedTokenCredential: the Azure SDK credential (sync) over the shared reader."""

from __future__ import annotations

import datetime as dt
import os
from types import TracebackType
from typing import TYPE_CHECKING, Any

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions

from ._token_file import DEFAULT_DIRECTORY, DEFAULT_MARGIN, TokenFile


class MountedTokenCredential:
    """An Azure SDK ``TokenCredential`` that hands out the token graphcred keeps fresh in a mounted Secret.

    Mount the GraphAppCredential's token Secret as a volume (not through ``subPath`` or env: those never update)
    and point this credential at the mount. It reads ``access_token`` and ``expires_on`` (RFC 3339; without it,
    the token's ``exp``), caches the token, and reads again when the kubelet swaps the volume's files (checked on
    every call: a readlink and a stat) or when the cached token is within ``margin`` of expiry. It never acquires a
    token itself: graphcred does that, and refreshes at half the token's lifetime.

    Refusals raise ``azure.core.exceptions.ClientAuthenticationError``, never with the token in the message: an
    expired token (it is never sent), a missing mount, a scope whose resource is not the token's audience
    (``https://graph.microsoft.com/.default`` needs a token for Microsoft Graph), a ``tenant_id`` other than the
    token's, and a claims challenge (only a new token request could satisfy it). No scope raises ``ValueError``.

    Works wherever an Azure ``TokenCredential`` or ``SupportsTokenInfo`` is accepted, e.g.
    ``GraphServiceClient(credentials=MountedTokenCredential(), scopes=["https://graph.microsoft.com/.default"])``.
    Thread-safe. For asyncio code, ``AsyncMountedTokenCredential`` is the same with ``async`` methods.

    :param directory: where the token Secret is mounted. Default ``/var/run/graphcred``.
    :keyword margin: re-read the files when the cached token expires within this (``timedelta`` or seconds);
        default 5 minutes. A file that is itself this close to expiry is handed out with a warning in the log.
    """

    def __init__(self, directory: str | os.PathLike[str] = DEFAULT_DIRECTORY, *,
                 margin: dt.timedelta | float = DEFAULT_MARGIN) -> None:
        self._file = TokenFile(directory, margin)

    def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                  enable_cae: bool = False, **kwargs: Any) -> AccessToken:
        """The mounted token for ``scopes``, as ``AccessToken(token, expires_on)`` (Unix time).

        :param scopes: what the token is for, e.g. ``https://graph.microsoft.com/.default``; every scope's resource
            must be the token's audience.
        :keyword claims: a claims challenge: a file cannot satisfy one, so a non-empty value raises.
        :keyword tenant_id: if given, must be the token's tenant.
        :keyword enable_cae: accepted and ignored: the token is the one graphcred acquired.
        :raises ~azure.core.exceptions.ClientAuthenticationError: see the class.
        """
        info = self._file.token_info(scopes, claims, tenant_id)
        return AccessToken(info.token, info.expires_on)

    def get_token_info(self, *scopes: str, options: TokenRequestOptions | None = None) -> AccessTokenInfo:
        """Like ``get_token``, as an ``AccessTokenInfo``; options ``claims`` and ``tenant_id`` as there.

        ``refresh_on`` is at most a minute ahead, so azure-core's bearer token policy asks again (a stat) and picks
        up a refreshed file soon after the kubelet swaps it.
        """
        options = options or {}
        return self._file.token_info(scopes, options.get("claims"), options.get("tenant_id"))

    def close(self) -> None:
        """Forget the cached token. The credential still works afterwards (it reads the file again)."""
        self._file.forget()

    def __enter__(self) -> MountedTokenCredential:
        return self

    def __exit__(self, exc_type: type[BaseException] | None = None, exc_value: BaseException | None = None,
                 traceback: TracebackType | None = None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(directory={str(self._file.directory)!r})"


if TYPE_CHECKING:  # mypy checks that the class meets azure-core's protocols
    from azure.core.credentials import SupportsTokenInfo, TokenCredential

    def _conforms(credential: MountedTokenCredential) -> tuple[TokenCredential, SupportsTokenInfo]:
        return credential, credential
