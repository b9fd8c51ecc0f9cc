"""The HTTP session handed to MSAL.

TLS trust: the default trust (the system store, i.e. OpenSSL's default paths, which honour SSL_CERT_FILE and
SSL_CERT_DIR, plus what `requests` itself trusts: certifi, or REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE when set) with
the `--ca-bundle` for private authority hosts ADDED to it. Setting the bundle for one private host must never
break public-cloud credentials. The trust is one SSL context fixed at start-up, which no environment variable
replaces per request (a requests session let REQUESTS_CA_BUNDLE replace its `verify`): the environment's proxy
settings are honoured, its CA settings cannot undo the bundle. Requests go out through urllib3 directly
(`PinnedCASession`), with what requests did for the environment done once per origin.

Bounds (every value an authority sends is hostile: a credential's author may name any allowed host, and hosts
answer what they like):
- Destinations: only https to an allowed authority origin (`AllowedAuthorities`), checked before each request;
  redirects are never followed, a 3xx answer is a failure of its own.
- Size: every answer is read with a cap (`MAX_ANSWER`); a bigger one is refused, not buffered.
- Time: each exchange (an acquisition's discovery and token requests) has one total deadline. Per-operation
  socket timeouts cannot stop an authority that drips a byte every few seconds, so a watchdog shuts the sockets of
  an exchange down when its deadline passes.
- Discovery documents are cached in a `DiscoveryCache` (bounded in bytes, with a part reserved for the clouds).
  Only a usable document is cached (a proxy's `200 <html>` must not poison a tenant), and a failure of the request
  that followed a cached document evicts it, so the next attempt asks again.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import enum
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import requests
import urllib3
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import DEFAULT_CA_BUNDLE_PATH
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool

from graphcred.acquire import deadline
from graphcred.acquire.authority import AllowedAuthorities, origin
from graphcred.acquire.discovery import DiscoveryCache, usable

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = (5.0, 30.0)  # connect, and the whole exchange: a stuck authority must not hold a worker
MAX_ANSWER = 64 * 1024  # bytes: discovery documents and token answers are a few KiB
_CHUNK = 16 * 1024
_DISCOVERY_SUFFIX = "/.well-known/openid-configuration"
# Answers that say "later", not "wrong address": the cached discovery that led to them stays.
_LATER = frozenset({408, 425, 429})
_PROXY_ORIGINS = 256  # origins whose proxy settings are remembered (allowed hosts only; a bound all the same)
_POOLS = 32  # hosts whose idle connections are kept
_HEADERS = {"User-Agent": "graphcred", "Accept": "*/*", "Connection": "keep-alive"}


class Failure(enum.Enum):
    """Why an exchange failed, as coarse as the user needs: which of these, never the exception or the body."""

    NOT_ALLOWED = "not-allowed"  # not an https URL on an allowed authority host: nothing was sent
    REDIRECT = "redirect"  # the authority answered 3xx: redirects are never followed
    TOO_LARGE = "too-large"  # an answer above MAX_ANSWER
    TIMEOUT = "timeout"  # no complete answer within the exchange's deadline (or a socket timeout)
    UNTRUSTED = "untrusted"  # the host's TLS certificate is not trusted (or not for this host name)
    CONNECTION = "connection"  # no connection, or it broke: refused, reset, unresolvable, a TLS failure


class ExchangeFailed(requests.exceptions.RequestException):
    """A request failed for one of `Failure`'s reasons. `origin` is the host it was for (https://host[:port])."""

    def __init__(self, failure: Failure, origin: str, status: int | None = None) -> None:
        super().__init__(f"{failure.value}: {origin}")
        self.failure = failure
        self.origin = origin
        self.status = status


@dataclass(frozen=True)
class LastResponse:
    """What msal hides from its callers about the latest response on this thread. Never holds a body."""

    status: int
    retry_after: float | None
    aadsts: int | None = None  # first AADSTS code of a 4xx error body (error bodies hold no secrets)
    json_object: bool = True  # the body parsed as a JSON object (an OAuth answer, not a proxy's page)
    content_type: str = ""  # media type only, e.g. "text/html"
    discovery: bool = False  # the answer to an openid-configuration request


def _body(response: requests.Response) -> Any:
    """The parsed JSON body, or None when it is not JSON."""
    try:
        return response.json()
    except (ValueError, RecursionError):  # RecursionError: an authority's deeply nested answer
        return None


