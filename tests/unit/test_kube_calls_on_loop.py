"""KubeCalls sends a pass's call to the coroutine made for it on the loop (`LoopKube`'s, by the method's name), and
every other call to the threads: the methods of another object of the same class too."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from graphcred.reconcile.calls import KubeCalls


class Calls:
    def read_secret(self, namespace: str, name: str) -> str:
        return f"thread {threading.get_ident()}"

    def read_service_account(self, namespace: str, name: str) -> str:
        return f"thread {threading.get_ident()}"


def test_the_calls_with_a_coroutine_run_on_the_loop_and_the_others_in_threads() -> None:
    kube, other = Calls(), Calls()

    async def on_loop(namespace: str, name: str) -> Any:
        return f"loop {threading.get_ident()}:{namespace}/{name}"

    async def scenario() -> None:
        here = threading.get_ident()
        calls = KubeCalls(kube, on_loop={"read_secret": on_loop})  # type: ignore[arg-type]
        assert await calls("read Secret", kube.read_secret, "ns", "s") == f"loop {here}:ns/s"
        assert await calls("read ServiceAccount", kube.read_service_account, "ns", "sa") != f"thread {here}"
        assert await calls("read Secret", other.read_secret, "ns", "s") != f"thread {here}", "another Kube's"
        plain = KubeCalls(kube)  # type: ignore[arg-type]
        assert (await plain("read Secret", kube.read_secret, "ns", "s")).startswith("thread ")
        assert await plain("read Secret", kube.read_secret, "ns", "s") != f"thread {here}"

    asyncio.run(scenario())


def _ca_pem() -> bytes:
    """A self-signed CA certificate, PEM (what a cluster's ca.crt holds)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def test_a_ca_file_rotated_in_place_is_used_by_the_next_connections(tmp_path: Any, monkeypatch: Any) -> None:
    """urllib3 reads the CA file for each new connection; LoopKube makes a new session (a new TLS context) once it
    sees the file replaced, and closes the old one after the calls on it had their time."""
    from kubernetes import client

    from graphcred.kube import loopcalls
    from graphcred.kube.calls import Kube

    ca = tmp_path / "ca.crt"
    ca.write_bytes(_ca_pem())
    conf = client.Configuration()
    conf.host, conf.ssl_ca_cert = "https://127.0.0.1:1", str(ca)
    monkeypatch.setattr(loopcalls, "TLS_CHECK", 0.0)  # look at the files at every call

    async def scenario() -> None:
        on_loop = loopcalls.LoopKube(Kube(client.ApiClient(conf)), limit=2)
        first = on_loop._client()
        assert on_loop._client() is first, "unchanged files: the same session"
        (tmp_path / "new.crt").write_bytes(_ca_pem())
        (tmp_path / "new.crt").replace(ca)  # as the kubelet updates a projected file: a new inode
        second = on_loop._client()
        assert second is not first and not first.closed, "the calls already on the old session go on"
        assert list(on_loop._retiring.values()) == [first]
        await on_loop.close()
        assert first.closed and second.closed, "the stop closes both"

    asyncio.run(scenario())
