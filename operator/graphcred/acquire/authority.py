"""Which authority hosts graphcred may talk to: the clouds' own login hosts and those the cluster admin allowed.

`spec.authorityHost` is chosen by whoever may create a credential, and every request to it (discovery, the token
POST with a client secret, a signed assertion or a ServiceAccount token) goes out from the operator's pod. An
arbitrary host would make the operator a request proxy into the cluster's network (SSRF) and a sink for
ServiceAccount tokens, so only these hosts are ever contacted. Pure logic: no I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from urllib.parse import urlsplit

from graphcred.api.model import AUTHORITY_HOSTS

# The Entra login hosts of the clouds, with the aliases Microsoft documents for them (msal knows the same ones).
CLOUD_LOGIN_HOSTS: frozenset[str] = frozenset({
    *(h.rstrip("/").lower() for h in AUTHORITY_HOSTS.values()),
    "https://login.microsoftonline.com", "https://login.windows.net", "https://login.microsoft.com",
    "https://sts.windows.net",
    "https://login.microsoftonline.us", "https://login.usgovcloudapi.net", "https://login-us.microsoftonline.com",
    "https://login.chinacloudapi.cn", "https://login.partner.microsoftonline.cn",
})

FLAG = "--authority-host"
CHART_VALUE = "authorityHosts"


_REMEMBERED_URL = 512  # characters: longer URLs (a hostile discovery document's token endpoint) are not remembered


def origin(url: str) -> str | None:
    """`https://host[:port]` in lower case (port 443 dropped), or None unless `url` is an https URL with a host.
    Pure, and asked nine times per token request (the session's checks, msal's URLs): remembered for 1,024 URLs
    of ordinary length (an authority names the long ones, and must not fill the memory with them)."""
    return _remembered_origin(url) if len(url) <= _REMEMBERED_URL else _origin(url)


@functools.lru_cache(maxsize=1024)
def _remembered_origin(url: str) -> str | None:
    return _origin(url)


def _origin(url: str) -> str | None:
    """`https://host[:port]` in lower case (port 443 dropped), or None unless `url` is an https URL with a host."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:  # a port out of range or not a number
        return None
    if parts.scheme.lower() != "https" or not parts.hostname or parts.username or parts.password:
        return None
    host = parts.hostname.lower()
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return f"https://{host}" if port in (None, 443) else f"https://{host}:{port}"


def parse_allowed(value: str, flag: str = FLAG) -> str:
    """An admin-allowed host as given to the flag: https://host[:port] and nothing else. A mistyped one must fail at
    start, not silently refuse every credential that names the intended host."""
    text = value.strip()
    parts = urlsplit(text)
    found = origin(text)
    if found is None or parts.path.strip("/") or parts.query or parts.fragment:
        raise ValueError(f"{flag} {text!r}: expected https://host[:port]")
    return found


class AllowedAuthorities:
    """The clouds' login hosts plus the admin's. Compared by origin: scheme, host and port."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self.extra = frozenset(o for o in (origin(h) for h in extra) if o is not None)
        self.origins = CLOUD_LOGIN_HOSTS | self.extra

    def allows(self, url: str) -> bool:
        return origin(url) in self.origins

    @staticmethod
    def is_cloud(url: str) -> bool:
        return origin(url) in CLOUD_LOGIN_HOSTS


def not_allowed_message(authority_base: str) -> str:
    """What a credential naming another host is told (its status and Event): what to change, and who can."""
    return (f"spec.authorityHost {authority_base} is not a host graphcred may contact: only the clouds' own login "
            f"hosts, or hosts the cluster admin allows (graphcred run {FLAG}; chart value {CHART_VALUE}). No "
            "request was sent to it. Drop authorityHost, or ask the admin to allow this host")
