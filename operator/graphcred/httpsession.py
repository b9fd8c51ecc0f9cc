"""The HTTP session handed to MSAL.

TLS trust: the default trust (the system store, i.e. OpenSSL's default paths, which honour SSL_CERT_FILE and
SSL_CERT_DIR, plus what `requests` itself trusts: certifi, or REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE when set) with
the `--ca-bundle` for private authority hosts ADDED to it. Setting the bundle for one private host must never
break public-cloud credentials. The trust is one SSL context fixed at start-up: `requests` would otherwise let
the environment replace a session's `verify` per request, so the environment's proxy settings are kept but its CA
settings cannot undo the bundle.

Discovery: one application object per acquisition keeps tokens and assertions fresh, but must not mean one
discovery request per acquisition, so openid-configuration is cached here, per URL, for a day. Only a parsed
document with an https `token_endpoint` is cached (a proxy's `200 <html>` must not poison a tenant), and a failure
of the request that followed a cached document evicts it, so the next attempt asks again. What is kept is the
document's bytes and media type, not the response object (about 10 KiB each, with its request, headers and cookie
jar: 100 MB at 10,000 tenants), and at most `DISCOVERY_ENTRIES` of them, the least recently used going first.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import os
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from requests.utils import DEFAULT_CA_BUNDLE_PATH

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = (5.0, 30.0)  # connect, read: a stuck token endpoint must not stall a worker forever
DISCOVERY_TTL = 24 * 3600.0  # what msal itself caches openid-configuration for
DISCOVERY_ENTRIES = 16_384  # tenants (authority URLs) remembered; each costs its document, a few KiB
_DISCOVERY_SUFFIX = "/.well-known/openid-configuration"
# Answers that say "later", not "wrong address": the cached discovery that led to them stays.
_LATER = frozenset({408, 425, 429})


@dataclass(frozen=True)
class LastResponse:
    """What msal hides from its callers about the latest response on this thread. Never holds a body."""

    status: int
    retry_after: float | None
    aadsts: int | None = None  # first AADSTS code of a 4xx error body (error bodies hold no secrets)
    json_object: bool = True  # the body parsed as a JSON object (an OAuth answer, not a proxy's page)
    content_type: str = ""  # media type only, e.g. "text/html"
    discovery: bool = False  # the answer to an openid-configuration request


@dataclass(frozen=True)
class _Discovery:
    """A cached openid-configuration answer: what msal reads of it, nothing else."""

    expires: float  # time.monotonic()
    content: bytes
    content_type: str

    def response(self, url: str) -> requests.Response:
        """A response of its own for each use: msal (or anyone) may read or close it."""
        response = requests.Response()
        response.status_code, response.reason, response.url = 200, "OK", url
        response._content = self.content  # how requests itself stores a body it has read
        # ... and read through: close(), `with` and iter_content() leave `raw` (None) alone (not in the stubs)
        response._content_consumed = True  # type: ignore[attr-defined]
        response.headers["Content-Type"] = self.content_type
        response.encoding = "utf-8"
        return response


def _body(response: requests.Response) -> Any:
    """The parsed JSON body, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def _aadsts(status: int, body: Any) -> int | None:
    if not 400 <= status < 500 or not isinstance(body, dict):
        return None
    codes = body.get("error_codes") or []
    return codes[0] if isinstance(codes, list) and codes and isinstance(codes[0], int) else None


