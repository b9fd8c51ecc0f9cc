"""The reader both credentials share: the token a mounted graphcred token Secret holds, cached until the file changes.

The kubelet updates a Secret volume by writing a new `..<timestamp>` directory and swapping the `..data` symlink
(its AtomicWriter); `access_token` and `expires_on` are symlinks through `..data`. So each call costs a readlink and a
stat: the cached token is used while both are unchanged and it is not within `margin` of expiry, else the files are
read again. Both files are read from the one timestamped directory `access_token` resolves to, so a swap between the
two reads cannot pair one version's token with another's expiry.

Thread safety: the cache is one immutable object behind one reference; the fast path reads that reference without
a lock (a single attribute read is atomic), and re-reads take a lock so that one thread reads while others wait and
then reuse its result.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from azure.core.credentials import AccessTokenInfo
from azure.core.exceptions import ClientAuthenticationError

from ._claims import Claims, NotAJwt, unverified_claims
from ._resources import same_resource, scope_resource

DEFAULT_DIRECTORY = "/var/run/graphcred"
DEFAULT_MARGIN = dt.timedelta(minutes=5)
TOKEN_KEY, EXPIRY_KEY, DATA_LINK = "access_token", "expires_on", "..data"
# A read that loses a race with the kubelet's swap (the old timestamped directory removed between resolving the
# symlink and opening the file) succeeds when tried again; these are the pauses before each retry, in seconds.
_RACE_RETRIES = (0.0, 0.002, 0.01, 0.05)
_MAX_FILE = 1 << 20  # a Secret holds at most 1 MiB
# get_token_info's refresh_on: azure-core's BearerTokenCredentialPolicy asks again after this many seconds (a stat),
# so SDK clients that cache the token pick up a swapped file within a minute, not only in its last 5 minutes.
RECHECK_SECONDS = 60

# RFC 6750 §2.1 b64token: all an `Authorization: Bearer` header can carry (a JWT is a subset). Anything else (a line
# break, a space) would make the HTTP library refuse the header with the whole header value in its error message.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")

_log = logging.getLogger("graphcred_client")
_T = TypeVar("_T")


class _Hidden(Generic[_T]):
    """The file's bytes or token while they are checked: a traceback's frame locals (error reporters capture them)
    show `<hidden>`, not the token."""

    __slots__ = ("value",)

    def __init__(self, value: _T) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<hidden>"


@dataclass(frozen=True)
class _Version:
    """What tells one version of the mounted file from another: the `..data` target and the file's identity."""

    data_link: str | None
    device: int
    inode: int
    mtime_ns: int
    size: int


@dataclass(frozen=True)
class CachedToken:
    version: _Version
    token: str = field(repr=False)
    expires_on: int  # Unix time
    claims: Claims | None  # None: not a JWT, so audience and tenant cannot be checked


def _data_link(directory: Path) -> str | None:
    try:
        return os.readlink(directory / DATA_LINK)
    except OSError:
        return None  # not the kubelet's layout (a plain directory): the file's identity alone tells versions apart


