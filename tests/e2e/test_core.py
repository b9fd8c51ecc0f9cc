"""The happy path, end to end: a GraphAppCredential becomes a fresh token Secret on the real bed."""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import time

import pytest
from kubernetes import client

from graphcred_testbed.bed import wait_for
from graphcred_testbed.pki import CertificateAuthority, self_signed

from ..helpers import GRAPH, Env

pytestmark = [pytest.mark.bed, pytest.mark.compat]  # make test-compat runs it all


def _assert_token_secret(env: Env, name: str, secret_name: str, *, roles: list[str], client_id: str) -> None:
    obj = env.get(name)
    secret = env.secret(secret_name)
    assert secret is not None
    data = {k: base64.b64decode(v).decode() for k, v in secret.data.items()}
    assert set(data) == {"access_token", "token_type", "expires_on", "authorization"}
    assert data["token_type"] == "Bearer"
    assert data["authorization"] == f"Bearer {data['access_token']}"
    claims = env.verified_claims(data["access_token"])
    assert claims["aud"] == GRAPH
    assert claims["appid"] == client_id
    assert claims.get("roles", []) == roles
    expiry = dt.datetime.fromtimestamp(claims["exp"], dt.UTC)
    # DESIGN §2: expiry annotation and key in RFC 3339 UTC, never later than the token's own exp
    stored = dt.datetime.strptime(data["expires_on"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    assert secret.metadata.annotations["graphcred.io/expires-on"] == data["expires_on"]
    assert expiry - dt.timedelta(seconds=5) <= stored <= expiry
    assert secret.metadata.annotations["graphcred.io/credential"] == name
    assert secret.metadata.labels["app.kubernetes.io/managed-by"] == "graphcred"
    [ref] = secret.metadata.owner_references
    assert (ref.kind, ref.name, ref.uid, ref.controller) == ("GraphAppCredential", name, obj["metadata"]["uid"],
                                                             True)
    status = obj["status"]
    assert status["secretName"] == secret_name
    assert status["expiresOn"] == data["expires_on"]
    assert status["appId"] == client_id and status["audience"] == GRAPH
    assert status["roles"] == roles
    assert status["conditions"][0]["observedGeneration"] == obj["metadata"]["generation"]
    # the status never holds the token
    assert data["access_token"] not in str(obj)


def test_client_secret_credential_yields_a_verified_token_secret(env: Env) -> None:
    app = env.secret_app("app-secret-1", secret_name="mail-app", roles=["Mail.Read", "User.Read.All"])
    env.create("mail", app, {"clientSecret": {"name": "mail-app"}})
    env.wait_ready("mail")
    _assert_token_secret(env, "mail", "mail-token", roles=["Mail.Read", "User.Read.All"], client_id=app.client_id)
    out = env.bed.kubectl("get", "gac", "mail", "-n", env.namespace).stdout
    header, row = out.splitlines()
    assert header.split() == ["NAME", "READY", "REASON", "EXPIRES", "SECRET", "AGE"]
    assert row.split()[:3] == ["mail", "True", "TokenIssued"]
    assert row.split()[3] == env.get("mail")["status"]["expiresOn"]
    # Events are posted from a queue after the status is written: wait, do not race the poster
    wait_for(lambda: ("Normal", "TokenIssued") in [(t, r) for t, r, _ in env.events("mail")], timeout=10,
             what="the TokenIssued Event")
    assert env.bed.issuer.token_requests(app.client_id) == 1
    # why the token was requested: in the status and the Event
    assert env.get("mail")["status"]["lastRefreshReason"] == "first token"
    assert next(m for _, r, m in env.events("mail") if r == "TokenIssued").endswith(" (first token)")


def test_certificate_credential_yields_a_token_secret(env: Env) -> None:
    pair = self_signed("graphcred-e2e")
    app = env.register_app(certificate=pair.cert, roles=["Sites.Read.All"])
    env.tls_secret("app-cert", pair)
    env.create("sites", app, {"certificate": {"name": "app-cert"}}, secretName="sites-bearer")
    env.wait_ready("sites")
    _assert_token_secret(env, "sites", "sites-bearer", roles=["Sites.Read.All"], client_id=app.client_id)


def test_certificate_with_x5c_for_subject_name_issuer_auth(env: Env) -> None:
    ca = CertificateAuthority("e2e-sni-ca")
    leaf = ca.issue("daemon.contoso.test", client=True)
    app = env.register_app(trusted_subject=("daemon.contoso.test", ca.pair.cert), roles=["Mail.Send"])
    env.tls_secret("sni-cert", leaf)
    # without x5c the issuer cannot tie the unregistered certificate to the trusted subject
    env.create("sni-off", app, {"certificate": {"name": "sni-cert"}}, secretName="sni-off-token")
    cond = env.wait_condition("sni-off", "False", "Unauthorized")
    assert "AADSTS700027" in env.ready_condition("sni-off")["message"]  # type: ignore[index]
    assert cond["status"]["consecutiveFailures"] == 1
    env.create("sni", app, {"certificate": {"name": "sni-cert", "sendX5c": True}})
    env.wait_ready("sni")
    _assert_token_secret(env, "sni", "sni-token", roles=["Mail.Send"], client_id=app.client_id)


def test_refreshes_at_half_life_with_one_request_per_refresh(env: Env) -> None:
    app = env.secret_app("short-lived", secret_name="short", lifetime=20)
    env.create("short", app, {"clientSecret": {"name": "short"}})
    env.wait_ready("short")
    seen: list[tuple[str, float]] = []  # (token, first seen at)

    def four_tokens() -> bool:
        token = env.token("short-token")
        if token and (not seen or seen[-1][0] != token):
            seen.append((token, time.time()))
        return len(seen) >= 4

    wait_for(four_tokens, timeout=60, interval=0.2, what="three refreshes of a 20 s token")
    requests_made = env.bed.issuer.token_requests(app.client_id)
    assert len({t for t, _ in seen}) == 4, "every refresh writes a new token"
    for (previous, _), (_, replaced_at) in itertools.pairwise(seen):
        exp = env.verified_claims(previous)["exp"]
        assert replaced_at < exp - 5, "a token is replaced well before it expires"
    # one token request per token written: the initial one plus one per refresh
    assert requests_made in (len(seen), len(seen) + 1)  # +1: a refresh may be in flight at the last read
    status = env.get("short")["status"]
    assert status["consecutiveFailures"] == 0
    assert status["lastRefreshReason"] == "half-life reached"


def test_deleting_the_credential_deletes_its_secret(env: Env) -> None:
    app = env.secret_app("gc-me", secret_name="gc")
    env.create("gc", app, {"clientSecret": {"name": "gc"}})
    env.wait_ready("gc")
    assert env.secret("gc-token") is not None
    env.delete("gc")
    wait_for(lambda: env.secret("gc-token") is None, timeout=30, what="garbage collection of gc-token")
    assert env.secret("gc") is not None, "the user's credential Secret is left alone"


def test_required_roles_gate_ready_until_consent_is_granted(env: Env) -> None:
    app = env.secret_app("consent", secret_name="consent", roles=["User.Read.All"])
    env.create("consent", app, {"clientSecret": {"name": "consent"}}, requiredRoles=["Mail.Read", "User.Read.All"])
    obj = env.wait_condition("consent", "False", "MissingRoles")
    message = obj["status"]["conditions"][0]["message"]
    assert "Mail.Read" in message and "User.Read.All" not in message
    wait_for(lambda: ("Warning", "MissingRoles") in [(t, r) for t, r, _ in env.events("consent")], timeout=10,
             what="the MissingRoles Event (posted from a queue after the status)")
    # An admin grants the permission and consents: the next token carries the role.
    app.roles[GRAPH] = ["User.Read.All", "Mail.Read"]
    obj = env.wait_ready("consent", timeout=60)
    assert sorted(obj["status"]["roles"]) == ["Mail.Read", "User.Read.All"]


def test_changing_scopes_reacquires_within_seconds(env: Env) -> None:
    app = env.secret_app("scopes", secret_name="scopes")
    env.create("scopes", app, {"clientSecret": {"name": "scopes"}})
    env.wait_ready("scopes")
    before = env.bed.issuer.token_requests(app.client_id)
    env.patch_spec("scopes", {"scopes": ["https://vault.azure.net/.default"]})

    def vault_token() -> bool:
        token = env.token("scopes-token")
        return token is not None and env.verified_claims(token)["aud"] == "https://vault.azure.net"

    wait_for(vault_token, timeout=10, what="a Key Vault token after the scope change")
    # the status is patched just after the token Secret is written: waited for, not read at once
    obj = env.wait_status("scopes", {"observedGeneration": 2, "audience": "https://vault.azure.net"})
    assert obj["metadata"]["generation"] == 2
    assert env.bed.issuer.token_requests(app.client_id) == before + 1
    assert obj["status"]["lastRefreshReason"] == "spec changed"
    wait_for(lambda: any(r == "TokenIssued" and m.endswith("(refreshed: spec changed)")
                         for _, r, m in env.events("scopes")), timeout=10, what="the TokenIssued Event saying why")


def test_existing_foreign_secret_is_never_overwritten(env: Env) -> None:
    app = env.secret_app("conflict", secret_name="conflict")
    env.bed.core.create_namespaced_secret(env.namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="taken"), string_data={"access_token": "someone-elses"}))
    env.create("conflict", app, {"clientSecret": {"name": "conflict"}}, secretName="taken")
    env.wait_condition("conflict", "False", "SecretConflict")
    secret = env.secret("taken")
    assert secret is not None and not secret.metadata.owner_references
    assert base64.b64decode(secret.data["access_token"]).decode() == "someone-elses"
    assert env.bed.issuer.token_requests(app.client_id) == 0