def retry_after_seconds(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Retry-After in seconds: delta-seconds, or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


def usable_discovery(body: Any) -> bool:
    """A document msal can use: a JSON object naming an https token endpoint."""
    if not isinstance(body, dict):
        return False
    endpoint = body.get("token_endpoint")
    return isinstance(endpoint, str) and endpoint.startswith("https://") and len(endpoint) > len("https://")


def trust_context(ca_bundle: str | None) -> ssl.SSLContext:
    """The default trust with `ca_bundle` added (see the module docstring)."""
    context = ssl.create_default_context()  # the system store; SSL_CERT_FILE / SSL_CERT_DIR honoured
    requests_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") \
        or DEFAULT_CA_BUNDLE_PATH
    if not os.path.exists(requests_bundle):  # requests would fail every request; the system store still works
        log.warning("CA bundle %s (REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE) not found; ignoring it", requests_bundle)
        requests_bundle = DEFAULT_CA_BUNDLE_PATH
    for location in (requests_bundle, ca_bundle):  # a missing --ca-bundle is an error at start-up
        if not location:
            continue
        if os.path.isdir(location):
            context.load_verify_locations(capath=location)
        else:
            context.load_verify_locations(cafile=location)
    return context


class _TrustAdapter(HTTPAdapter):
    """Verifies every https connection against one fixed SSL context, whatever `verify` path is passed."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        # Retries are the operator's decision (with backoff and Retry-After), not the transport's.
        super().__init__(max_retries=0, pool_maxsize=32)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        proxy_kwargs["ssl_context"] = self._context
        return super().proxy_manager_for(proxy, **proxy_kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)  # type: ignore[no-untyped-call]
        # requests would load its own bundle into our shared context: the context already holds the trust
        conn.ca_certs = None
        conn.ca_cert_dir = None


class PinnedCASession(requests.Session):
    def __init__(self, ca_bundle: str | None = None, timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        self._timeout = timeout
        self.verify = True
        self.mount("https://", _TrustAdapter(trust_context(ca_bundle)))
        self.mount("http://", HTTPAdapter(max_retries=0, pool_maxsize=32))
        self._discovery: OrderedDict[str, _Discovery] = OrderedDict()  # oldest use first
        self._lock = threading.Lock()
        self._last = threading.local()

    def last_response(self) -> LastResponse | None:
        last: LastResponse | None = getattr(self._last, "value", None)
        return last

    def forget_last_response(self) -> None:
        """Start of an acquisition on this thread: forget the previous one's response and cached discovery."""
        self._last.value = None
        self._last.cached = None

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        settings["verify"] = True  # the trust context decides; REQUESTS_CA_BUNDLE is part of it, not above it
        return settings

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        if method in ("POST", b"POST"):
            # A token request carries a credential: never re-send it wherever a redirect points (requests would
            # re-POST a 307/308, even to http://). Entra's token endpoint does not redirect.
            kwargs["allow_redirects"] = False
        key = url if isinstance(url, str) else url.decode()
        discovery = method in ("GET", b"GET") and key.split("?")[0].endswith(_DISCOVERY_SUFFIX)
        if discovery:
            with self._lock:
                cached = self._discovery.get(key)
                if cached is not None:
                    self._discovery.move_to_end(key)
            if cached is not None and cached.expires > time.monotonic():
                self._last.cached = key
                return cached.response(key)
        try:
            response = super().request(method, url, *args, **kwargs)
        except requests.exceptions.RequestException:
            self._evict_cached()  # the cached document may name an address that is gone
            raise
        body = _body(response)
        self._last.value = LastResponse(
            response.status_code, retry_after_seconds(response.headers.get("Retry-After")),
            _aadsts(response.status_code, body), isinstance(body, dict),
            response.headers.get("Content-Type", "").split(";")[0].strip().lower(), discovery)
        if discovery:
            if response.status_code == 200 and usable_discovery(body):
                entry = _Discovery(time.monotonic() + DISCOVERY_TTL, response.content,
                                   response.headers.get("Content-Type", "application/json"))
                with self._lock:
                    self._discovery[key] = entry
                    self._discovery.move_to_end(key)
                    while len(self._discovery) > DISCOVERY_ENTRIES:
                        self._discovery.popitem(last=False)
        elif self._unusable(response.status_code, body):
            self._evict_cached()
        return response

    @staticmethod
    def _unusable(status: int, body: Any) -> bool:
        """An answer suggesting the cached document led to the wrong place: not found, or not an OAuth answer."""
        if status in _LATER or status >= 500:
            return False
        return status in (404, 405, 410) or not isinstance(body, dict)

    def _evict_cached(self) -> None:
        key: str | None = getattr(self._last, "cached", None)
        if key is None:
            return
        self._last.cached = None
        with self._lock:
            self._discovery.pop(key, None)
