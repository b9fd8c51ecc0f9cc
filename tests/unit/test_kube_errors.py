"""Kubernetes errors are typed at one boundary: `Kube` against a small HTTP server that answers as an apiserver
would (the real kubernetes client talks to it): each answer becomes its KubeError or the return value the callers
expect, no response body reaches an error's text, and an outage is one thing for every caller. The calls `LoopKube`
makes on the event loop (aiohttp) answer the same, in every test that makes one (`kube` is either)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client

from graphcred.kube import errors, loopcalls
from graphcred.kube.calls import Kube
from graphcred.kube.errors import (
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    KubeError,
    NoAnswer,
    NotFound,
    ServerError,
    TooManyRequests,
    Unreadable,
)
from graphcred.kube.events import EventRecorder, event_body
from graphcred.kube.loopcalls import LoopKube

from .fakes import gac, secret_spec
from .harness import TENANT, Rig, run, until

# in every body the server sends: an error that carried the body (or a part of it) would show it
MARKER = "c2VjcmV0LXZhbHVlLTdmM2E="
DROP = "drop"  # close the connection without an answer
Answer = tuple[int, str] | str  # (status, body), or DROP
REF = {"apiVersion": "graphcred.io/v1alpha1", "kind": "GraphAppCredential",
       "metadata": {"name": "mail", "namespace": "ns", "uid": "u-1"}}


def status_body(code: int, reason: str, *causes: str) -> str:
    """A Status as the apiserver sends it with a failure; its message echoes what was sent (as a 422's does)."""
    return json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
                       "message": f"Secret \"s\" is invalid: data[key]: Invalid value: \"{MARKER}\"",
                       "details": {"name": "s", "kind": "secrets",
                                   "causes": [{"reason": c, "message": MARKER, "field": MARKER} for c in causes]}})


