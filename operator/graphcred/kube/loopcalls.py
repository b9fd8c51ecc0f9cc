"""The Kubernetes calls passes make most, made on the event loop (aiohttp) instead of in a thread.

A pass reads the credential Secret, writes the token Secret and patches the status: three calls for each new
credential, two for each refresh. Through urllib3 in a thread each costs the hand-off to the thread and back (a
future, a wake-up of the loop through its self-pipe, the GIL passed around the blocking socket calls) and
http.client's header parsing: on the loop, with aiohttp's parser, about a quarter less CPU per call and no hand-off
(docs/design/2026-12-06-lean-at-scale.md, fourth step). Events are posted here too (kube/events.py); the other
calls (workloads, ServiceAccounts, the watches) stay in their threads.

Same requests as `Kube` (built by it: the server, the bearer token with the client's refresh hook, the body), same
answers (None for a Secret that does not exist, `Conflict`, `Gone`) and same errors (`KubeError`, naming the call
and the HTTP status, never a body; the client's exception for the status as its cause, as `Kube`'s). Same TLS as
urllib3 would make of the configuration, made again when its CA or client certificate files change. Where it
differs: an answer of 429 or 503 is an error at once (urllib3 retried a read once after its Retry-After); a failure
with no answer names aiohttp's error ("ClientConnectorError" where urllib3's said "MaxRetryError"). A proxy or a TLS
server name in the kubeconfig keeps every call in threads (`LoopKube.usable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from kubernetes import client
from kubernetes.client import rest

from graphcred.kube.calls import (
    _CREDENTIAL_STATUS,
    _EVENT,
    _EVENTS,
    _FIELD_MANAGER,
    _SECRET,
    _SECRETS,
    MERGE_PATCH,
    Kube,
    _nothing,
    _object,
    _resource_version,
    delete_options,
)
from graphcred.kube.errors import Conflict, Gone, NoAnswer, NotFound, Unreadable, answered

T = TypeVar("T")

# the methods of `Kube` that `LoopKube` makes on the loop (KubeCalls sends these there)
CALLS = ("read_secret", "create_secret", "patch_secret", "patch_status", "delete_secret", "delete_secret_unchanged")
KEEPALIVE = 15.0  # seconds an idle pooled connection is kept (the apiserver keeps them longer)
TLS_CHECK = 30.0  # seconds between looks at the CA and client certificate files (rotated in place)
RETIRE_AFTER = 120.0  # seconds a session made with files since replaced serves the calls already on it
IN_CLUSTER_HOOK = "kubernetes.config.incluster_config"  # where the hook re-reading the token file is defined
PARSE_ON_LOOP = 64 * 1024  # bytes of an answer parsed on the loop; a larger one (a tenant's big Secret) in a thread


def _tls(configuration: client.Configuration) -> ssl.SSLContext:
    """The TLS context urllib3 would make of this configuration (the kubernetes client's RESTClientObject): the CA
    file or data it names, else the system's; no verification only if it says so."""
    if not configuration.verify_ssl:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert, cadata=configuration.ca_cert_data)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    return context


def _tls_files(configuration: client.Configuration) -> tuple[tuple[str, int, int], ...]:
    """The TLS files as they are now (path, inode, mtime): urllib3 reads them for each new connection, so a CA or a
    client certificate rotated in place is used from then on; here, from the next look."""
    seen = []
    for path in (configuration.ssl_ca_cert, configuration.cert_file, configuration.key_file):
        if path:
            try:
                st = os.stat(path)
                seen.append((str(path), st.st_ino, st.st_mtime_ns))
            except OSError:
                seen.append((str(path), 0, 0))
    return tuple(seen)