def _aadsts(status: int, body: Any) -> int | None:
    if not 400 <= status < 500 or not isinstance(body, dict):
        return None
    codes = body.get("error_codes") or []
    code = codes[0] if isinstance(codes, list) and codes else None
    # AADSTS codes have 5 to 7 digits; anything else is no code (and is never echoed)
    return code if isinstance(code, int) and not isinstance(code, bool) and 10_000 <= code <= 9_999_999 else None


_MEDIA_TYPE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789!#$&^_.+-/")


def media_type(header: str | None) -> str:
    """The Content-Type's media type, if it is one (a header's text is the peer's: echo nothing else)."""
    value = (header or "").split(";")[0].strip().lower()
    if not value:
        return ""
    return value if len(value) <= 64 and value.count("/") == 1 and set(value) <= _MEDIA_TYPE else "unrecognised"


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
    return usable(body)


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


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """`exc` or anything it wraps (requests and urllib3 nest the socket's error in args, reason and causes)."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, kind):
            return True
        todo.extend((item.__cause__, item.__context__, getattr(item, "reason", None), *item.args))
    return False


def _failure(exc: BaseException) -> Failure:
    if _caused_by(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return Failure.UNTRUSTED
    if _caused_by(exc, urllib3.exceptions.NewConnectionError):  # a ConnectTimeoutError by class, not by cause
        return Failure.CONNECTION
    if isinstance(exc, requests.exceptions.Timeout) or _caused_by(exc, TimeoutError) \
            or _caused_by(exc, urllib3.exceptions.TimeoutError):
        return Failure.TIMEOUT
    return Failure.CONNECTION


class _WatchedConnection(HTTPSConnection):
    """Its socket belongs to the current exchange, from the TCP connect (a TLS handshake can be dripped too)."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        deadline.watch(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        if self.sock is not None:  # a pooled connection, reused by this exchange
            deadline.watch(self.sock)
        super().request(*args, **kwargs)


class _WatchedPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedConnection


def _pool_manager(context: ssl.SSLContext, proxy: str | None = None) -> urllib3.PoolManager:
    """Connections verified against the one trust context, whose sockets the current exchange's deadline can shut
    down; through `proxy` (an HTTP CONNECT tunnel) when given."""
    manager: urllib3.PoolManager
    if proxy is None:
        manager = urllib3.PoolManager(num_pools=_POOLS, maxsize=32, block=False, ssl_context=context)
    else:
        # as requests took the environment's proxy: "proxy:3128" means http://, credentials from the URL
        proxy = requests.utils.prepend_scheme_if_needed(proxy, "http")  # type: ignore[no-untyped-call]
        user, password = requests.utils.get_auth_from_url(proxy)
        headers = urllib3.util.make_headers(proxy_basic_auth=f"{user}:{password}") if user else None
        manager = urllib3.ProxyManager(proxy, num_pools=_POOLS, maxsize=32, block=False, ssl_context=context,
                                       proxy_headers=headers, proxy_ssl_context=context)
    manager.pool_classes_by_scheme = {**manager.pool_classes_by_scheme, "https": _WatchedPool}
    return manager


def _request_url(url: str, params: Any) -> str:
    if not params:
        return url
    query = urlencode(params, doseq=True) if not isinstance(params, (str, bytes)) else params
    text = query.decode() if isinstance(query, bytes) else query
    return f"{url}{'&' if '?' in url else '?'}{text}"


def _request_body(data: Any, headers: dict[str, str]) -> bytes | None:
    """A form (msal's dict or pairs) url-encoded, bytes and text as they are; None for no body."""
    if data is None or data == {}:
        return None
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode()
    if not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    pairs = list(data.items()) if isinstance(data, dict) else list(data)
    # as requests encodes a form: a field whose value is None is left out
    return urlencode([(k, v) for k, v in pairs if v is not None], doseq=True).encode()


