"""A hostile or faulty authority for tests: an HTTPS server on 127.0.0.1 whose behaviour is chosen by the first
path segment (the tenant, so a credential's spec.tenantId picks it), and a plain-HTTP recorder standing in for a
metadata service. Each records the requests it saw."""

from __future__ import annotations

import gzip
import json
import ssl
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from graphcred_testbed.pki import CertificateAuthority

MiB = 2**20


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, handler: type[BaseHTTPRequestHandler], ca: CertificateAuthority | None) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        scheme = "https" if ca is not None else "http"
        self.base = f"{scheme}://127.0.0.1:{self.server_address[1]}"
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if ca is not None:
            pair = ca.issue("hostile-authority", server=True, hosts=("127.0.0.1",))
            self._tmp = tempfile.TemporaryDirectory(prefix="graphcred-hostile-")
            crt, key = pair.write(Path(self._tmp.name), "hostile")
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(crt, key)
            self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            if isinstance(request, ssl.SSLSocket):
                request.settimeout(10)
                request.do_handshake()
                request.settimeout(None)
            super().finish_request(request, client_address)
        except (ssl.SSLError, OSError):
            pass  # the client hung up (or was cut off by its deadline)

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self.seen.append((method, path))

    def requests(self, method: str | None = None) -> list[str]:
        with self._lock:
            return [p for m, p in self.seen if method is None or m == method]

    def start(self) -> _Server:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.shutdown()
        self.server_close()


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class Recorder(_Server):
    """Plain HTTP, answers 200 to anything: a metadata service's stand-in. `requests()` is what reached it."""

    def __init__(self) -> None:
        class Handler(_Quiet):
            def do_GET(self) -> None:
                self.server.record("GET", self.path)
                self._send(200, b'{"AccessKeyId": "METADATA-SECRET"}')

            def do_POST(self) -> None:
                self.do_GET()

        super().__init__(Handler, None)


class HostileAuthority(_Server):
    """Behaviour by tenant (the first label of the first path segment, so tenantId drip.test is "drip"):
    - drip: discovery headers, then the body one byte every `drip` seconds;
    - dripheaders: the status line, then a header one byte every `drip` seconds;
    - big: a usable discovery document padded to `big` bytes (with Content-Length);
    - bigchunked: the same, chunked, no Content-Length;
    - gzipbomb: the same, gzip-compressed (Content-Encoding: gzip, whatever the client accepts);
    - bigtoken: a normal document; the token endpoint answers `big` bytes;
    - redirect: discovery answers 302 to `redirect_to`;
    - elsewhere: a document naming `token_endpoint` (another host) as its token endpoint;
    - echo: the token endpoint refuses with free text in `error` and `error_description`;
    - anything else: a document naming this host's token endpoint, which refuses (AADSTS7000215)."""

    def __init__(self, ca: CertificateAuthority, *, drip: float = 1.0, big: int = 30 * MiB) -> None:
        self.drip = drip
        self.big = big
        self.redirect_to = ""
        self.token_endpoint = ""
        self._bodies: dict[str, bytes] = {}

        class Handler(_Quiet):
            def do_GET(self) -> None:
                self.server.record("GET", self.path)
                self.server.answer_get(self)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.server.record("POST", self.path)
                self.server.answer_post(self)

        super().__init__(Handler, ca)

    def document(self, tenant: str, **extra: Any) -> dict[str, Any]:
        return {"token_endpoint": f"{self.base}/{tenant}/oauth2/v2.0/token", "issuer": f"{self.base}/{tenant}/v2.0",
                "authorization_endpoint": f"{self.base}/{tenant}/oauth2/v2.0/authorize", **extra}

    def padded(self, tenant: str) -> bytes:
        """A usable document of `big` bytes and more (made once: a test measuring memory can make it first)."""
        if tenant not in self._bodies:
            self._bodies[tenant] = json.dumps(self.document(tenant, padding="@@")).encode().replace(
                b"@@", b"x" * self.big)
        return self._bodies[tenant]

    def bomb(self) -> bytes:
        """`big` bytes of a usable document, gzip-compressed (to about a thousandth)."""
        if "bomb" not in self._bodies:
            self._bodies["bomb"] = gzip.compress(self.padded("gzipbomb"), compresslevel=9)
        return self._bodies["bomb"]

    def _dripping(self, handler: _Quiet, prefix: bytes) -> None:
        handler.wfile.write(prefix)
        handler.wfile.flush()
        end = time.monotonic() + 300
        while not self._stop.is_set() and time.monotonic() < end:
            time.sleep(self.drip)
            handler.wfile.write(b"x")
            handler.wfile.flush()

    def answer_get(self, handler: _Quiet) -> None:
        tenant = handler.path.strip("/").split("/")[0].split(".")[0]  # a tenantId is a domain: its first label
        if tenant == "drip":
            self._dripping(handler, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                    b"Content-Length: 4000\r\n\r\n")
        elif tenant == "dripheaders":
            self._dripping(handler, b"HTTP/1.1 200 OK\r\nX-Slow: ")
        elif tenant == "big":
            handler._send(200, self.padded(tenant))
        elif tenant == "bigchunked":
            body = self.padded(tenant)
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            view = memoryview(body)
            for i in range(0, len(body), MiB):
                piece = view[i:i + MiB]
                handler.wfile.write(f"{len(piece):x}\r\n".encode())
                handler.wfile.write(piece)
                handler.wfile.write(b"\r\n")
            handler.wfile.write(b"0\r\n\r\n")
        elif tenant == "gzipbomb":  # whatever the client accepts
            handler._send(200, self.bomb(), **{"Content-Encoding": "gzip"})
        elif tenant == "redirect":
            handler._send(302, b"", "text/plain", Location=self.redirect_to)
        elif tenant == "elsewhere":
            handler._send(200, json.dumps(self.document(tenant, token_endpoint=self.token_endpoint)).encode())
        else:
            handler._send(200, json.dumps(self.document(tenant)).encode())

    def answer_post(self, handler: _Quiet) -> None:
        tenant = handler.path.strip("/").split("/")[0].split(".")[0]  # a tenantId is a domain: its first label
        if tenant == "bigtoken":
            handler._send(200, json.dumps({"access_token": "a.b.c", "expires_in": 3600,
                                           "padding": "x" * self.big}).encode())
        elif tenant == "echo":
            handler._send(400, json.dumps({
                "error": "invalid_client\n2031-01-01 00:00:00,000 ERROR graphcred: FORGED-LINE",
                "error_description": "AADSTS7000215: BODY-TEXT-NOT-FOR-STATUS",
                "error_codes": [123456789012]}).encode())
        else:
            handler._send(401, json.dumps({"error": "invalid_client", "error_codes": [7000215],
                                           "error_description": "AADSTS7000215: BODY-TEXT-NOT-FOR-STATUS"}).encode())