class LoopKube:
    """`Kube`'s calls in `CALLS`, as coroutines on the running loop, and the Event calls. At most `limit` requests in
    flight, each within its connect and read timeouts from the moment it has a connection (the wait for one is not
    timed, as the wait for an I/O thread was not); the session is made on the loop of the first call and closed by
    `close`."""

    def __init__(self, kube: Kube, limit: int) -> None:
        self.kube = kube
        self._slots = asyncio.Semaphore(limit)
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None
        self._retiring: dict[asyncio.Task[None], aiohttp.ClientSession] = {}
        self._files: tuple[tuple[str, int, int], ...] = ()
        self._next_look = 0.0
        self._closed = False
        connect, read = kube.timeout
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)
        # the whole request once it has a connection: sending its body included, which sock_read does not time
        self._deadline = connect + 2 * read
        hook = kube.api.configuration.refresh_api_key_hook
        # a kubeconfig's hook may run an exec plugin or an OIDC refresh (blocking, untimed): not on the loop. The
        # in-cluster one re-reads the ServiceAccount token file.
        self._prepare_in_thread = hook is not None and getattr(hook, "__module__", "") != IN_CLUSTER_HOOK

    @staticmethod
    def usable(kube: Kube) -> bool:
        """Can these calls go on the loop with this configuration? Not through a proxy (unless the apiserver is in
        its no_proxy), nor with a TLS server name or host check of its own, which urllib3 honours."""
        configuration = kube.api.configuration
        proxied = bool(configuration.proxy) and not rest.should_bypass_proxies(configuration.host,
                                                                               configuration.no_proxy or "")
        return not (proxied or getattr(configuration, "tls_server_name", None)
                    or configuration.assert_hostname is not None)

    def calls(self) -> dict[str, Callable[..., Awaitable[Any]]]:
        """`Kube`'s method names and their coroutines here (for `KubeCalls`)."""
        return {name: getattr(self, name) for name in CALLS}

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:  # as BlockingCalls after `abandon`: a call made while stopping meets the stop
            raise asyncio.CancelledError("the operator is stopping")
        now = time.monotonic()
        if now >= self._next_look:
            self._next_look = now + TLS_CHECK
            files = _tls_files(self.kube.api.configuration)
            if files != self._files and self._session is not None:
                self._retire(self._session)
                self._session = None
            self._files = files
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=_tls(self.kube.api.configuration), limit=self._limit,
                                             keepalive_timeout=KEEPALIVE, enable_cleanup_closed=True)
            # no proxy or netrc from the environment, no cookies kept, no gzip asked: as urllib3's pool
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, trust_env=False,
                                                  cookie_jar=aiohttp.DummyCookieJar(),
                                                  skip_auto_headers=("Accept-Encoding",), auto_decompress=False)
        return self._session

    def _retire(self, session: aiohttp.ClientSession) -> None:
        """A session whose TLS files were replaced: closed once the calls on it are done (or timed out)."""
        async def later() -> None:
            await asyncio.sleep(RETIRE_AFTER)
            await session.close()

        task = asyncio.get_running_loop().create_task(later(), name="graphcred:retire-session")
        self._retiring[task] = session
        task.add_done_callback(lambda t: self._retiring.pop(t, None))

    async def close(self) -> None:
        """Stop: the calls in flight fail (as no answer), later ones are cancelled; retired sessions closed too."""
        self._closed = True
        sessions = [*self._retiring.values(), *([self._session] if self._session is not None else [])]
        self._session = None
        for task in list(self._retiring):
            task.cancel()
        for session in sessions:
            await session.close()

    async def _prepare(self, method: str, path: str, params: dict[str, str],
                       **kwargs: Any) -> tuple[str, dict[str, str], bytes | None]:
        if self._prepare_in_thread:
            return await asyncio.to_thread(self.kube.prepare, method, path, params, **kwargs)
        return self.kube.prepare(method, path, params, **kwargs)

    async def _call(self, what: str, method: str, path: str, params: dict[str, str], *,
                    parse: Callable[[bytes], T], **kwargs: Any) -> T:
        """One call: `what` names it in errors; the answer `parse`d; every failure a KubeError. A connection that
        could not be made (refused, or its TLS handshake failed: nothing was sent) is tried once more, as urllib3's
        one retry did; aiohttp itself sends a read or delete again once if a pooled connection was found closed. A
        write is never sent twice: it may have been applied."""
        try:
            url, headers, payload = await self._prepare(method, path, params, **kwargs)
        except OSError as exc:  # the token file unreadable: as `Kube` says it
            raise NoAnswer(what, None, type(exc).__name__) from exc
        async with self._slots:
            for attempt in (1, 2):
                try:
                    async with asyncio.timeout(self._deadline), \
                            self._client().request(method, url, data=payload, headers=headers,
                                                   allow_redirects=False) as resp:
                        data = await resp.read()
                        status, reason = resp.status, resp.reason or ""
                    break
                except aiohttp.ClientConnectorError as exc:
                    if attempt == 1:
                        continue
                    raise NoAnswer(what, None, _kind(exc)) from exc
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    raise NoAnswer(what, None, _kind(exc)) from exc
        if not 200 <= status <= 299:
            raise answered(what, status, reason, data) from _client_error(status, reason)
        with contextlib.suppress(ValueError, LookupError, TypeError, AttributeError):
            return parse(data) if len(data) <= PARSE_ON_LOOP else await asyncio.to_thread(parse, data)
        # raised here, not from (nor while handling) the parser's exception: a JSONDecodeError holds the whole body
        raise Unreadable(what, status)

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._call("read Secret", "GET", _SECRET, {"namespace": namespace, "name": name},
                                    parse=_object)
        except NotFound:
            return None

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> str:
        return await self._call("create Secret", "POST", _SECRETS, {"namespace": namespace}, body=body,
                                query=_FIELD_MANAGER, parse=_resource_version)

    async def patch_secret(self, namespace: str, name: str, patch: dict[str, Any]) -> str:
        try:
            return await self._call("patch Secret", "PATCH", _SECRET, {"namespace": namespace, "name": name},
                                    body=patch, query=_FIELD_MANAGER, content_type=MERGE_PATCH, parse=_resource_version)
        except NotFound as exc:
            raise Conflict(exc.call, exc.status, exc.reason) from exc

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        try:
            await self._call("patch GraphAppCredential status", "PATCH", _CREDENTIAL_STATUS,
                             {"namespace": namespace, "name": name}, body={"status": status},
                             content_type=MERGE_PATCH, parse=_nothing)
        except NotFound as exc:
            raise Gone(exc.call, exc.status, exc.reason) from exc

    async def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        await self._call("create Event", "POST", _EVENTS, {"namespace": namespace}, body=body, parse=_nothing)

    async def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> bool:
        try:
            await self._call("patch Event", "PATCH", _EVENT, {"namespace": namespace, "name": name}, body=patch,
                             content_type=MERGE_PATCH, parse=_nothing)
        except NotFound:
            return False
        return True

    async def delete_secret(self, namespace: str, name: str, uid: str | None = None) -> None:
        try:
            await self._delete_secret(namespace, name, {"uid": uid} if uid else None)
        except (NotFound, Conflict):
            return

    async def delete_secret_unchanged(self, namespace: str, name: str, uid: str, resource_version: str) -> None:
        try:
            await self._delete_secret(namespace, name, {"uid": uid, "resourceVersion": resource_version})
        except NotFound:
            return

    async def _delete_secret(self, namespace: str, name: str, preconditions: dict[str, str] | None) -> None:
        await self._call("delete Secret", "DELETE", _SECRET, {"namespace": namespace, "name": name},
                         body=delete_options(preconditions), parse=_nothing)


class _Answer:
    """What the client's `ApiException.from_response` reads of an answer: its status and reason, no body."""

    def __init__(self, status: int, reason: str) -> None:
        self.status, self.reason, self.data, self.headers = status, reason, b"", None


def _client_error(status: int, reason: str) -> client.ApiException:
    """The kubernetes client's exception for this status (ForbiddenException, ServiceException...), as `Kube`'s
    errors carry for their cause: the metric of internal errors is labelled with its type."""
    try:
        client.ApiException.from_response(http_resp=_Answer(status, reason), body=None, data=None)
    except client.ApiException as exc:
        return exc
    raise AssertionError("from_response always raises")  # pragma: no cover


def _kind(exc: BaseException) -> str:
    """What happened instead of an answer, as urllib3's errors named it (a timeout, a failed handshake)."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "ConnectTimeoutError"
    if isinstance(exc, TimeoutError):
        return "ReadTimeoutError"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "SSLError"
    return type(exc).__name__
