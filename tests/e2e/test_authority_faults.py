"""What gateways, proxies and private authorities answer, through the running operator: throttling and unusable
answers are transient (the credential says why, retries with backoff, recovers when healed), one bad discovery
answer does not poison a tenant, an empty token is never written, and --ca-bundle adds to the default trust."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from graphcred_testbed.bed import wait_for
from graphcred_testbed.issuer import IssuerServer
from graphcred_testbed.operator_process import OperatorProcess
from graphcred_testbed.pki import CertificateAuthority

from ..helpers import Env

pytestmark = pytest.mark.bed

RETRIES = 2  # requests that show the credential retries (408, 425 and more cases: tests/unit/test_tokens.py)
DEADLINE = 25.0  # seconds for them and for recovery: the first backoff steps are 1-2, 2-4, 4-8 s


def _condition_message(env: Env, name: str) -> str:
    cond = env.ready_condition(name)
    return cond["message"] if cond else ""


def _reported(env: Env, name: str, fragment: str) -> None:
    """The user is told what happened: in the condition or in the Warning event of the transition (later
    attempts may be held off by the per-tenant breaker, and then say so instead)."""
    def told() -> bool:
        messages = [_condition_message(env, name)] + [m for kind, _, m in env.events(name) if kind == "Warning"]
        return any(fragment in m for m in messages)

    wait_for(told, timeout=10, what=f"{name}: {fragment!r} reported")


def _keeps_retrying(env: Env, name: str, requests: Callable[[], int]) -> None:
    """More requests come within the deadline, at most one per attempt: backoff, not a storm."""
    wait_for(lambda: requests() >= RETRIES, timeout=DEADLINE, what=f"{name}: {RETRIES} attempts")
    failures = env.get(name)["status"]["consecutiveFailures"]
    assert requests() <= failures + 1, f"{requests()} requests for {failures} failed attempts"


@pytest.mark.parametrize(("fault", "reason", "fragment"), [
    ({"status": 429, "retry_after": 2}, "Throttled", "discovery answered HTTP 429"),
    ({"status": 429, "retry_after": 2, "html": True}, "Throttled", "HTTP 429 (not JSON: text/html)"),
], ids=["429-json", "429-html"])
def test_throttled_discovery_is_transient_and_recovers(env: Env, fault: dict[str, Any], reason: str,
                                                       fragment: str) -> None:
    app = env.secret_app("pw")
    env.bed.issuer.fail_discovery(app.tenant_id, **fault)
    env.create("disc", app, {"clientSecret": {"name": "cred"}})
    env.wait_condition("disc", "False", reason)
    _reported(env, "disc", fragment)
    _keeps_retrying(env, "disc", lambda: env.bed.issuer.discovery_requests_for(app.tenant_id))
    assert env.bed.issuer.token_requests(app.client_id) == 0
    env.bed.issuer.heal()
    env.wait_ready("disc", timeout=DEADLINE)


def test_one_proxy_page_at_discovery_does_not_poison_the_tenant(env: Env) -> None:
    app = env.secret_app("pw")
    env.bed.issuer.fail_discovery(app.tenant_id, html=True, times=1)  # a login proxy's `200 <html>`, once
    env.create("poison", app, {"clientSecret": {"name": "cred"}})
    env.wait_ready("poison", timeout=DEADLINE)
    assert env.bed.issuer.discovery_requests_for(app.tenant_id) == 2  # the page was not cached; the document is


@pytest.mark.parametrize(("fault", "everyone", "reason", "fragment"), [
    ({"status": 429, "retry_after": 2, "html": True}, False, "Throttled", "HTTP 429 (not JSON: text/html)"),
    ({"garbage": True}, False, "AuthorityUnavailable", "token endpoint answered HTTP 200 (not JSON"),
    ({"empty_token": True}, False, "AuthorityUnavailable", "no access_token"),
    ({"status": 503}, True, "AuthorityUnavailable", "HTTP 503"),
], ids=["429-html", "garbage", "empty-token", "issuer-wide-503"])
def test_token_endpoint_faults_are_transient_and_recover(env: Env, fault: dict[str, Any], everyone: bool,
                                                         reason: str, fragment: str) -> None:
    app = env.secret_app("pw")
    if everyone:
        env.bed.issuer.fail_all(**fault)
    else:
        env.bed.issuer.fail(app.client_id, **fault)
    try:
        env.create("flaky", app, {"clientSecret": {"name": "cred"}})
        env.wait_condition("flaky", "False", reason)
        _reported(env, "flaky", fragment)
        _keeps_retrying(env, "flaky", lambda: env.bed.issuer.token_requests(app.client_id))
        assert env.secret("flaky-token") is None, "nothing written: no token was had"
    finally:
        env.bed.issuer.heal()
    env.wait_ready("flaky", timeout=DEADLINE)
    assert env.token("flaky-token")


def test_a_throttling_proxy_keeps_a_valid_token_ready(env: Env) -> None:
    app = env.secret_app("pw", lifetime=20)  # refreshed at about 10 s
    env.create("steady", app, {"clientSecret": {"name": "cred"}})
    env.wait_ready("steady")
    token = env.token("steady-token")
    env.bed.issuer.fail(app.client_id, status=429, retry_after=1, html=True)
    env.wait_condition("steady", "True", "Throttled", timeout=20)
    _reported(env, "steady", "HTTP 429 (not JSON: text/html)")
    assert "stays valid until" in _condition_message(env, "steady")
    requests = env.bed.issuer.token_requests(app.client_id)
    wait_for(lambda: env.bed.issuer.token_requests(app.client_id) > requests, timeout=10, what="a retry")
    assert env.token("steady-token") == token, "the last good token stays"
    env.bed.issuer.heal(app.client_id)
    env.wait_ready("steady", timeout=DEADLINE)
    assert env.token("steady-token") != token


def test_the_ca_bundle_adds_to_the_default_trust(env: Env, operator_logdir: Path, tmp_path: Path) -> None:
    """A 'public cloud' authority trusted by the process's default store (SSL_CERT_FILE) and the bed's private
    authority trusted through --ca-bundle: one operator gets tokens from both."""
    public_ca = CertificateAuthority("graphcred-public-cloud-ca")
    ca_file = tmp_path / "public-ca.crt"
    ca_file.write_bytes(public_ca.cert_pem)
    public = IssuerServer(public_ca).start()
    env.operator.stop()  # this test's operator gets another default trust
    previous = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = str(ca_file)
    try:
        op = OperatorProcess(env.bed, operator_logdir, "--token-timeout=3", name="graphcred-trust",
                             log_format="json").start()
    finally:  # the child has inherited it; nothing else in this process should
        if previous is None:
            del os.environ["SSL_CERT_FILE"]
        else:
            os.environ["SSL_CERT_FILE"] = previous
    try:
        private_app = env.secret_app("pw", secret_name="private-cred")
        public_app = public.issuer.register_app(private_app.tenant_id, secret=env.sv("pw2"))
        env.client_secret("public-cred", "pw2")
        env.create("private", private_app, {"clientSecret": {"name": "private-cred"}})
        env.create("public", public_app, {"clientSecret": {"name": "public-cred"}},
                   authorityHost=public.base_url)
        env.wait_ready("private")
        env.wait_ready("public")
        assert public.issuer.token_requests(public_app.client_id) == 1
    finally:
        op.stop()
        public.stop()
        env.operator.start()
