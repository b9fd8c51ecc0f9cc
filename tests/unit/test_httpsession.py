"""The session handed to msal: what it caches of discovery, when it forgets it, and whom it trusts for TLS.
Tiny local servers on 127.0.0.1 stand in for an authority, a proxy and a public cloud."""

from __future__ import annotations

import json
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from graphcred.httpsession import PinnedCASession
from graphcred_testbed.issuer import IssuerServer
from graphcred_testbed.pki import CertificateAuthority

DISCOVERY = "/t/v2.0/.well-known/openid-configuration"
TOKEN = "/t/oauth2/v2.0/token"
HTML = (200, "text/html", b"<html><body>Access denied by proxy</body></html>")


def _doc() -> tuple[int, str, bytes]:
    # served over http in these tests, but naming an https token endpoint, as a usable document must
    body = {"token_endpoint": f"https://login.example.test{TOKEN}",
            "authorization_endpoint": "https://login.example.test/t/authorize"}
    return 200, "application/json", json.dumps(body).encode()


class _Authority(ThreadingHTTPServer):
    """Plain HTTP: answers each path from a script (the last answer repeats) and counts requests."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.base = f"http://127.0.0.1:{self.server_address[1]}"
        self.script: dict[str, list[tuple[int, str, bytes]]] = {}
        self.hits: Counter[str] = Counter()

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
        status, content_type, body = self.server.answer(self.path)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
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


def _discover(session: PinnedCASession, authority: _Authority) -> requests.Response:
    return session.get(authority.base + DISCOVERY)


def test_a_proxy_page_is_not_cached_as_discovery(authority: _Authority) -> None:
    authority.script[DISCOVERY] = [HTML, _doc()]
    session = PinnedCASession()
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
    session = PinnedCASession()
    _discover(session, authority)
    _discover(session, authority)
    assert authority.hits[DISCOVERY] == 2


def _tenant(i: int) -> str:
    return f"/t{i}/v2.0/.well-known/openid-configuration"


def test_discovery_is_cached_for_the_most_recently_used_tenants_only(authority: _Authority,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounded: a cluster with more tenants than the cache holds refetches the least recently used one, it does
    not grow without end."""
    monkeypatch.setattr("graphcred.httpsession.DISCOVERY_ENTRIES", 3)
    session = PinnedCASession()
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
    session = PinnedCASession()
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
    session = PinnedCASession()
    _cache_https_document(session, authority)
    authority.script[TOKEN] = [answer]
    session.forget_last_response()  # a new acquisition
    _discover(session, authority)
    session.post(authority.base + TOKEN, data={"grant_type": "client_credentials"})
    session.forget_last_response()
    _discover(session, authority)
    assert authority.hits[DISCOVERY] == 2


def test_a_connection_error_after_a_cached_document_evicts_it(authority: _Authority) -> None:
    session = PinnedCASession()
    _cache_https_document(session, authority)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}{TOKEN}"  # bound, not listening: refused
        session.forget_last_response()
        _discover(session, authority)
        with pytest.raises(requests.exceptions.ConnectionError):
            session.post(dead, data={})
    session.forget_last_response()
    _discover(session, authority)
    assert authority.hits[DISCOVERY] == 2


@pytest.mark.parametrize("status", [429, 503, 400])
def test_throttling_and_refusals_keep_the_cached_document(authority: _Authority, status: int) -> None:
    session = PinnedCASession()
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
    except requests.exceptions.SSLError:
        return False


@pytest.mark.parametrize("default_trust", ["REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"])
def test_the_ca_bundle_adds_to_the_default_trust(two_clouds: tuple[IssuerServer, Path, IssuerServer, Path],
                                                 monkeypatch: pytest.MonkeyPatch, default_trust: str) -> None:
    public, public_ca, private, private_ca = two_clouds
    monkeypatch.setenv(default_trust, str(public_ca))
    session = PinnedCASession(str(private_ca))
    assert _reachable(session, private), "the bundle is trusted"
    assert _reachable(session, public), "the default trust still is"


def test_the_environment_does_not_replace_the_bundle(two_clouds: tuple[IssuerServer, Path, IssuerServer, Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _, public_ca, private, private_ca = two_clouds
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(public_ca))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(public_ca))
    assert _reachable(PinnedCASession(str(private_ca)), private)


def test_trust_is_not_everything(two_clouds: tuple[IssuerServer, Path, IssuerServer, Path],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    public, _, private, private_ca = two_clouds
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    assert not _reachable(PinnedCASession(str(private_ca)), public), "a CA nobody trusts stays untrusted"
    assert not _reachable(PinnedCASession(), private)


def test_a_cached_document_can_be_closed_before_it_is_read(authority: _Authority) -> None:
    """Review of 5eded85: a replayed response is a whole one: `with session.get(...) as r` (close before any read)
    works as it does on the wire; it has no connection to close."""
    authority.script[_tenant(0)] = [_doc()]
    session = PinnedCASession()
    session.get(authority.base + _tenant(0)).json()
    with session.get(authority.base + _tenant(0)) as again:
        pass
    assert again.json() == json.loads(_doc()[2]) and authority.hits[_tenant(0)] == 1
