"""The session handed to msal: what it caches of discovery, when it forgets it, whom it trusts for TLS, and what
it bounds (destinations, answer sizes, an exchange's total time). Tiny local HTTPS servers on 127.0.0.1 stand in
for an authority, a proxy, a public cloud and hostile authorities."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from graphcred.acquire import deadline
from graphcred.acquire.discovery import DiscoveryCache
from graphcred.acquire.httpsession import MAX_ANSWER, ExchangeFailed, Failure, PinnedCASession
from graphcred_testbed.issuer import IssuerServer
from graphcred_testbed.pki import CertificateAuthority

from ..hostile import HostileAuthority, MiB, Recorder

DISCOVERY = "/t/v2.0/.well-known/openid-configuration"
TOKEN = "/t/oauth2/v2.0/token"
HTML = (200, "text/html", b"<html><body>Access denied by proxy</body></html>")


def _doc() -> tuple[int, str, bytes]:
    # served over http in these tests, but naming an https token endpoint, as a usable document must
    body = {"token_endpoint": f"https://login.example.test{TOKEN}",
            "authorization_endpoint": "https://login.example.test/t/authorize"}
    return 200, "application/json", json.dumps(body).encode()


CA = CertificateAuthority("test-authority-ca")
CA_FILE = Path(tempfile.mkdtemp(prefix="graphcred-test-ca-")) / "ca.crt"
CA_FILE.write_bytes(CA.cert_pem)


class _Authority(ThreadingHTTPServer):
    """HTTPS: answers each path from a script (the last answer repeats) and counts requests."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.base = f"https://127.0.0.1:{self.server_address[1]}"
        crt, key = CA.issue("authority", server=True, hosts=("127.0.0.1",)).write(CA_FILE.parent,
                                                                                   f"a{self.server_address[1]}")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(crt, key)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.script: dict[str, list[tuple[int, str, bytes]]] = {}
        self.hits: Counter[str] = Counter()
        self.authorization: list[str | None] = []  # each request's Authorization header
        self.cookies: list[str | None] = []  # ... and Cookie header
        self.set_cookie: str | None = None  # a Set-Cookie header for every answer

    def answer(self, path: str) -> tuple[int, str, bytes]:
        self.hits[path] += 1
        answers = self.script.get(path) or [(404, "application/json", b'{"error": "not_found"}')]
        return answers.pop(0) if len(answers) > 1 else answers[0]