def test_restarted_operator_resumes_without_reacquiring(env: Env) -> None:
    app = env.secret_app("resume", secret_name="resume", lifetime=3600)
    env.create("resume", app, {"clientSecret": {"name": "resume"}})
    env.wait_ready("resume")
    token = env.token("resume-token")
    env.operator.stop()
    env.operator.start()
    # A credential created after the restart proves the new process is watching and acting.
    env.client_secret("after", "resume")
    env.create("after", app, {"clientSecret": {"name": "after"}})
    env.wait_ready("after")
    assert env.token("resume-token") == token
    assert env.bed.issuer.token_requests(app.client_id) == 2  # "resume" once, "after" once


def test_identical_credentials_share_one_token_request(env: Env) -> None:
    app = env.secret_app("shared", secret_name="cred", lifetime=20)
    names = ["s1", "s2", "s3"]
    for name in names:
        env.create(name, app, {"clientSecret": {"name": "cred"}})
    env.create("vault", app, {"clientSecret": {"name": "cred"}}, scopes=["https://vault.azure.net/.default"])
    for name in [*names, "vault"]:
        env.wait_ready(name)
    first = {env.token(f"{n}-token") for n in names}
    assert len(first) == 1, "same app, secret and scopes: one token"
    assert env.token("vault-token") not in first, "other scopes: a token of its own"
    assert env.bed.issuer.token_requests(app.client_id) == 2
    # at the next refresh they again share one request, and each Secret gets a new token
    wait_for(lambda: all(env.token(f"{n}-token") not in first for n in names), timeout=30,
             what="the shared refresh")
    assert len({env.token(f"{n}-token") for n in names}) == 1
    assert env.bed.issuer.token_requests(app.client_id) in (3, 4)  # one shared refresh (+ vault's own)