def object_body() -> str:
    """A Secret, as a proxy (or a confused server) might send with an error status."""
    return json.dumps({"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "s"}, "data": {"key": MARKER}})


class Apiserver:
    """Answers every request with `answer(method, path)`; records (method, path)."""

    def __init__(self) -> None:
        self.answer: Callable[[str, str], Answer] = lambda method, path: (200, "{}")
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                server.requests.append((self.command, self.path))
                answer = server.answer(self.command, self.path)
                if answer == DROP:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                assert isinstance(answer, tuple)
                status, body = answer
                data = body.encode()
                with contextlib.suppress(ConnectionError):  # the client gave up waiting (a timeout test)
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _any  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


ON_LOOP = (*loopcalls.CALLS, "create_event", "patch_event")  # the passes' calls and the Event recorder's


class OnLoop:
    """`Kube` with the calls `LoopKube` makes made by it, each on an event loop of its own (the tests are blocking);
    the others as `Kube` makes them."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    def __getattr__(self, name: str) -> Any:
        if name not in ON_LOOP:
            return getattr(self.kube, name)

        def call(*args: Any) -> Any:
            async def once() -> Any:
                on_loop = LoopKube(self.kube, limit=4)
                try:
                    return await getattr(on_loop, name)(*args)
                finally:
                    await on_loop.close()

            return asyncio.run(once())

        return call


def _kube(url: str, timeout: tuple[float, float] = (2.0, 2.0), how: str = "threads") -> Kube:
    conf = client.Configuration()
    conf.host = url
    kube = Kube(client.ApiClient(conf), timeout=timeout)
    return kube if how == "threads" else OnLoop(kube)  # type: ignore[return-value]


@pytest.fixture
def apiserver() -> Iterator[Apiserver]:
    server = Apiserver()
    yield server
    server.stop()


@pytest.fixture(params=["threads", "loop"])
def kube(apiserver: Apiserver, request: pytest.FixtureRequest) -> Kube:
    return _kube(apiserver.url, how=request.param)


SECRET = {"metadata": {"name": "s", "namespace": "ns"}, "data": {"key": MARKER}}
EVENT = event_body(REF, "Normal", "TokenIssued", "m", name="mail.1", instance="test", at=dt.datetime.now(dt.UTC))
# every call of Kube, by its name in errors
CALLS: dict[str, Callable[[Kube], Any]] = {
    "read Secret": lambda k: k.read_secret("ns", "s"),
    "read ServiceAccount": lambda k: k.read_service_account("ns", "sa"),
    "create ServiceAccount token": lambda k: k.request_service_account_token("ns", "sa", "api://AzureADTokenExchange"),
    "create Secret": lambda k: k.create_secret("ns", SECRET),
    "patch Secret": lambda k: k.patch_secret("ns", "s", {"metadata": {"resourceVersion": "1"}}),
    "patch GraphAppCredential status": lambda k: k.patch_status("ns", "c", {"secretName": "s"}),
    "create Event": lambda k: k.create_event("ns", EVENT),
    "patch Event": lambda k: k.patch_event("ns", "e", {"count": 2}),
    "delete Secret": lambda k: k.delete_secret("ns", "s", "uid-1"),
    "delete Secret unchanged": lambda k: k.delete_secret_unchanged("ns", "s", "uid-1", "1"),
}


def _raised(call: Callable[[], Any]) -> KubeError:
    with pytest.raises(KubeError) as caught:
        call()
    return caught.value


def _no_body(error: BaseException) -> None:
    """Nothing an error says or holds as its own carries the body (its cause is the client's, kept for its type)."""
    shown = [str(error), repr(error), *map(str, error.args)]
    if isinstance(error, KubeError):
        shown += [error.call, error.reason, *error.causes]
    assert not [s for s in shown if MARKER in s], shown


# --- each answer, its error ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("status", "reason", "cls", "phrase"), [
    (403, "Forbidden", Forbidden, "Forbidden"),
    (409, "Conflict", Conflict, "Conflict"),
    (409, "AlreadyExists", Conflict, "Conflict"),
    (422, "Invalid", Invalid, "Unprocessable Entity"),
    (429, "TooManyRequests", TooManyRequests, "Too Many Requests"),
    (500, "InternalError", ServerError, "Internal Server Error"),
    (503, "ServiceUnavailable", ServerError, "Service Unavailable"),
    (401, "Unauthorized", KubeError, "Unauthorized"),
])
def test_an_error_answer_is_its_kube_error_naming_the_call_and_the_status(
        apiserver: Apiserver, kube: Kube, status: int, reason: str, cls: type[KubeError], phrase: str) -> None:
    apiserver.answer = lambda method, path: (status, status_body(status, reason, "FieldValueInvalid"))
    error = _raised(lambda: kube.create_secret("ns", SECRET))
    assert type(error) is cls
    assert (error.call, error.status, error.reason) == ("create Secret", status, phrase)
    assert str(error) == f"create Secret failed: HTTP {status} {phrase}"
    assert error.causes == ("FieldValueInvalid",)
    assert error.outage == (status == 429 or status >= 500)
    assert isinstance(error.__cause__, client.ApiException), "the client's error stays the cause"
    _no_body(error)


@pytest.mark.parametrize("name", list(CALLS))
def test_no_call_lets_a_client_error_escape(apiserver: Apiserver, kube: Kube, name: str) -> None:
    apiserver.answer = lambda method, path: (500, status_body(500, "InternalError"))
    error = _raised(lambda: CALLS[name](kube))
    assert isinstance(error, ServerError) and error.outage
    assert str(error) == f"{name.removesuffix(' unchanged')} failed: HTTP 500 Internal Server Error"
    _no_body(error)


def test_not_found_keeps_each_calls_return_convention(apiserver: Apiserver, kube: Kube) -> None:
    apiserver.answer = lambda method, path: (404, status_body(404, "NotFound"))
    assert kube.read_secret("ns", "s") is None
    assert kube.read_service_account("ns", "sa") is None
    assert kube.patch_event("ns", "e", {"count": 2}) is False, "an Event gone (its TTL) is posted anew"
    kube.delete_secret("ns", "s", "uid-1")  # gone already: fine
    kube.delete_secret_unchanged("ns", "s", "uid-1", "1")
    assert type(_raised(lambda: kube.patch_secret("ns", "s", {}))) is Conflict, "a patch of a Secret gone: Conflict"
    gone = _raised(lambda: kube.patch_status("ns", "c", {}))
    assert isinstance(gone, Gone) and isinstance(gone, NotFound) and not gone.outage
    for name in ("create ServiceAccount token", "create Secret", "create Event"):
        error = _raised(lambda name=name: CALLS[name](kube))  # type: ignore[misc]
        assert type(error) is NotFound and str(error) == f"{name} failed: HTTP 404 Not Found"


def test_a_conflict_keeps_each_calls_return_convention(apiserver: Apiserver, kube: Kube) -> None:
    apiserver.answer = lambda method, path: (409, status_body(409, "Conflict"))
    kube.delete_secret("ns", "s", "uid-1")  # another Secret of that name now: not ours to delete, fine
    assert isinstance(_raised(lambda: kube.delete_secret_unchanged("ns", "s", "uid-1", "1")), Conflict)
    assert isinstance(_raised(lambda: kube.patch_secret("ns", "s", {})), Conflict)


def test_a_namespace_being_deleted_is_a_forbidden_with_its_cause(apiserver: Apiserver, kube: Kube) -> None:
    apiserver.answer = lambda method, path: (403, status_body(403, "Forbidden", "NamespaceTerminating"))
    error = _raised(lambda: CALLS["create Event"](kube))
    assert isinstance(error, Forbidden) and error.namespace_terminating
    apiserver.answer = lambda method, path: (403, status_body(403, "Forbidden"))
    error = _raised(lambda: CALLS["create Event"](kube))
    assert isinstance(error, Forbidden) and not error.namespace_terminating


@pytest.mark.parametrize("body", [object_body(), f"upstream said: {MARKER}", "", "[1, 2]", "{"])
def test_a_body_that_is_no_status_gives_nothing_but_the_status(apiserver: Apiserver, kube: Kube, body: str) -> None:
    apiserver.answer = lambda method, path: (403, body)
    error = _raised(lambda: kube.read_secret("ns", "s"))
    assert isinstance(error, Forbidden) and error.causes == ()
    assert str(error) == "read Secret failed: HTTP 403 Forbidden"
    _no_body(error)


def test_a_status_cause_is_kept_short() -> None:
    exc = client.ApiException(status=422, reason="Unprocessable Entity\nX-Injected: header")
    exc.body = status_body(422, "Invalid", "A" * 500, *[f"Cause{i}" for i in range(20)])
    error = errors.translated("create Secret", exc)
    assert isinstance(error, Invalid)
    assert error.reason == "Unprocessable Entity", "one line of the reason phrase"
    assert len(error.causes) == errors.MAX_CAUSES and len(error.causes[0]) == errors.MAX_REASON
    assert str(error) == "create Secret failed: HTTP 422 Unprocessable Entity"


def test_an_answer_that_cannot_be_read_is_no_outage(apiserver: Apiserver, kube: Kube) -> None:
    apiserver.answer = lambda method, path: (200, f"not json {MARKER}")
    error = _raised(lambda: kube.read_secret("ns", "s"))
    assert isinstance(error, Unreadable) and error.status == 200 and not error.outage
    assert str(error) == "read Secret failed: an unreadable answer (HTTP 200)"
    assert error.__cause__ is None and error.__context__ is None, "the parser's error (it holds the body) is dropped"
    _no_body(error)
    apiserver.answer = lambda method, path: (201, json.dumps({"status": {"expirationTimestamp": MARKER}}))
    error = _raised(lambda: CALLS["create ServiceAccount token"](kube))
    assert isinstance(error, Unreadable) and str(error) == ("create ServiceAccount token failed: an unreadable "
                                                            "answer (HTTP 201)")
    apiserver.answer = lambda method, path: (201, json.dumps({"metadata": {"name": MARKER}}))
    assert isinstance(_raised(lambda: CALLS["create Secret"](kube)), Unreadable), "no resourceVersion"


def test_the_answers_a_call_expects_are_returned(apiserver: Apiserver, kube: Kube) -> None:
    apiserver.answer = lambda method, path: (200, json.dumps({"metadata": {"resourceVersion": "7"}, "data": {}}))
    assert kube.read_secret("ns", "s") == {"metadata": {"resourceVersion": "7"}, "data": {}}
    assert kube.create_secret("ns", SECRET) == "7"
    assert kube.patch_secret("ns", "s", {}) == "7"
    assert kube.patch_event("ns", "e", {}) is True
    apiserver.answer = lambda method, path: (201, json.dumps({"status": {"token": "header.payload.signature"}}))
    assert kube.request_service_account_token("ns", "sa", "aud") == "header.payload.signature"


# --- no answer at all ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["read Secret", "create Secret", "patch GraphAppCredential status"])
def test_a_dropped_connection_is_no_answer(apiserver: Apiserver, kube: Kube, name: str) -> None:
    apiserver.answer = lambda method, path: DROP
    error = _raised(lambda: CALLS[name](kube))
    assert isinstance(error, NoAnswer) and error.status is None and error.outage
    assert str(error) == f"{name} failed: {error.reason}" and error.reason.endswith("Error"), error.reason
    _no_body(error)


@pytest.mark.parametrize(("how", "said"), [("threads", "MaxRetryError"), ("loop", "ClientConnectorError")])
def test_a_refused_connection_is_no_answer(how: str, said: str) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = _raised(lambda: _kube(f"http://127.0.0.1:{port}", how=how).read_secret("ns", "s"))
    assert isinstance(error, NoAnswer) and error.outage
    assert str(error) == f"read Secret failed: {said}"


@pytest.mark.parametrize("name", ["create Event", "patch GraphAppCredential status"])
def test_a_call_answered_too_late_is_no_answer(apiserver: Apiserver, name: str) -> None:
    def late(method: str, path: str) -> Answer:
        time.sleep(1.5)
        return 200, "{}"

    apiserver.answer = late
    kube = _kube(apiserver.url, timeout=(1.0, 0.3), how="threads" if name == "create Event" else "loop")
    error = _raised(lambda: CALLS[name](kube))
    assert isinstance(error, NoAnswer) and error.outage, repr(error)


def test_on_the_loop_a_read_on_a_pooled_connection_found_closed_is_sent_again_and_a_write_is_not(
        apiserver: Apiserver) -> None:
    """A pooled connection the apiserver closed while it idled is no outage for a read: it is sent again once, as
    urllib3's one retry did. A write is not (it may have been applied): no answer."""
    ok = 200, json.dumps({"metadata": {"resourceVersion": "7"}})

    async def scenario() -> None:
        on_loop = LoopKube(_kube(apiserver.url), limit=1)  # one connection, pooled between the calls
        try:
            for method, call in (("GET", lambda: on_loop.read_secret("ns", "s")),
                                 ("PATCH", lambda: on_loop.patch_status("ns", "c", {}))):
                apiserver.answer = lambda m, path: ok
                await call()  # a connection made, answered, pooled
                sent = len(apiserver.requests)
                apiserver.answer = lambda m, path, first=sent: DROP if len(apiserver.requests) == first + 1 else ok
                if method == "GET":
                    assert await call() == {"metadata": {"resourceVersion": "7"}}
                    assert [m for m, _ in apiserver.requests[sent:]] == ["GET", "GET"]
                else:
                    with pytest.raises(NoAnswer):
                        await call()
                    assert [m for m, _ in apiserver.requests[sent:]] == ["PATCH"], "a write is not sent twice"
        finally:
            await on_loop.close()

    asyncio.run(scenario())


def test_a_call_on_the_loop_after_the_stop_is_cancelled(apiserver: Apiserver) -> None:
    async def scenario() -> None:
        on_loop = LoopKube(_kube(apiserver.url), limit=4)
        assert await on_loop.read_secret("ns", "s") == {}
        await on_loop.close()
        with pytest.raises(asyncio.CancelledError):
            await on_loop.read_secret("ns", "s")

    asyncio.run(scenario())
    assert len(apiserver.requests) == 1


def test_a_tls_failure_is_no_answer() -> None:
    error = errors.translated("read Secret", client.ApiException(status=0, reason="SSLError\ncertificate verify "
                                                                                   "failed: unable to get issuer"))
    assert isinstance(error, NoAnswer) and error.outage
    assert str(error) == "read Secret failed: SSLError"


# --- the one definition of an outage ------------------------------------------------------------------------------
@pytest.mark.parametrize(("error", "outage"), [
    (NoAnswer("read Secret", None, "ReadTimeoutError"), True),
    (KubeError("read Secret"), True),  # no status: no answer
    (TooManyRequests("read Secret"), True),
    (ServerError("read Secret", 500), True),
    (ServerError("read Secret", 504), True),
    (errors.error("read Secret", 507), True),
    (Forbidden("read Secret"), False),
    (NotFound("read Secret"), False),
    (Gone("patch GraphAppCredential status"), False),
    (Conflict("create Secret"), False),
    (Invalid("create Secret"), False),
    (errors.error("list Secrets", 410), False),
    (errors.error("read Secret", 401), False),
    (Unreadable("read Secret", 200), False),
    (RuntimeError("a bug"), False),
    (ValueError("a bug"), False),
])
def test_an_outage_is_no_answer_429_or_5xx_and_nothing_else(error: BaseException, outage: bool) -> None:
    assert errors.outage(error) is outage
    if isinstance(error, KubeError):
        assert error.outage is outage


@pytest.mark.parametrize("status", [403, 404, 409, 422, 429, 500, 502])
def test_an_error_is_made_by_its_status(status: int) -> None:
    error = errors.error("read Secret", status, "Phrase")
    assert error.status == status and str(error) == f"read Secret failed: HTTP {status} Phrase"
    assert type(errors.translated("read Secret", error)) is type(error), "a KubeError stays itself"
    assert errors.translated("read Secret", RuntimeError("a bug")) is None, "a bug is not the apiserver's"


def test_a_failure_description_names_the_call_and_never_an_exceptions_text() -> None:
    assert errors.describe_failure("post Event", Forbidden("create Event", 403, "Forbidden")) == \
        "post Event failed: HTTP 403 Forbidden"
    assert errors.describe_failure("reconcile", KeyError(MARKER)) == "reconcile failed: KeyError"


# --- the case the two classifiers disagreed on ------------------------------------------------------------------
def _event_attempts(exc: Exception) -> int:
    """How often the Event recorder tries to post an Event whose every post fails with `exc`."""
    attempts: list[int] = []

    class Failing:
        def create_event(self, namespace: str, body: dict[str, Any]) -> None:
            attempts.append(1)
            raise exc

        def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> bool:
            raise AssertionError("not posted before")

    async def scenario() -> None:
        recorder = EventRecorder(Failing(), asyncio.to_thread, instance="test", retry_delays=(0.01, 0.01))
        recorder.start()
        recorder(REF, "Normal", "TokenIssued", "m")
        await recorder.stop()

    run(scenario, timeout=10)
    return len(attempts)


def _failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "graphcred.reconcile.controller" and "reconcile failed" in r.msg]