class _Handler(BaseHTTPRequestHandler):
    server: _Authority
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _reply(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.authorization.append(self.headers.get("Authorization"))
        self.server.cookies.append(self.headers.get("Cookie"))
        status, content_type, body = self.server.answer(self.path)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.server.set_cookie:
            self.send_header("Set-Cookie", self.server.set_cookie)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._reply()

    def do_POST(self) -> None:
        self._reply()




@pytest.fixture
def authority() -> Iterator[_Authority]:
    server = _Authority()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _session(*servers: _Authority | HostileAuthority) -> PinnedCASession:
    """The session as the operator makes it, with these servers' hosts allowed and their CA added."""
    return PinnedCASession(str(CA_FILE), (5.0, 3.0), [s.base for s in servers])


def _discover(session: PinnedCASession, authority: _Authority) -> requests.Response:
    return session.get(authority.base + DISCOVERY)


def test_a_proxy_page_is_not_cached_as_discovery(authority: _Authority) -> None:
    authority.script[DISCOVERY] = [HTML, _doc()]
    session = _session(authority)
    assert _discover(session, authority).headers["Content-Type"] == "text/html"
    assert _discover(session, authority).json()["token_endpoint"].endswith(TOKEN), "fetched again, not cached"
    _discover(session, authority)
    assert authority.hits[DISCOVERY] == 2, "the valid document is cached"


@pytest.mark.parametrize("answer", [
    (200, "application/json", b'{"token_endpoint": "https://x/t/oauth2/v2.0/tok'),
    (200, "application/json", b'["token_endpoint"]'),
    (200, "application/json", b'{"issuer": "https://x/t/v2.0"}'),
    (200, "application/json", b'{"token_endpoint": 42}'),
    (200, "application/json", b'{"token_endpoint": "http://plain.example/t/oauth2/v2.0/token"}'),
], ids=["truncated", "list", "no-endpoint", "number", "not-https"])
def test_only_a_usable_document_is_cached(authority: _Authority, answer: tuple[int, str, bytes]) -> None:
    authority.script[DISCOVERY] = [answer]
    session = _session(authority)
    _discover(session, authority)
    _discover(session, authority)
    assert authority.hits[DISCOVERY] == 2


def _tenant(i: int) -> str:
    return f"/t{i}/v2.0/.well-known/openid-configuration"


def test_discovery_is_cached_for_the_most_recently_used_tenants_only(authority: _Authority) -> None:
    """Bounded: a cluster with more tenants than the cache holds refetches the least recently used one, it does
    not grow without end."""
    session = _session(authority)
    entry = len(authority.base + _tenant(0)) + len(json.dumps(json.loads(_doc()[2]), separators=(",", ":"))) + 200
    session.discovery = DiscoveryCache(time.monotonic, other_budget=3 * entry)
    for i in range(4):
        authority.script[_tenant(i)] = [_doc()]
    for i in (0, 1, 2, 0, 3):  # 0 used again: 1 is then the oldest, and goes when 3 comes
        session.get(authority.base + _tenant(i)).json()
    for i in (0, 2, 3, 1):
        session.get(authority.base + _tenant(i))
    assert [authority.hits[_tenant(i)] for i in range(4)] == [1, 2, 1, 1]


def test_a_cached_document_costs_its_bytes_not_a_response(authority: _Authority) -> None:
    """At 10,000 tenants the cached responses (request, headers, cookie jar) cost 100 MB; the documents 20 MB."""
    import gc
    import tracemalloc

    n = 200
    document = _doc()
    for i in range(n):
        authority.script[_tenant(i)] = [document]
    session = _session(authority)
    session.get(authority.base + _tenant(0))  # connection and first-use allocations outside the count
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1, n):
            session.get(authority.base + _tenant(i))
        gc.collect()
        each = (tracemalloc.get_traced_memory()[0] - before) / (n - 1)
    finally:
        tracemalloc.stop()
    assert each < 1024 + 2 * len(document[2]), f"{each:.0f} bytes a cached document of {len(document[2])}"
    again = session.get(authority.base + _tenant(5))
    assert again.json() == json.loads(document[2]) and again.headers["Content-Type"] == "application/json"
    assert session.get(authority.base + _tenant(5)).json() == again.json(), "each use gets a response of its own"
    assert authority.hits[_tenant(5)] == 1


def _cache_https_document(session: PinnedCASession, authority: _Authority) -> None:
    authority.script[DISCOVERY] = [_doc()]
    _discover(session, authority)
    _discover(session, authority)
    assert authority.hits[DISCOVERY] == 1


@pytest.mark.parametrize("answer", [(404, "application/json", b'{"error": "not_found"}'), HTML],
                         ids=["404", "200-html"])
def test_a_failure_after_a_cached_document_makes_the_next_attempt_fetch_it_again(
        authority: _Authority, answer: tuple[int, str, bytes]) -> None:
    session = _session(authority)
    _cache_https_document(session, authority)
    authority.script[TOKEN] = [answer]
    session.forget_last_response()  # a new acquisition
    _discover(session, authority)
    session.post(authority.base + TOKEN, data={"grant_type": "client_credentials"})
    session.forget_last_response()
    _discover(session, authority)
    assert authority.hits[DISCOVERY] == 2


def test_a_connection_error_after_a_cached_document_evicts_it(authority: _Authority) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"https://127.0.0.1:{closed.getsockname()[1]}"  # bound, not listening: refused
        session = PinnedCASession(str(CA_FILE), authority_hosts=[authority.base, dead])
        _cache_https_document(session, authority)
        session.forget_last_response()
        _discover(session, authority)
        with pytest.raises(ExchangeFailed) as caught:
            session.post(dead + TOKEN, data={})
        assert caught.value.failure is Failure.CONNECTION
    session.forget_last_response()
    _discover(session, authority)
    assert authority.hits[DISCOVERY] == 2


