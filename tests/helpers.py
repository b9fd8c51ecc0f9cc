"""Helpers for end-to-end tests: register apps, create Secrets and GraphAppCredentials, wait for conditions."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from kubernetes import client

from graphcred.api.keys import GROUP, PLURAL, RENEW_ANNOTATION, VERSION
from graphcred_testbed import jose
from graphcred_testbed.bed import Bed, wait_for
from graphcred_testbed.graph import GraphApi
from graphcred_testbed.issuer import App, IssuerServer
from graphcred_testbed.operator_process import OperatorProcess
from graphcred_testbed.pki import CertificateAuthority, KeyPair

GRAPH = "https://graph.microsoft.com"


@contextlib.contextmanager
def issuer_and_graph(directory: Path) -> Iterator[tuple[IssuerServer, GraphApi, Path]]:
    """A private token issuer and Graph API (no control plane) served with one new CA, whose file is written to
    `directory`: (issuer, Graph API, CA file)."""
    ca = CertificateAuthority()
    ca_file = directory / "ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    issuer = IssuerServer(ca).start()
    try:
        api = GraphApi(ca, issuer.base_url, ca_file, directory=issuer.issuer).start()
        try:
            yield issuer, api, ca_file
        finally:
            api.stop()
    finally:
        issuer.stop()


@dataclass
class Env:
    bed: Bed
    namespace: str
    operator: OperatorProcess
    _values: dict[str, str] = field(default_factory=dict)

    def sv(self, plain: str) -> str:
        """The distinctive secret value used for `plain` in this test, so the leak scanner can find it anywhere."""
        return self._values.setdefault(plain, f"{plain}~{uuid.uuid4().hex[:16]}")

    # --- setup ------------------------------------------------------------------------------------------------
    def register_app(self, *, secret: str | None = None, certificate: Any = None,
                     roles: list[str] | None = None, lifetime: int = 3599, **kwargs: Any) -> App:
        tenant = str(uuid.uuid4())
        return self.bed.issuer.register_app(tenant, secret=self.sv(secret) if secret else None, certificate=certificate,
                                            roles={GRAPH: roles} if roles else {}, lifetime=lifetime, **kwargs)

    def secret_app(self, secret: str, *, secret_name: str = "cred", **app_kwargs: Any) -> App:
        """An app registered with a client secret, and that secret in a Secret of the test's namespace."""
        app = self.register_app(secret=secret, **app_kwargs)
        self.client_secret(secret_name, secret)
        return app

    def client_secret(self, name: str, value: str, key: str = "clientSecret") -> None:
        self.bed.core.create_namespaced_secret(self.namespace, client.V1Secret(
            metadata=client.V1ObjectMeta(name=name), string_data={key: self.sv(value)}))

    def tls_secret(self, name: str, pair: KeyPair) -> None:
        self.bed.core.create_namespaced_secret(self.namespace, client.V1Secret(
            metadata=client.V1ObjectMeta(name=name), type="kubernetes.io/tls",
            string_data={"tls.crt": pair.cert_pem.decode(), "tls.key": pair.key_pem.decode()}))

    def manifest(self, name: str, app: App, credential: dict[str, Any], **spec: Any) -> dict[str, Any]:
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GraphAppCredential", "metadata": {"name": name},
                "spec": {"tenantId": app.tenant_id, "clientId": app.client_id,
                         "authorityHost": self.bed.authority_host, "credential": credential, **spec}}

    def create(self, name: str, app: App, credential: dict[str, Any], **spec: Any) -> dict[str, Any]:
        obj: dict[str, Any] = self.bed.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.manifest(name, app, credential, **spec))
        return obj

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.bed.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name,
                                                       {"spec": spec})

    def delete(self, name: str) -> None:
        self.bed.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def renew(self, name: str) -> str:
        """A new token at once (what `graphcred renew` does); returns the lastRefreshTime of the token answering it.
        A token is known by its lastRefreshTime, to the second (restart targets count on it): the renew is sent
        once the second of the previous token has passed."""
        before = (self.get(name).get("status") or {}).get("lastRefreshTime")
        if before:
            issued = dt.datetime.fromisoformat(before.replace("Z", "+00:00"))
            wait_for(lambda: dt.datetime.now(dt.UTC) >= issued + dt.timedelta(seconds=1), timeout=5,
                     what="the next second")
        value = f"renew-{time.time()}"
        self.bed.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, {
            "metadata": {"annotations": {RENEW_ANNOTATION: value}}})

        def answered() -> str | None:
            status = self.get(name).get("status") or {}
            if status.get("lastRenewRequest") == value and status.get("lastRefreshTime") != before:
                return str(status["lastRefreshTime"])
            return None

        return str(wait_for(answered, timeout=30, what="the renew answered with a new token"))

    # --- reading ----------------------------------------------------------------------------------------------
    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.bed.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                                           PLURAL, name)
        return obj

    def ready_condition(self, name: str) -> dict[str, Any] | None:
        for cond in self.get(name).get("status", {}).get("conditions", []):
            if cond["type"] == "Ready":
                return dict(cond)
        return None

    def wait_condition(self, name: str, status: str, reason: str, timeout: float = 30) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            cond = self.ready_condition(name)
            ok = cond is not None and cond["status"] == status and cond["reason"] == reason
            return self.get(name) if ok else None

        try:
            return wait_for(probe, timeout=timeout, what=f"{name} Ready={status}/{reason}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; condition now: {self.ready_condition(name)}") from None

    def wait_ready(self, name: str, timeout: float = 30) -> dict[str, Any]:
        return self.wait_condition(name, "True", "TokenIssued", timeout)

    def wait_watching(self, timeout: float = 90) -> None:
        """The operator sees new credentials and changed Secrets again: a credential naming a Secret not there yet,
        then the Secret. (After an apiserver restart, its watches reconnect with a backoff of up to 30 s.)"""
        name = f"probe-{uuid.uuid4().hex[:8]}"
        probe = Env(self.bed, name, self.operator, self._values)  # a namespace of its own: the test's stays empty
        self.bed.create_namespace(name)
        try:
            app = probe.register_app(secret=name)
            probe.create(name, app, {"clientSecret": {"name": name}})
            probe.wait_condition(name, "False", "CredentialNotFound", timeout)
            probe.client_secret(name, name)
            probe.wait_ready(name, timeout)
        finally:
            self.bed.delete_namespace(name)

    def wait_status(self, name: str, wanted: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        """The object once its status holds `wanted` and it is Ready. For what a pass patches after it wrote the
        token Secret: a test that saw the Secret may read the status before that patch."""
        def probe() -> dict[str, Any] | None:
            obj = self.get(name)
            status = obj.get("status") or {}
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
            return obj if ready and all(status.get(k) == v for k, v in wanted.items()) else None

        try:
            return wait_for(probe, timeout=timeout, what=f"{name}'s status with {wanted}")
        except TimeoutError as exc:
            status = self.get(name).get("status") or {}
            raise TimeoutError(f"{exc}; now: {({k: status.get(k) for k in wanted})}") from None

    def secret(self, name: str) -> client.V1Secret | None:
        try:
            return self.bed.core.read_namespaced_secret(name, self.namespace)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def token(self, secret_name: str) -> str | None:
        secret = self.secret(secret_name)
        if secret is None or not secret.data or "access_token" not in secret.data:
            return None
        return base64.b64decode(secret.data["access_token"]).decode()

    def events(self, name: str) -> list[tuple[str, str, str]]:
        events = self.bed.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}").items
        return [(e.type, e.reason, e.message or "") for e in events]

    def assert_stays(self, probe: Any, seconds: float, what: str) -> None:
        """Assert `probe()` holds at every check for `seconds` (for "nothing happens" properties)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert probe(), what
            time.sleep(0.2)

    def verified_claims(self, token: str) -> dict[str, Any]:
        """Verify as a resource server would: signature against the issuer's published JWKS."""
        header, claims, signing_input, signature = jose.parse(token)
        config = requests.get(f"{self.bed.authority_host}/{claims['tid']}/v2.0/.well-known/openid-configuration",
                              verify=str(self.bed.issuer_ca_file), timeout=10).json()
        keys = requests.get(config["jwks_uri"], verify=str(self.bed.issuer_ca_file), timeout=10).json()["keys"]
        key = next(k for k in keys if k["kid"] == header["kid"])
        assert jose.verify_signature("RS256", jose.public_key_from_jwk(key), signing_input, signature)
        assert claims["iss"] == config["issuer"]
        return claims