def _pass_failure_level(exc: Exception, caplog: pytest.LogCaptureFixture) -> int:
    """The level the controller logs a pass at that failed with `exc` (WARNING: an outage ridden out)."""
    rig = Rig()

    def failing(namespace: str, name: str) -> dict[str, Any] | None:
        raise exc

    rig.kube.read_secret = failing  # type: ignore[method-assign]

    async def scenario() -> None:
        rig.add(gac("a", secret_spec(TENANT, str(uuid.uuid4()))))
        await until(lambda: _failures(caplog), what="the pass's failure logged")
        await rig.controller.stop()

    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="graphcred"):
        run(scenario, timeout=10)
    return _failures(caplog)[0].levelno


@pytest.mark.parametrize(("exc", "outage"), [
    (RuntimeError("no status, no connection error"), False),  # the disagreement: Events retried it, passes did not
    (Unreadable("read Secret", 200), False),
    (Forbidden("read Secret", 403, "Forbidden"), False),
    (NoAnswer("read Secret", None, "ProtocolError"), True),
    (TooManyRequests("read Secret", 429, "Too Many Requests"), True),
    (ServerError("read Secret", 503, "Service Unavailable"), True),
])
def test_events_and_passes_agree_on_what_is_an_outage(exc: Exception, outage: bool,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """The Event recorder retried a post that failed with any error without an HTTP status; a pass called such an
    error an outage only if it was a connection error. Both ask `KubeError.outage` now."""
    retried = _event_attempts(exc) > 1
    ridden_out = _pass_failure_level(exc, caplog) == logging.WARNING
    assert (retried, ridden_out) == (outage, outage)