class PinnedCASession:
    """The only way graphcred talks to authorities: see the module docstring for what it bounds. `get`, `post`
    and `request` as msal calls them (and `requests.Session` has them), answering `requests.Response`s whose body
    has been read.

    urllib3 directly, not a `requests.Session`: requests' per-request work (preparing, merging settings, hooks,
    cookie jars, the environment) was more than half of each token request's time (py-spy, `bench scale`), and
    none of it is wanted here. What it gave is done once: the environment's proxies per origin, no cookies and no
    ~/.netrc at all (an authority's cookie is never sent back, to it or to another tenant's authority)."""

    def __init__(self, ca_bundle: str | None = None, timeout: tuple[float, float] = DEFAULT_TIMEOUT,
                 authority_hosts: Collection[str] = ()) -> None:
        self._timeout = timeout
        self.allowed = AllowedAuthorities(authority_hosts)
        self._context = trust_context(ca_bundle)
        self._direct = _pool_manager(self._context)
        self._proxied: dict[str, urllib3.PoolManager] = {}  # by proxy URL: the environment names a few at most
        self.discovery = DiscoveryCache(time.monotonic)
        self._env_proxies: dict[str, str | None] = {}  # origin -> its proxy from the environment, or None
        self._lock = threading.Lock()
        self._last = threading.local()
        self._adapters: dict[str, BaseAdapter] = {}

    def mount(self, prefix: str, adapter: BaseAdapter) -> None:
        """Answer requests to URLs starting with `prefix` with a `requests` transport adapter instead of the
        network, after every check (tests craft an authority's answers this way; graphcred mounts none)."""
        self._adapters[prefix] = adapter

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, data: Any = None, **kwargs: Any) -> requests.Response:
        return self.request("POST", url, data=data, **kwargs)

    def close(self) -> None:
        with self._lock:
            managers, self._proxied = [self._direct, *self._proxied.values()], {}
        for manager in managers:
            manager.clear()

    def __enter__(self) -> PinnedCASession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exchange(self) -> Any:
        """One acquisition's requests, under one total deadline (the read timeout: the token timeout)."""
        return deadline.exchange(self._timeout[1])

    def last_response(self) -> LastResponse | None:
        last: LastResponse | None = getattr(self._last, "value", None)
        return last

    def forget_last_response(self) -> None:
        """Start of an acquisition on this thread: forget the previous one's response and cached discovery."""
        self._last.value = None
        self._last.cached = None

    def _manager_for(self, key: str) -> urllib3.PoolManager:
        """The direct pools, or the proxy's for an origin the environment sends through one (HTTPS_PROXY,
        NO_PROXY), read once per origin: the environment does not change under a running process."""
        with self._lock:
            if key in self._env_proxies:
                proxy = self._env_proxies[key]
            else:
                proxy = requests.utils.select_proxy(key, requests.utils.get_environ_proxies(key))
                if len(self._env_proxies) >= _PROXY_ORIGINS:
                    self._env_proxies.clear()
                self._env_proxies[key] = proxy
            if proxy is None:
                return self._direct
            manager = self._proxied.get(proxy)
            if manager is None:
                manager = self._proxied[proxy] = _pool_manager(self._context, proxy)
            return manager

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        key = url if isinstance(url, str) else url.decode()
        target = origin(key)
        if target is None or not self.allowed.allows(key):
            raise ExchangeFailed(Failure.NOT_ALLOWED, target or key.split("/")[0])  # nothing is sent
        discovery = method in ("GET", b"GET") and key.split("?")[0].endswith(_DISCOVERY_SUFFIX)
        cloud = self.allowed.is_cloud(key)
        if discovery:
            with self._lock:
                cached = self.discovery.get(key, cloud)
            if cached is not None:
                self._last.cached = key
                return _replayed(key, cached)
        with deadline.exchange(self._timeout[1]) as current:  # alone, or part of the acquisition's exchange
            response = self._send(method, key, target, current, *args, **kwargs)
        body = _body(response)
        self._last.value = LastResponse(
            response.status_code, retry_after_seconds(response.headers.get("Retry-After")),
            _aadsts(response.status_code, body), isinstance(body, dict),
            media_type(response.headers.get("Content-Type")), discovery)
        if discovery:
            if response.status_code == 200 and usable(body):
                with self._lock:
                    self.discovery.put(key, cloud, body)
        elif self._unusable(response.status_code, body):
            self._evict_cached()
        return response

    def _send(self, method: str | bytes, url: str, target: str, current: deadline.Exchange, *,
              params: Any = None, data: Any = None, headers: Any = None, **ignored: Any) -> requests.Response:
        """The request and its whole answer, capped in size and within the exchange's deadline. `ignored`: what
        callers may pass for requests (msal's `timeout`): the session's own bounds hold."""
        remaining = current.remaining()
        if remaining <= 0:
            raise ExchangeFailed(Failure.TIMEOUT, target)
        connect, read = self._timeout
        sent = {**_HEADERS, **dict(headers or {})}
        sent["Accept-Encoding"] = "identity"  # a small answer needs no compression (nor a decompression bomb)
        verb = (method.decode() if isinstance(method, bytes) else method).upper()
        raw: urllib3.BaseHTTPResponse | None = None
        try:
            for header in sent.items():  # as requests checked them: no CR or LF (a header or request of one's own)
                requests.utils.check_header_validity(header)
            body = _request_body(data, sent)
            # A token request carries a credential: never re-send it wherever a redirect points, and a discovery
            # request must not be steered to another host either. Entra's endpoints do not redirect. Retries are
            # the operator's decision (with backoff and Retry-After), not the transport's.
            timeout = (min(connect, remaining), min(read, remaining))
            full_url = _request_url(url, params)
            adapter = next((a for prefix, a in self._adapters.items() if url.startswith(prefix)), None)
            if adapter is not None:
                prepared = requests.Request(verb, full_url, headers=sent, data=body).prepare()
                response = adapter.send(prepared, stream=True, timeout=timeout)
            else:
                raw = self._manager_for(target).urlopen(
                    verb, full_url, body=body, headers=sent, redirect=False, retries=False,
                    preload_content=False, decode_content=False,
                    timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]))
                response = _response(raw, url)
            if 300 <= response.status_code < 400:
                raise ExchangeFailed(Failure.REDIRECT, target, response.status_code)
            _read_capped(response, target, current)
            if raw is not None:
                raw.release_conn()
        except ExchangeFailed:
            _close(raw)
            self._evict_cached()
            raise
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            _close(raw)
            self._evict_cached()  # the cached document may name an address that is gone
            raise ExchangeFailed(Failure.TIMEOUT if current.expired else _failure(exc), target) from None
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
            self.discovery.evict(key)