@dataclass
class Leaks:
    """What a leak scan found, each value named by a prefix only (the scan's report must not leak it again)."""

    tokens: list[str]
    secrets: list[str]
    assertions: list[str]
    private_key: bool


def find_leaks(corpus: str, *, tokens: list[str], secrets: set[str], assertions: list[str]) -> Leaks:
    """Which access tokens, client secrets (the tests' distinctive `Env.sv` values) and ServiceAccount tokens
    presented to the issuer appear in `corpus`, whole or by their signature alone; and whether a private key does."""
    def signed(jwt: str) -> bool:
        return jwt in corpus or jwt.split(".")[2] in corpus

    return Leaks(tokens=[t[:12] + "..." for t in tokens if signed(t)],
                 secrets=[s.split("~")[0] + "~..." for s in secrets if s in corpus],
                 assertions=[a[:12] + "..." for a in assertions if signed(a)],
                 private_key="PRIVATE KEY" in corpus)


def lease_holder(env: Env, name: str = "graphcred-leader") -> str | None:
    """The identity holding the leader-election Lease in the test's namespace, if any."""
    try:
        lease = client.CoordinationV1Api(env.bed.api).read_namespaced_lease(name, env.namespace)
    except client.ApiException:
        return None
    holder: str | None = lease.spec.holder_identity
    return holder


@dataclass
class Replicas:
    leader_id: str
    leader: OperatorProcess
    standby: OperatorProcess


@contextlib.contextmanager
def two_replicas(env: Env, logdir: Path, name: str, *args: str) -> Iterator[Replicas]:
    """Two operators electing a leader in the test's namespace, instead of the session's operator (which would be
    a third actor); yields once one holds the Lease. Stops both and restarts the session's operator afterwards."""
    env.operator.stop()
    argv = ("--leader-election", f"--leader-election-namespace={env.namespace}", *args)
    replicas = [OperatorProcess(env.bed, logdir, *argv, name=f"{name}-{i}", log_format="json") for i in range(2)]
    try:
        for r in replicas:
            r.start()
        leader_id = wait_for(lambda: lease_holder(env), timeout=30, what="a leader")
        leader = next(r for r in replicas if str(r.process.popen.pid) in leader_id)  # type: ignore[union-attr]
        yield Replicas(leader_id, leader, next(r for r in replicas if r is not leader))
    finally:
        for r in replicas:
            r.stop()
        env.operator.start()


def helm_env(home: Path, bed: Bed) -> dict[str, str]:
    """helm against the bed's apiserver, with a home of its own (helm's directories, client-go's discovery cache)."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "KUBECONFIG": str(bed.kubeconfig),
            **{f"HELM_{d}_HOME": str(home / d.lower()) for d in ("CONFIG", "CACHE", "DATA")}}