@pytest.mark.parametrize("status", [429, 503, 400])
def test_throttling_and_refusals_keep_the_cached_document(authority: _Authority, status: int) -> None:
    session = _session(authority)
    _cache_https_document(session, authority)
    authority.script[TOKEN] = [(status, "application/json", b'{"error": "temporarily_unavailable"}')]
    session.forget_last_response()
    _discover(session, authority)
    session.post(authority.base + TOKEN, data={})
    session.forget_last_response()
    _discover(session, authority)
    assert authority.hits[DISCOVERY] == 1, "the endpoint answered: its address is right, nothing to re-fetch"


# --- TLS trust: --ca-bundle adds to the default trust -----------------------------------------------------------

@pytest.fixture(scope="module")
def two_clouds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[IssuerServer, Path, IssuerServer, Path]]:
    """A 'public' authority whose CA is in the default trust, and a private one trusted through --ca-bundle."""
    public_ca, private_ca = CertificateAuthority("public-cloud-ca"), CertificateAuthority("private-authority-ca")
    folder = tmp_path_factory.mktemp("cas")
    public_file, private_file = folder / "public.crt", folder / "private.crt"
    public_file.write_bytes(public_ca.cert_pem)
    private_file.write_bytes(private_ca.cert_pem)
    public, private = IssuerServer(public_ca).start(), IssuerServer(private_ca).start()
    for server in (public, private):
        server.issuer.add_tenant("t")
    yield public, public_file, private, private_file
    public.stop()
    private.stop()


def _reachable(session: PinnedCASession, server: IssuerServer) -> bool:
    try:
        return session.get(f"{server.base_url}/t/v2.0/.well-known/openid-configuration").status_code == 200
    except ExchangeFailed as exc:
        assert exc.failure is Failure.UNTRUSTED and exc.origin == server.base_url
        return False


def _trusting(ca_bundle: str | None, *servers: IssuerServer) -> PinnedCASession:
    return PinnedCASession(ca_bundle, authority_hosts=[s.base_url for s in servers])


@pytest.mark.parametrize("default_trust", ["REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"])
def test_the_ca_bundle_adds_to_the_default_trust(two_clouds: tuple[IssuerServer, Path, IssuerServer, Path],
                                                 monkeypatch: pytest.MonkeyPatch, default_trust: str) -> None:
    public, public_ca, private, private_ca = two_clouds
    monkeypatch.setenv(default_trust, str(public_ca))
    session = _trusting(str(private_ca), public, private)
    assert _reachable(session, private), "the bundle is trusted"
    assert _reachable(session, public), "the default trust still is"


def test_the_environment_does_not_replace_the_bundle(two_clouds: tuple[IssuerServer, Path, IssuerServer, Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _, public_ca, private, private_ca = two_clouds
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(public_ca))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(public_ca))
    assert _reachable(_trusting(str(private_ca), private), private)