def _rfc3339(unix: float) -> str:
    return dt.datetime.fromtimestamp(unix, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_expiry(text: str) -> int:
    moment = dt.datetime.fromisoformat(text.strip())  # 3.11 reads RFC 3339, `Z` included
    if moment.tzinfo is None:
        raise ValueError("no UTC offset")
    return int(moment.timestamp())


def _header_safe(raw: bytes) -> str:
    """The token in the file, or "" if it is empty, not ASCII, or not something an Authorization header can carry."""
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return ""
    return text if _B64TOKEN.fullmatch(text) else ""


def _duration(seconds: float) -> str:
    seconds = int(abs(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


class TokenFile:
    """The token in `directory` (a mounted graphcred token Secret), re-read when the file changes or nears expiry."""

    def __init__(self, directory: str | os.PathLike[str], margin: dt.timedelta | float) -> None:
        self.directory = Path(directory)
        self.margin = margin.total_seconds() if isinstance(margin, dt.timedelta) else float(margin)
        if self.margin < 0:
            raise ValueError("margin must not be negative")
        self._cached: CachedToken | None = None
        self._lock = threading.Lock()
        self._warned: _Version | None = None  # the version last warned about, so a warning comes once per file

    # --- the request ------------------------------------------------------------------------------------------
    def check_request(self, scopes: Sequence[str], claims: str | None) -> tuple[tuple[str, str], ...]:
        """(scope, resource) for each scope; refuses what a file cannot serve before touching it."""
        if not scopes:
            raise ValueError("get_token requires at least one scope, e.g. 'https://graph.microsoft.com/.default'")
        if claims:
            # Like azure-identity's CLI credentials, which cannot pass a claims challenge on either: fail, clearly.
            raise ClientAuthenticationError(
                message=f"The resource answered with a claims challenge (Conditional Access or Continuous Access "
                f"Evaluation), which a token read from {self.directory} cannot satisfy: only a new token request "
                "by graphcred can. graphcred requests a new token at its next refresh; to request one now: "
                "`graphcred renew <name>`, or: "
                'kubectl annotate gac <name> graphcred.io/renew-requested-at="$(date +%s)" --overwrite')
        return tuple((scope, scope_resource(scope)) for scope in scopes)

    # --- the cache --------------------------------------------------------------------------------------------
    def fresh(self, now: float) -> CachedToken | None:
        """The cached token if the file has not changed and the token is not within the margin of expiry."""
        cached = self._cached
        if cached is None or cached.expires_on - now <= self.margin:
            return None
        try:
            stat = os.stat(self.directory / TOKEN_KEY)
            link = _data_link(self.directory)
        except OSError:
            return None  # reload() retries and reports
        now_version = _Version(link, stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)
        return cached if now_version == cached.version else None

    def reload(self) -> CachedToken:
        """Read the files again (one thread at a time; the others reuse its result)."""
        with self._lock:
            cached = self.fresh(time.time())
            if cached is None:
                cached = self._read_with_retries()
                self._cached = cached
            return cached

    def current(self) -> CachedToken:
        return self.fresh(time.time()) or self.reload()

    def forget(self) -> None:
        self._cached = None

    # --- reading ----------------------------------------------------------------------------------------------
    def _read_with_retries(self) -> CachedToken:
        for pause in (*_RACE_RETRIES, None):
            try:
                return self._read()
            except FileNotFoundError:
                if pause is None or not self.directory.is_dir():
                    raise self._missing() from None
                time.sleep(pause)
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                raise ClientAuthenticationError(
                    message=f"Cannot read the token in {self.directory}: {reason}. The pod's user must be able to "
                    "read the mounted Secret (volume defaultMode, fsGroup).") from None
        raise AssertionError("unreachable")

    def _read(self) -> CachedToken:
        link = _data_link(self.directory)  # before resolving: the content read is never older than this link
        token_path = Path(os.path.realpath(self.directory / TOKEN_KEY))
        with open(token_path, "rb") as file:
            stat = os.fstat(file.fileno())
            raw = _Hidden(file.read(_MAX_FILE))
        try:
            expiry_text: str | None = (token_path.parent / EXPIRY_KEY).read_text()
        except FileNotFoundError:
            if not token_path.parent.is_dir():
                raise  # the version was removed under us: a race, read again
            expiry_text = None  # the key is absent: fall back to the JWT's exp
        version = _Version(link, stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)
        return self._parse(version, raw, expiry_text)

    def _parse(self, version: _Version, raw: _Hidden[bytes], expiry_text: str | None) -> CachedToken:
        where = self.directory / TOKEN_KEY
        token = _Hidden(_header_safe(raw.value))
        if not token.value:
            raise ClientAuthenticationError(
                message=f"{where} holds no usable access token: empty, not ASCII, or with characters an HTTP "
                "Authorization header cannot carry (a line break or a space inside it?).")
        try:
            claims: Claims | None = unverified_claims(token.value)
        except NotAJwt:
            claims = None
        expiries = []
        if expiry_text is not None:
            try:
                expiries.append(_parse_expiry(expiry_text))
            except ValueError:
                raise ClientAuthenticationError(
                    message=f"{self.directory / EXPIRY_KEY} is not an RFC 3339 time: {expiry_text.strip()[:40]!r}."
                ) from None
        if claims is not None and claims.expires_at is not None:
            expiries.append(claims.expires_at)
        if not expiries:
            raise ClientAuthenticationError(
                message=f"No expiry for the token in {self.directory}: no {EXPIRY_KEY} file, and the token is not a "
                "JWT with an exp claim. Is this a graphcred token Secret?")
        if claims is None:
            _log.info("the token in %s is not a JWT: its audience and tenant cannot be checked", self.directory)
        # The earlier of the two, if both are there: never hand out a token past either.
        cached = CachedToken(version=version, token=token.value, expires_on=min(expiries), claims=claims)
        _log.debug("read the token in %s (expires %s)", self.directory, _rfc3339(cached.expires_on))
        return cached

    def _missing(self) -> ClientAuthenticationError:
        mount = (f"Mount the token Secret graphcred writes (the GraphAppCredential's spec.secretName, by default "
                 f"<name>-token) as a volume at {self.directory}: volumes: [{{name: token, secret: {{secretName: "
                 f"<name>-token}}}}], volumeMounts: [{{name: token, mountPath: {self.directory}, readOnly: true}}].")
        if not self.directory.is_dir():
            return ClientAuthenticationError(message=f"No token directory at {self.directory}. {mount}")
        return ClientAuthenticationError(
            message=f"No {TOKEN_KEY} file in {self.directory}. {mount} If it is mounted, check that the Secret is "
            f"a graphcred token Secret and that the volume's `items` (if any) keep the {TOKEN_KEY} and {EXPIRY_KEY} "
            "keys.")

    # --- handing out ------------------------------------------------------------------------------------------
    def approve(self, cached: CachedToken, resources: Sequence[tuple[str, str]], tenant_id: str | None,
                now: float) -> AccessTokenInfo:
        """The token for the request, or ClientAuthenticationError: expired, another resource, another tenant."""
        if cached.expires_on <= now:
            raise ClientAuthenticationError(message=self._expired(cached.expires_on, now))
        if cached.claims is not None:
            self._check_audience(cached.claims, resources)
            self._check_tenant(cached.claims, tenant_id)
        if self._overdue(cached, now) and self._warned != cached.version:
            self._warned = cached.version
            _log.warning("the token in %s expires in %s (at %s). graphcred replaces a token at half its lifetime, so "
                         "the file should have been replaced long ago: check `kubectl describe gac <name>`, and that "
                         "the pod mounts the Secret as a volume (not through subPath or env)",
                         self.directory, _duration(cached.expires_on - now), _rfc3339(cached.expires_on))
        refresh_on = int(min(now + RECHECK_SECONDS, max(now, cached.expires_on - self.margin)))
        return AccessTokenInfo(cached.token, cached.expires_on, refresh_on=refresh_on)

    def _overdue(self, cached: CachedToken, now: float) -> bool:
        """Within the margin and past three quarters of its lifetime: graphcred replaces a token at half its lifetime
        and the kubelet passes that on within a minute or two, so such a file was not replaced when it should have
        been. A short-lived token (the test bed's, or a policy's) is within the margin all its life: no warning then
        until its last quarter."""
        left = cached.expires_on - now
        if left > self.margin:
            return False
        issued = cached.claims.issued_at if cached.claims is not None else None
        if issued is None or issued >= cached.expires_on:
            return True
        return left <= (cached.expires_on - issued) / 4

    def _expired(self, expires_on: int, now: float) -> str:
        return (f"The token in {self.directory} expired at {_rfc3339(expires_on)} ({_duration(now - expires_on)} "
                "ago); it is not sent. graphcred replaces a token at half its lifetime, so the file should never get "
                "this old. Likely causes: graphcred could not refresh the token (see the Ready condition and events: "
                "`kubectl describe gac <name>`), or this pod never sees the refreshed Secret because it mounts it "
                "through subPath or reads it into env/envFrom, which the kubelet never updates (mount the Secret as "
                "a volume).")

    def _check_audience(self, claims: Claims, resources: Sequence[tuple[str, str]]) -> None:
        for scope, resource in resources:
            if any(same_resource(audience, resource) for audience in claims.audiences):
                continue
            audience = " or ".join(repr(a) for a in claims.audiences) or "no audience"
            raise ClientAuthenticationError(
                message=f"The token in {self.directory} is for {audience}, not for {resource!r} (scope {scope!r}). "
                "A graphcred token is for the resource in its GraphAppCredential's spec.scopes: request a scope of "
                f"that resource, or mount the token Secret of a GraphAppCredential for {resource!r}.")

    def _check_tenant(self, claims: Claims, tenant_id: str | None) -> None:
        if tenant_id and (claims.tenant_id or "").lower() != tenant_id.strip().lower():
            raise ClientAuthenticationError(
                message=f"The token in {self.directory} was issued by tenant {claims.tenant_id or '(none named)'}, "
                f"not {tenant_id!r}: it comes from the GraphAppCredential's spec.tenantId, and cannot be requested "
                "for another tenant.")

    def token_info(self, scopes: Sequence[str], claims: str | None, tenant_id: str | None) -> AccessTokenInfo:
        """The whole request, synchronously."""
        resources = self.check_request(scopes, claims)
        cached = self.current()
        return self.approve(cached, resources, tenant_id, time.time())
