"""What gateways, proxies and private authorities answer, through the running operator: throttling and unusable
answers are transient (the credential says why, retries with backoff, recovers when healed), one bad discovery
answer does not poison a tenant, an empty token is never written, and --ca-bundle adds to the default trust.
Hostile authorities (tests/hostile.py) are bounded: a host nobody allowed gets no request, a dripping one is cut
off at the token timeout, a huge answer is refused without a memory spike, redirects are not followed, a token
endpoint on another host gets nothing, an untrusted certificate is named with its host."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from graphcred_testbed.bed import Bed, wait_for
from graphcred_testbed.issuer import IssuerServer
from graphcred_testbed.operator_process import OperatorProcess
from graphcred_testbed.pki import CertificateAuthority

from ..helpers import Env
from ..hostile import HostileAuthority, MiB, Recorder

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
        op = OperatorProcess(env.bed, operator_logdir, "--token-timeout=3", f"--authority-host={public.base_url}",
                             name="graphcred-trust", log_format="json").start()
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


# --- hostile authorities ------------------------------------------------------------------------------------------

@dataclass
class Hostile:
    authority: HostileAuthority  # trusted (the bed's issuer CA) and allowed
    untrusted: HostileAuthority  # allowed, but its certificate's CA is trusted by nobody
    metadata: Recorder  # plain http: a metadata service's stand-in
    operator: OperatorProcess


@pytest.fixture(scope="module")
def hostile(bed: Bed, operator: OperatorProcess, operator_logdir: Path) -> Iterator[Hostile]:
    """An operator that allows two hostile authority hosts (as an admin might allow a private endpoint that turns
    out hostile, or is taken over), in place of the session's operator, for this module's last tests."""
    authority = HostileAuthority(bed.issuer_ca, drip=1.0, big=30 * MiB).start()
    untrusted = HostileAuthority(CertificateAuthority("nobody-trusts-this-ca")).start()
    metadata = Recorder().start()
    authority.padded("big")  # made before the operator's memory is measured (it is this process's)
    operator.stop()
    op = OperatorProcess(bed, operator_logdir, "--token-timeout=3", f"--authority-host={authority.base}",
                         f"--authority-host={untrusted.base}", name="graphcred-hostile", log_format="json").start()
    try:
        # started, so that its memory is measured at rest (a module's first test on a pytest-xdist worker saw
        # 8 MiB, a process still importing, and took the rest of the start for a spike)
        wait_for(lambda: "graphcred started" in op.logs(this_run=True), timeout=60, what="the operator to start")
        yield Hostile(authority, untrusted, metadata, op)
    finally:
        op.stop()
        for server in (authority, untrusted, metadata):
            server.stop()
        operator.start()


def _hostile_credential(env: Env, name: str, tenant: str, host: str, app: Any = None) -> None:
    """A client-secret credential whose tenantId picks the hostile behaviour."""
    app = app or env.secret_app("pw")
    env.create(name, app, {"clientSecret": {"name": "cred"}}, tenantId=tenant, authorityHost=host)


def _told(env: Env, name: str, reason: str, fragment: str, timeout: float = 20) -> str:
    """The condition has `reason` and a message with `fragment`; returns the message."""
    def probe() -> str | None:
        cond = env.ready_condition(name)
        if cond and cond["status"] == "False" and cond["reason"] == reason and fragment in cond["message"]:
            return str(cond["message"])
        return None

    return str(wait_for(probe, timeout=timeout, what=f"{name}: {reason} saying {fragment!r}"))


def _rss_mib(op: OperatorProcess) -> float:
    assert op.process.popen is not None
    status = Path(f"/proc/{op.process.popen.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


def test_a_host_nobody_allowed_gets_no_request(env: Env) -> None:
    """Review finding 5: any https host was contacted for client-secret and certificate credentials."""
    stranger = HostileAuthority(env.bed.issuer_ca).start()  # trusted, but not allowed: the session's operator
    try:
        _hostile_credential(env, "stranger", "anything.test", stranger.base)
        message = _told(env, "stranger", "AuthorityNotAllowed", stranger.base)
        assert "--authority-host" in message and "authorityHosts" in message
        env.assert_stays(lambda: stranger.requests() == [], 3, "no request to the host")
    finally:
        stranger.stop()


def test_a_dripping_authority_is_cut_off_at_the_token_timeout(env: Env, hostile: Hostile) -> None:
    """Review finding 2: one byte a second held the acquisition, and its token slot, for ever. Now the exchange
    ends at the 3 s token timeout, and an ordinary credential is served meanwhile."""
    asked = len(hostile.authority.requests("GET"))
    _hostile_credential(env, "tarpit", "drip.test", hostile.authority.base)
    wait_for(lambda: len(hostile.authority.requests("GET")) > asked, timeout=20, interval=0.05,
             what="the operator's discovery request")
    started = time.monotonic()
    _told(env, "tarpit", "AuthorityUnavailable", "within the 3 s token timeout")
    took = time.monotonic() - started
    print(f"tarpit: AuthorityUnavailable {took:.1f} s after the dripping answer began (token timeout 3 s)")
    assert took < 8, "cut off at the 3 s deadline (plus the status write), not held"
    app = env.secret_app("pw2", secret_name="cred2")
    env.create("victim", app, {"clientSecret": {"name": "cred2"}})
    env.wait_ready("victim", timeout=20)


def test_a_huge_discovery_document_is_refused_without_a_memory_spike(env: Env, hostile: Hostile) -> None:
    """Review finding 3: a 30 MiB document was read whole and cached (RSS +113 MiB for the first one)."""
    before = _rss_mib(hostile.operator)
    _hostile_credential(env, "huge", "big.test", hostile.authority.base)
    _told(env, "huge", "AuthorityUnavailable", "answered more than 64 KiB")
    wait_for(lambda: len(hostile.authority.requests("GET")) >= 2, timeout=15, what="a retry")  # twice refused
    after = _rss_mib(hostile.operator)
    print(f"30 MiB discovery document: operator RSS {before:.0f} MiB -> {after:.0f} MiB")
    assert after - before < 15, f"RSS grew {after - before:.0f} MiB"


def test_a_redirect_to_plain_http_is_not_followed(env: Env, hostile: Hostile) -> None:
    hostile.authority.redirect_to = f"{hostile.metadata.base}/latest/meta-data/iam/security-credentials/node"
    _hostile_credential(env, "redirected", "redirect.test", hostile.authority.base)
    _told(env, "redirected", "AuthorityUnavailable", "answered with a redirect (HTTP 302)")
    assert hostile.metadata.requests() == [], "the metadata stand-in was never asked"


def test_a_token_endpoint_on_another_host_gets_nothing(env: Env, hostile: Hostile) -> None:
    """Even another allowed host (the bed's issuer, where this app is registered): credentials go to the
    authority host only (before: for workload identity only)."""
    app = env.secret_app("pw")
    hostile.authority.token_endpoint = f"{env.bed.authority_host}/{app.tenant_id}/oauth2/v2.0/token"
    _hostile_credential(env, "elsewhere", "elsewhere.test", hostile.authority.base, app)
    _told(env, "elsewhere", "AuthorityNotAllowed", "not on the authority host itself")
    assert env.bed.issuer.token_requests(app.client_id) == 0 and hostile.authority.requests("POST") == []


def test_refusals_echo_no_free_text(env: Env, hostile: Hostile) -> None:
    """Review finding 11: the token endpoint's `error` was copied verbatim (forged log lines)."""
    _hostile_credential(env, "echo", "echo.test", hostile.authority.base)
    message = _told(env, "echo", "Unauthorized", "unrecognised error code")
    events = [m for _, _, m in env.events("echo")]
    for text in (message, *events, hostile.operator.logs(this_run=True)):
        assert "FORGED" not in text and "BODY-TEXT" not in text


def test_an_untrusted_certificate_names_its_host_and_the_ca_bundle(env: Env, hostile: Hostile) -> None:
    """Issue 23 item 5: before, 'cannot reach https://127.0.0.1:59469: SSLError'."""
    _hostile_credential(env, "untrusted", "any.test", hostile.untrusted.base)
    message = _told(env, "untrusted", "AuthorityUnavailable", f"certificate of {hostile.untrusted.base} is not trusted")
    assert "--ca-bundle" in message and "caBundle" in message and "Error" not in message
