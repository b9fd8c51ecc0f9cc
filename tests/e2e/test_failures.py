"""Failure paths on the real bed: each fault is visible (reason, event), safe (no token lost, no request storm)
and recovers as soon as its cause is fixed."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from kubernetes import client

from graphcred_testbed.bed import wait_for
from graphcred_testbed.pki import self_signed

from ..helpers import Env

pytestmark = pytest.mark.bed

QUIET_WINDOW = 5.0  # longer than the first backoff steps: a retry loop would show within it


def _warning_events(env: Env, name: str) -> list[str]:
    return [reason for kind, reason, _ in env.events(name) if kind == "Warning"]


def _assert_needs_user(env: Env, name: str, client_id: str, reason: str, fragment: str, requests: int, *,
                       slow_retry: bool = True) -> None:
    """Ready=False with a specific message and Event; retried slowly (about 5 minutes on), never parked and never
    hammered. A malformed spec (slow_retry=False) waits for a change of the spec itself."""
    obj = env.wait_condition(name, "False", reason)
    cond = obj["status"]["conditions"][0]
    assert fragment in cond["message"], cond["message"]
    wait_for(lambda: reason in _warning_events(env, name), timeout=10, what=f"Warning event {reason}")
    env.assert_stays(lambda: env.bed.issuer.token_requests(client_id) == requests, QUIET_WINDOW,
                     "no quick retries against the token endpoint for a failure that needs the user")
    assert env.secret(f"{name}-token") is None
    status = env.get(name)["status"]
    if slow_retry:
        next_try = dt.datetime.strptime(status["refreshAt"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        wait = (next_try - dt.datetime.now(dt.UTC)).total_seconds()
        assert 200 < wait < 400, f"the next attempt is {wait:.0f} s away: not the slow retry schedule"
    else:
        assert "refreshAt" not in status


@pytest.mark.parametrize("case", ["wrong-secret", "unknown-app", "unknown-tenant"])
def test_entra_refusals_need_the_user_and_are_retried_slowly(env: Env, case: str) -> None:
    app = env.register_app(secret="the-right-one")
    env.client_secret("cred", "the-wrong-one" if case == "wrong-secret" else "the-right-one")
    spec: dict[str, Any] = {}
    if case == "unknown-app":
        spec["clientId"] = "00000000-0000-0000-0000-00000000dead"
    if case == "unknown-tenant":
        spec["tenantId"] = "00000000-0000-0000-0000-0000000beef0"
    manifest = env.manifest("refused", app, {"clientSecret": {"name": "cred"}})
    manifest["spec"].update(spec)
    env.bed.custom.create_namespaced_custom_object("graphcred.io", "v1alpha1", env.namespace,
                                                   "graphappcredentials", manifest)
    expected = {"wrong-secret": ("AADSTS7000215", app.client_id, 1),
                "unknown-app": ("AADSTS700016", spec.get("clientId", ""), 1),
                "unknown-tenant": ("AADSTS90002", app.client_id, 0)}[case]  # refused at discovery, before any POST
    _assert_needs_user(env, "refused", expected[1], "Unauthorized", expected[0], expected[2])


def test_unregistered_certificate_is_unauthorized(env: Env) -> None:
    registered, other = self_signed("registered"), self_signed("other")
    app = env.register_app(certificate=registered.cert)
    env.tls_secret("cert", other)
    env.create("cert", app, {"certificate": {"name": "cert"}})
    _assert_needs_user(env, "cert", app.client_id, "Unauthorized", "AADSTS700027", 1)


def _tls_data(cert_pem: bytes, key_pem: bytes) -> dict[str, str]:
    return {"tls.crt": cert_pem.decode(), "tls.key": key_pem.decode()}


def _oversized() -> tuple[bytes, bytes]:
    """A certificate and key of 4608 bits: more than Entra accepts (4096), costly to validate (issue 24)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=4608)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "big")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=9))
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


@pytest.mark.parametrize("case", ["missing-secret", "missing-key", "malformed-pem", "mismatched-key",
                                  "expired-certificate", "oversized-key", "long-chain"])
