"""Kubernetes calls never hang on a half-open connection: every call has a timeout, sockets have TCP keepalive,
and a leader whose renewals hang stops acting before its Lease can be taken. A token exchange ends at the token
timeout however slowly the authority answers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from graphcred.acquire.credentials import ClientSecret
from graphcred.acquire.tokens import AcquisitionError, TokenClient
from graphcred.api.model import GraphAppCredentialSpec, Reason
from graphcred.app.config import RunConfig
from graphcred.app.leader import LeaseElector
from graphcred.app.wiring import api_client
from graphcred.kube.calls import Kube
from graphcred_testbed.pki import CertificateAuthority

from ..hostile import HostileAuthority


class HalfOpen:
    """A TCP server that accepts connections and never answers: a peer that vanished without a FIN/RST."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(conn)  # held open, never read from or written to

    def close(self) -> None:
        self._stop.set()
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def half_open() -> Iterator[HalfOpen]:
    server = HalfOpen()
    yield server
    server.close()


def _kubeconfig(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}], "current-context": "c"}))
    return path


@pytest.fixture
def api(tmp_path: Path, half_open: HalfOpen) -> client.ApiClient:
    """The operator's own API client (handlers.api_client), pointed at the half-open server."""
    return api_client(RunConfig(kubeconfig=str(_kubeconfig(tmp_path, half_open.port))))


def _within(seconds: float, call: Callable[[], Any]) -> tuple[BaseException | None, float]:
    """Run `call` in a thread; fail the test if it is still running after `seconds` (it would hang forever)."""
    pool = ThreadPoolExecutor(max_workers=1)
    started = time.monotonic()
    future = pool.submit(call)
    try:
        future.result(timeout=seconds)
        error: BaseException | None = None
    except FutureTimeout:
        pytest.fail(f"the call was still hanging on a half-open connection after {seconds:.0f} s")
    except Exception as exc:  # the error is the expected outcome
        error = exc
    finally:
        pool.shutdown(wait=False)
    return error, time.monotonic() - started


def test_a_kube_call_on_a_half_open_connection_fails_within_its_timeout(api: client.ApiClient) -> None:
    kube = Kube(api, timeout=(1.0, 1.0))
    error, took = _within(8, lambda: kube.read_secret("ns", "s"))
    assert error is not None, "a call that got no answer must fail, not return"
    assert took < 4, f"took {took:.1f} s with a 1 s read timeout"


def test_every_kube_call_has_a_timeout(api: client.ApiClient) -> None:
    kube = Kube(api, timeout=(0.5, 0.5))
    body = {"metadata": {"name": "s"}, "data": {}}
    calls: list[Callable[[], Any]] = [
        lambda: kube.read_secret("ns", "s"),
        lambda: kube.create_secret("ns", body),
        lambda: kube.patch_secret("ns", "s", {"metadata": {"resourceVersion": "1"}}),
        lambda: kube.delete_secret_unchanged("ns", "s", "uid", "1"),
        lambda: kube.patch_status("ns", "c", {"secretName": "s"}),
    ]
    for call in calls:
        error, _ = _within(8, call)
        assert error is not None


def test_the_default_timeouts_are_bounded() -> None:
    connect, read = Kube(client.ApiClient(client.Configuration())).timeout
    assert 0 < connect <= 10 and 0 < read <= 60


def test_a_lease_call_on_a_half_open_connection_fails_within_its_timeout(api: client.ApiClient) -> None:
    elector = LeaseElector(api, "ns", "lease", "me", lease_seconds=3.0)
    error, took = _within(8, elector.try_acquire_or_renew)
    assert error is not None
    assert took < 3, f"a Lease read took {took:.1f} s: longer than the Lease itself"


def test_a_leader_whose_renewals_hang_stops_before_its_lease_can_be_taken(api: client.ApiClient) -> None:
    lease = 3.0
    elector = LeaseElector(api, "ns", "lease", "me", lease_seconds=lease)
    lost = threading.Event()
    started = time.monotonic()
    elector.keep_renewing(lost.set)
    try:
        assert lost.wait(lease + 5), "a leader whose renewals hang never stopped acting"
        took = time.monotonic() - started
        # a standby takes the Lease `lease` seconds after it saw the last renewal (at `started` at the earliest)
        assert took < lease, f"stopped acting {took:.1f} s after the last renewal: the Lease lasts {lease:.0f} s"
    finally:
        elector._stop.set()


def test_the_operators_api_client_sets_tcp_keepalive(api: client.ApiClient, half_open: HalfOpen) -> None:
    # a connection as the client's pool makes it for every call
    pool = api.rest_client.pool_manager.connection_from_url(f"http://127.0.0.1:{half_open.port}")
    conn = pool._new_conn()
    conn.connect()
    try:
        assert conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert 0 < conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) <= 60
    finally:
        conn.close()


# --- token exchanges: one total deadline, however the authority drips --------------------------------------------

@pytest.fixture
def dripping(tmp_path: Path) -> Iterator[tuple[HostileAuthority, Path]]:
    ca = CertificateAuthority("dripping-authority-ca")
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    server = HostileAuthority(ca, drip=0.5).start()
    yield server, ca_file
    server.stop()


@pytest.mark.parametrize("tenant", ["drip.test", "dripheaders.test"])
def test_a_token_exchange_with_a_dripping_authority_ends_at_the_token_timeout(
        dripping: tuple[HostileAuthority, Path], tenant: str) -> None:
    """Review finding 2: a byte every 0.5 s never trips the 2 s read timeout, so the acquisition (and its token
    slot) was held without end (f3_tarpit_module.py: not ended after 45 s). Now the exchange ends at 2 s."""
    server, ca_file = dripping
    client = TokenClient(str(ca_file), timeout=(5.0, 2.0), authority_hosts=[server.base])
    spec = GraphAppCredentialSpec.model_validate({
        "tenantId": tenant, "clientId": "1b4f816e-5eaf-48b9-8613-7923830595ad", "authorityHost": server.base,
        "credential": {"clientSecret": {"name": "a"}}})
    error, took = _within(15, lambda: client.acquire(spec.identity(), spec.scopes, ClientSecret("x")))
    assert isinstance(error, AcquisitionError), repr(error)
    assert (error.reason, error.permanent) == (Reason.AUTHORITY_UNAVAILABLE, False)
    assert f"no complete answer from {server.base} within the 2 s token timeout" in error.message
    assert took < 4, f"took {took:.1f} s with a 2 s token timeout"