def test_trust_is_not_everything(two_clouds: tuple[IssuerServer, Path, IssuerServer, Path],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    public, _, private, private_ca = two_clouds
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    assert not _reachable(_trusting(str(private_ca), public), public), "a CA nobody trusts stays untrusted"
    assert not _reachable(_trusting(None, private), private)


def test_a_cached_document_can_be_closed_before_it_is_read(authority: _Authority) -> None:
    """Review of 5eded85: a replayed response is a whole one: `with session.get(...) as r` (close before any read)
    works as it does on the wire; it has no connection to close."""
    authority.script[_tenant(0)] = [_doc()]
    session = _session(authority)
    session.get(authority.base + _tenant(0)).json()
    with session.get(authority.base + _tenant(0)) as again:
        pass
    assert again.json() == json.loads(_doc()[2]) and authority.hits[_tenant(0)] == 1


# --- bounds: what a hostile authority cannot make the session do ---------------------------------------------------

@pytest.fixture
def hostile() -> Iterator[HostileAuthority]:
    server = HostileAuthority(CA, drip=0.5).start()
    yield server
    server.stop()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder().start()
    yield server
    server.stop()


def _doc_url(server: HostileAuthority, tenant: str) -> str:
    return f"{server.base}/{tenant}/v2.0/.well-known/openid-configuration"


def _failure_within(seconds: float, call: Any) -> tuple[ExchangeFailed, float]:
    """Run `call` in a thread; it must fail with ExchangeFailed within `seconds` (not hang, as it did)."""
    outcome: list[BaseException | None] = []
    started = time.monotonic()

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still waiting after {seconds:.0f} s")
    [error] = outcome
    assert isinstance(error, ExchangeFailed), repr(error)
    return error, time.monotonic() - started


@pytest.mark.parametrize("tenant", ["drip", "dripheaders"])
def test_a_dripping_authority_is_cut_off_at_the_exchange_deadline(hostile: HostileAuthority, tenant: str) -> None:
    """One byte every 0.5 s never trips a 3 s read timeout; the 3 s deadline of the whole exchange ends it."""
    session = _session(hostile)
    error, took = _failure_within(15, lambda: session.get(_doc_url(hostile, tenant)))
    assert error.failure is Failure.TIMEOUT and error.origin == hostile.base
    assert 2.5 < took < 5, f"cut off after {took:.1f} s with a 3 s deadline"
    assert session.get(_doc_url(hostile, "t")).status_code == 200, "the next exchange gets a fresh connection"


def test_one_deadline_covers_every_request_of_an_exchange(hostile: HostileAuthority) -> None:
    session = _session(hostile)
    with deadline.exchange(1.0):
        session.get(_doc_url(hostile, "t"))
        time.sleep(1.1)
        with pytest.raises(ExchangeFailed) as caught:
            session.post(f"{hostile.base}/t/oauth2/v2.0/token", data={})
    assert caught.value.failure is Failure.TIMEOUT
    assert hostile.requests("POST") == [], "nothing sent after the deadline"


@pytest.mark.parametrize("tenant", ["big", "bigchunked", "gzipbomb"])
def test_an_answer_above_the_cap_is_refused_not_buffered(hostile: HostileAuthority, tenant: str) -> None:
    """30 MiB of discovery document (declared, chunked, or gzip of about 30 KiB) costs the operator about the cap,
    not 30 MiB or more (before: read whole, then cached)."""
    hostile.padded(tenant)
    hostile.bomb()  # the server's bodies exist before the count starts
    session = _session(hostile)
    session.get(_doc_url(hostile, "t"))  # connection and first-use allocations outside the count
    tracemalloc.start()
    try:
        with pytest.raises(ExchangeFailed) as caught:
            session.get(_doc_url(hostile, tenant))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.failure is Failure.TOO_LARGE
    assert peak < 4 * MiB, f"peak {peak / MiB:.1f} MiB for a refused 30 MiB answer"
    assert len(session.discovery) == 1, "only the small document is cached"


def test_a_cached_document_keeps_only_what_msal_reads(hostile: HostileAuthority) -> None:
    hostile.big = MAX_ANSWER // 2  # below the cap: usable, and padded
    session = _session(hostile)
    assert session.get(_doc_url(hostile, "big")).status_code == 200
    assert session.discovery.bytes_used(cloud=False) < 1024
    assert "padding" not in session.get(_doc_url(hostile, "big")).json()
    assert len(hostile.requests("GET")) == 1


def test_redirects_are_never_followed(hostile: HostileAuthority, recorder: Recorder) -> None:
    hostile.redirect_to = f"{recorder.base}/latest/meta-data/iam/security-credentials/node"
    session = _session(hostile)
    with pytest.raises(ExchangeFailed) as caught:
        session.get(_doc_url(hostile, "redirect"))
    assert (caught.value.failure, caught.value.status) == (Failure.REDIRECT, 302)
    assert recorder.requests() == [], "the metadata stand-in was never asked"


def test_only_allowed_hosts_are_contacted(hostile: HostileAuthority, recorder: Recorder,
                                          authority: _Authority) -> None:
    session = _session(hostile)
    for url in (f"{recorder.base}/latest/meta-data/", authority.base + DISCOVERY,
                f"https://{hostile.base.removeprefix('https://')}@127.0.0.1:1/x", "https://127.0.0.1:99999/x"):
        with pytest.raises(ExchangeFailed) as caught:
            session.get(url)
        assert caught.value.failure is Failure.NOT_ALLOWED, url
    assert recorder.requests() == [] and authority.hits[DISCOVERY] == 0


# --- the discovery cache: bounded in bytes, the clouds' part reserved --------------------------------------------

def _usable(tenant: str, host: str = "https://private.example") -> dict[str, Any]:
    return {"token_endpoint": f"{host}/{tenant}/oauth2/v2.0/token", "issuer": f"{host}/{tenant}/v2.0",
            "authorization_endpoint": f"{host}/{tenant}/oauth2/v2.0/authorize"}


def test_the_cache_is_bounded_in_bytes() -> None:
    cache = DiscoveryCache(time.monotonic, cloud_budget=64 * 1024, other_budget=64 * 1024)
    for i in range(5000):
        cache.put(f"https://private.example/t{i}/v2.0/.well-known/openid-configuration", False, _usable(f"t{i}"))
    assert cache.bytes_used(cloud=False) <= 64 * 1024
    assert 64 < len(cache) < 200


def test_tenant_chosen_authorities_cannot_crowd_out_the_clouds() -> None:
    cache = DiscoveryCache(time.monotonic, cloud_budget=64 * 1024, other_budget=64 * 1024)
    cloud = "https://login.microsoftonline.com/contoso/v2.0/.well-known/openid-configuration"
    cache.put(cloud, True, _usable("contoso", "https://login.microsoftonline.com"))
    for i in range(5000):
        cache.put(f"https://private.example/t{i}/v2.0/.well-known/openid-configuration", False, _usable(f"t{i}"))
    assert cache.get(cloud, True) is not None


def test_cached_documents_expire() -> None:
    now = [0.0]
    cache = DiscoveryCache(lambda: now[0], ttl=10)
    cache.put("u", False, _usable("t"))
    now[0] = 9.0
    assert cache.get("u", False) is not None
    now[0] = 10.0
    assert cache.get("u", False) is None and len(cache) == 0


class _ConnectProxy(ThreadingHTTPServer):
    """An HTTPS proxy (HTTP CONNECT, then bytes both ways), recording the targets it was asked for."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Tunnel)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.targets: list[str] = []


class _Tunnel(BaseHTTPRequestHandler):
    server: _ConnectProxy

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_CONNECT(self) -> None:
        self.server.targets.append(self.path)
        host, port = self.path.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)), timeout=5)
        self.send_response(200, "Connection established")
        self.end_headers()

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for end in (src, dst):
                    with contextlib.suppress(OSError):
                        end.shutdown(socket.SHUT_RDWR)

        back = threading.Thread(target=pump, args=(upstream, self.connection), daemon=True)
        back.start()
        pump(self.connection, upstream)
        back.join(timeout=5)


@pytest.mark.parametrize(("bypassed", "schemeless"), [(False, False), (True, False), (False, True)],
                         ids=["through-the-proxy", "no-proxy-for-the-host", "proxy-named-without-http://"])
def test_the_environment_s_https_proxy_is_honoured_and_netrc_never_sent(
        authority: _Authority, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bypassed: bool,
        schemeless: bool) -> None:
    """Corporate clusters reach Entra through HTTPS_PROXY (NO_PROXY for private hosts): honoured, read once per
    authority instead of at each request; a ~/.netrc entry for the host is never sent to an authority. Review of the
    urllib3 session: HTTPS_PROXY=host:port (no scheme, as curl and requests take it) failed every request."""
    proxy = _ConnectProxy()
    threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password hunter2\n")
    netrc.chmod(0o600)
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url.removeprefix("http://") if schemeless else proxy.url)
    monkeypatch.setenv("NETRC", str(netrc))
    if bypassed:
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    authority.script[DISCOVERY] = [_doc()]
    authority.script[TOKEN] = [(200, "application/json", b'{"error": "invalid_client"}')]
    try:
        session = _session(authority)
        assert _discover(session, authority).status_code == 200
        for _ in range(2):
            assert session.post(authority.base + TOKEN, data={"grant_type": "client_credentials"}).status_code == 200
        target = authority.base.removeprefix("https://")
        assert proxy.targets == ([] if bypassed else [target]), proxy.targets  # one tunnel, kept alive
        assert authority.authorization == [None, None, None], "netrc credentials reached the authority"
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_an_authority_s_cookie_is_never_sent_back_to_it_or_to_another_tenant_s_authority() -> None:
    """Entra sets cookies (fpc, x-ms-gateway-slice); the session kept them and sent them with every later token
    request, another tenant's too, and requests rebuilt three cookie jars for each request (a tenth of the
    steady-state time at 10,000 credentials). A token client needs none."""
    first, second = _Authority(), _Authority()
    for server in (first, second):
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        server.script[DISCOVERY] = [_doc()]
    first.set_cookie = "fpc=tenant-a-state; Path=/; Secure"
    try:
        session = _session(first, second)
        for server in (first, second, first):
            assert session.post(server.base + TOKEN, data={"grant_type": "client_credentials"}).status_code == 404
        assert first.cookies == [None, None] and second.cookies == [None]
    finally:
        for server in (first, second):
            server.shutdown()
            server.server_close()


def test_a_form_is_encoded_as_requests_encoded_it() -> None:
    """msal hands the session its token request as a dict (some fields None, scopes a list): encoded as requests
    encoded it, a None field left out (never sent as the text "None"), a list as repeated fields."""
    from graphcred.acquire.httpsession import _request_body

    headers: dict[str, str] = {}
    body = _request_body({"grant_type": "client_credentials", "claims": None, "scope": ["a b", "c"]}, headers)
    assert body == b"grant_type=client_credentials&scope=a+b&scope=c"
    assert headers == {"Content-Type": "application/x-www-form-urlencoded"}
    assert _request_body(b'{"raw": 1}', {}) == b'{"raw": 1}' and _request_body(None, {}) is None


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent(authority: _Authority) -> None:
    """Review of the urllib3 session: requests refused a header value with CR or LF; http.client raised a ValueError
    holding the whole value (a bearer token for Graph, which a hostile authority may have issued with a CRLF in it)
    that escaped the session. It is an ExchangeFailed again, naming no value, and nothing reaches the host."""
    authority.script[TOKEN] = [(200, "application/json", b"{}")]
    session = _session(authority)
    with pytest.raises(ExchangeFailed) as caught:
        session.post(authority.base + TOKEN, data={"a": "b"}, headers={"Authorization": "Bearer SECRET\r\nX: y"})
    assert "SECRET" not in str(caught.value) and caught.value.__cause__ is None
    assert authority.authorization == [], "the request was sent"


def test_the_watchdog_outlives_a_socket_it_cannot_shut() -> None:
    """Review: through an https proxy a pooled connection's socket is urllib3's SSLTransport, not a socket; shutting it
    raised TypeError, which ended the one watchdog thread: no exchange's deadline was enforced after that. A blocked
    read of a later exchange is still ended at its deadline."""

    class Wrapped:  # what urllib3 wraps a socket in behind an https proxy: the socket is its attribute
        def __init__(self, sock: socket.socket) -> None:
            self.socket = sock

    class NotASocket:
        pass

    first, first_peer = socket.socketpair()
    second, second_peer = socket.socketpair()
    try:
        odd = deadline.Exchange(0.05)
        odd.watch(NotASocket())  # type: ignore[arg-type]
        odd.watch(Wrapped(first))  # type: ignore[arg-type]
        deadline._WATCHDOG.arm(odd)
        with deadline.exchange(0.3):
            deadline.watch(second)
            second.settimeout(10)
            started = time.monotonic()
            assert second.recv(1) == b"", "the read was not ended"  # shut down by the watchdog, not by a timeout
            assert time.monotonic() - started < 5
        first.settimeout(1)
        assert first.recv(1) == b"", "the wrapped socket was not shut down"
    finally:
        for sock in (first, first_peer, second, second_peer):
            sock.close()


def test_long_urls_are_not_remembered() -> None:
    """Review: `origin()` remembered every URL it was asked about, 1,024 of any length: a hostile authority's discovery
    documents naming 60 KiB token endpoints held 66 MiB. URLs of ordinary length only are remembered."""
    from graphcred.acquire import authority

    authority._remembered_origin.cache_clear()
    assert authority.origin("https://login.example.test/" + "a" * 60_000) == "https://login.example.test"
    assert authority.origin("https://login.example.test/t/oauth2/v2.0/token") == "https://login.example.test"
    assert authority._remembered_origin.cache_info().currsize == 1