def test_credential_problems_are_reported_without_calling_entra(env: Env, case: str) -> None:
    pair, other = self_signed("a"), self_signed("b")
    app = env.register_app(certificate=pair.cert, secret="pw")
    now = dt.datetime.now(dt.UTC)
    expired = self_signed("old", not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1))
    credential: dict[str, Any] = {"certificate": {"name": "cert"}}
    data = {
        "missing-key": {"tls.crt": pair.cert_pem.decode()},
        "malformed-pem": _tls_data(b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
                                   pair.key_pem),
        "mismatched-key": _tls_data(pair.cert_pem, other.key_pem),
        "expired-certificate": _tls_data(expired.cert_pem, expired.key_pem),
        "oversized-key": _tls_data(*_oversized()) if case == "oversized-key" else None,
        # the registered certificate, repeated: a chain is the leaf and its intermediates, at most 10
        "long-chain": _tls_data(pair.cert_pem * 11, pair.key_pem),
    }.get(case)
    if data is not None:
        env.bed.core.create_namespaced_secret(env.namespace, client.V1Secret(
            metadata=client.V1ObjectMeta(name="cert"), string_data=data))
    reason, fragment = {
        "missing-secret": ("CredentialNotFound", "Secret cert not found"),
        "missing-key": ("CredentialNotFound", "has no key 'tls.key'"),
        "malformed-pem": ("InvalidCredential", "is not a PEM certificate"),
        "mismatched-key": ("InvalidCredential", "does not match"),
        "expired-certificate": ("InvalidCredential", "certificate expired"),
        "oversized-key": ("InvalidCredential", "the key is 4608 bits; Entra accepts RSA keys of 2048 to 4096 bits"),
        "long-chain": ("InvalidCredential", "at most 10 certificates"),
    }[case]
    env.create("bad", app, credential)
    _assert_needs_user(env, "bad", app.client_id, reason, fragment, 0)
    message = env.ready_condition("bad")["message"]  # type: ignore[index]
    assert "PRIVATE KEY" not in message


def test_workload_identity_without_the_flag_is_reported_disabled(env: Env) -> None:
    # the shared operator runs without --workload-identity: refused, naming how to enable it, waiting for a change
    app = env.register_app(secret="pw")
    env.create("wi", app, {"workloadIdentity": {"serviceAccountName": "default"}})
    _assert_needs_user(env, "wi", app.client_id, "WorkloadIdentityDisabled", "workloadIdentity.enabled=true", 0,
                       slow_retry=False)


def test_a_failing_credential_recovers_as_soon_as_its_secret_is_fixed(env: Env) -> None:
    app = env.register_app(secret="correct")
    env.client_secret("fixme", "typo")
    env.create("fixme", app, {"clientSecret": {"name": "fixme"}})
    env.wait_condition("fixme", "False", "Unauthorized")
    env.bed.core.patch_namespaced_secret("fixme", env.namespace, {"stringData": {"clientSecret": env.sv("correct")}})
    env.wait_ready("fixme", timeout=5)
    assert env.bed.issuer.token_requests(app.client_id) == 2
    # Events are posted from a queue after the status write (graphcred/kube/events.py)
    wait_for(lambda: ("Normal", "TokenIssued") in [(t, r) for t, r, _ in env.events("fixme")], timeout=10,
             what="the TokenIssued Event")


def test_missing_secret_created_later_is_picked_up(env: Env) -> None:
    app = env.register_app(secret="later")
    env.create("later", app, {"clientSecret": {"name": "later"}})
    env.wait_condition("later", "False", "CredentialNotFound")
    env.client_secret("later", "later")
    env.wait_ready("later", timeout=5)


def test_rotated_client_secret_is_used_within_seconds(env: Env) -> None:
    app = env.secret_app("old-secret", secret_name="rotate", lifetime=3600)
    env.create("rotate", app, {"clientSecret": {"name": "rotate"}})
    env.wait_ready("rotate")
    first = env.token("rotate-token")
    # Rotation as done in Entra: add the new secret, switch the Secret, remove the old one.
    app.secrets.append(env.sv("new-secret"))
    env.bed.core.patch_namespaced_secret("rotate", env.namespace,
                                         {"stringData": {"clientSecret": env.sv("new-secret")}})
    wait_for(lambda: env.token("rotate-token") != first, timeout=5, what="a token acquired with the new secret")
    app.secrets.remove(env.sv("old-secret"))
    assert env.bed.issuer.token_requests(app.client_id) == 2
    version = env.secret("rotate").metadata.resource_version  # type: ignore[union-attr]
    # the status is patched just after the token Secret is written: waited for, not read at once
    status = env.wait_status("rotate", {"credentialVersion": version})["status"]
    assert status["lastRefreshReason"] == "credential Secret changed"
    wait_for(lambda: any(r == "TokenIssued" and m.endswith("(refreshed: credential Secret changed)")
                         for _, r, m in env.events("rotate")), timeout=10, what="the TokenIssued Event saying why")


def test_rotated_certificate_is_used_within_seconds(env: Env) -> None:
    old, new = self_signed("old"), self_signed("new")
    app = env.register_app(certificate=old.cert)
    env.tls_secret("rotate-cert", old)
    env.create("rc", app, {"certificate": {"name": "rotate-cert"}})
    env.wait_ready("rc")
    app.certificates = [new.cert]  # the old certificate is removed from the app: only the new one works
    env.bed.core.patch_namespaced_secret("rotate-cert", env.namespace,
                                         {"stringData": _tls_data(new.cert_pem, new.key_pem)})
    wait_for(lambda: env.bed.issuer.token_requests(app.client_id) == 2, timeout=5, what="re-acquisition")
    env.wait_ready("rc")