def _response(raw: urllib3.BaseHTTPResponse, url: str) -> requests.Response:
    """A `requests.Response` of the answer (what msal and graphcred's callers read), its body not read yet."""
    response = requests.Response()
    response.status_code, response.reason, response.url = raw.status, raw.reason or "", url
    response.headers = CaseInsensitiveDict(raw.headers)
    response.encoding = requests.utils.get_encoding_from_headers(response.headers)
    response.raw = raw
    return response


def _close(raw: urllib3.BaseHTTPResponse | None) -> None:
    """Drop the connection of an answer not read to its end (a pooled one would hold the rest)."""
    if raw is not None:
        raw.close()
        raw.release_conn()


def _read_capped(response: requests.Response, target: str, current: deadline.Exchange) -> None:
    """Read the body into the response, at most MAX_ANSWER bytes, checking the deadline between chunks (the
    watchdog ends a read that blocks beyond it)."""
    content: bytes | bool | None = response._content
    if content is not False:  # already read (an adapter that answers without a socket)
        if isinstance(content, bytes) and len(content) > MAX_ANSWER:
            raise ExchangeFailed(Failure.TOO_LARGE, target, response.status_code)
        return
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_ANSWER:
        raise ExchangeFailed(Failure.TOO_LARGE, target, response.status_code)
    chunks: list[bytes] = []
    size = 0
    for chunk in response.raw.stream(_CHUNK, decode_content=True):
        size += len(chunk)
        if size > MAX_ANSWER:
            raise ExchangeFailed(Failure.TOO_LARGE, target, response.status_code)
        if current.expired or current.remaining() <= 0:
            raise ExchangeFailed(Failure.TIMEOUT, target)
        chunks.append(chunk)
    if current.expired:  # the watchdog shut the socket: what was read may be cut short
        raise ExchangeFailed(Failure.TIMEOUT, target)
    response._content = b"".join(chunks)
    response._content_consumed = True  # type: ignore[attr-defined]  # how requests marks a read body


def _replayed(url: str, content: bytes) -> requests.Response:
    """A response of its own for each use of a cached document: msal (or anyone) may read or close it."""
    response = requests.Response()
    response.status_code, response.reason, response.url = 200, "OK", url
    response._content = content  # how requests itself stores a body it has read
    # ... and read through: close(), `with` and iter_content() leave `raw` (None) alone (not in the stubs)
    response._content_consumed = True  # type: ignore[attr-defined]
    response.headers["Content-Type"] = "application/json"
    response.encoding = "utf-8"
    return response