def test_deleted_token_secret_is_written_again(env: Env) -> None:
    app = env.secret_app("pw", secret_name="cred")
    env.create("again", app, {"clientSecret": {"name": "cred"}})
    env.wait_ready("again")
    env.bed.core.delete_namespaced_secret("again-token", env.namespace)
    wait_for(lambda: env.token("again-token") is not None, timeout=5, what="the token Secret to be re-created")


def test_two_credentials_cannot_fight_over_one_secret(env: Env) -> None:
    app = env.secret_app("pw", secret_name="cred")
    env.create("first", app, {"clientSecret": {"name": "cred"}}, secretName="shared")
    env.wait_ready("first")
    env.create("second", app, {"clientSecret": {"name": "cred"}}, secretName="shared")
    env.wait_condition("second", "False", "SecretConflict")
    owner = env.secret("shared").metadata.owner_references[0]  # type: ignore[union-attr]
    assert owner.name == "first"
    env.assert_stays(lambda: env.bed.issuer.token_requests(app.client_id) == 1, QUIET_WINDOW,
                     "the loser does not keep acquiring tokens")
    # When the winner goes, its Secret is collected and the other may take the name.
    env.delete("first")
    env.wait_ready("second", timeout=30)
    assert env.secret("shared").metadata.owner_references[0].name == "second"  # type: ignore[union-attr]


# --- transient faults -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("fault", "reason"), [
    ({"status": 503}, "AuthorityUnavailable"),
    ({"status": 500}, "AuthorityUnavailable"),
    ({"drop": True}, "AuthorityUnavailable"),
    ({"delay": 5.0}, "AuthorityUnavailable"),  # longer than the operator's --token-timeout=3
    ({"status": 429, "retry_after": 2}, "Throttled"),
])
def test_transient_faults_back_off_and_recover(env: Env, fault: dict[str, Any], reason: str) -> None:
    app = env.secret_app("pw", secret_name="cred")
    env.bed.issuer.fail(app.client_id, **fault)
    env.create("flaky", app, {"clientSecret": {"name": "cred"}})
    obj = env.wait_condition("flaky", "False", reason)
    # Events go out from a queue behind the status write (seen late under load in make test)
    wait_for(lambda: reason in _warning_events(env, "flaky"), timeout=10, what=f"Warning event {reason}")
    wait_for(lambda: env.get("flaky")["status"]["consecutiveFailures"] >= 3, timeout=30,
             what="backed-off retries")
    failures = env.get("flaky")["status"]["consecutiveFailures"]
    requests = env.bed.issuer.token_requests(app.client_id)
    assert requests <= failures + 1, "one request per attempt, no retry storm"
    assert obj["status"].get("refreshAt"), "the next attempt is announced"
    env.bed.issuer.heal(app.client_id)
    env.wait_ready("flaky", timeout=30)
    assert env.get("flaky")["status"]["consecutiveFailures"] == 0


def test_retry_after_is_honoured(env: Env) -> None:
    app = env.secret_app("pw", secret_name="cred")
    env.bed.issuer.fail(app.client_id, status=429, retry_after=4)
    env.create("throttled", app, {"clientSecret": {"name": "cred"}})
    env.wait_condition("throttled", "False", "Throttled")
    # with Retry-After: 4, at most 3 requests can fit in 9 seconds (t=0, >=4, >=8)
    env.assert_stays(lambda: env.bed.issuer.token_requests(app.client_id) <= 3, 9.0, "Retry-After honoured")


def test_outage_longer_than_a_token_lifetime_keeps_the_last_token(env: Env) -> None:
    app = env.secret_app("pw", secret_name="cred", lifetime=12)
    env.create("outage", app, {"clientSecret": {"name": "cred"}})
    env.wait_ready("outage")
    token = env.token("outage-token")
    env.bed.issuer.fail(app.client_id, status=503)
    # refresh fails while the token is valid: Ready stays True, the reason shows the problem
    obj = env.wait_condition("outage", "True", "AuthorityUnavailable", timeout=20)
    assert "stays valid until" in obj["status"]["conditions"][0]["message"]
    assert env.token("outage-token") == token
    # past expiry: Ready=False; the Secret is never blanked
    env.wait_condition("outage", "False", "AuthorityUnavailable", timeout=30)
    secret = env.secret("outage-token")
    assert secret is not None and base64.b64decode(secret.data["access_token"]).decode() == token
    failures = env.get("outage")["status"]["consecutiveFailures"]
    assert env.bed.issuer.token_requests(app.client_id) <= failures + 1
    env.bed.issuer.heal(app.client_id)
    env.wait_ready("outage", timeout=40)
    assert env.token("outage-token") != token
