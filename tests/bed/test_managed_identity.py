"""graphcred's managed-identity acquisition (graphcred.acquire.managed) against the bed's IMDS, through the real
msal.ManagedIdentityClient: tokens, IMDS's own cache, refusals and faults as the user is told about them."""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from graphcred.acquire.credentials import ManagedIdentity
from graphcred.acquire.managed import ManagedIdentityTokens
from graphcred.acquire.tokens import AcquisitionError
from graphcred.api.model import Reason
from graphcred.base.backoff import RETRY_AFTER_CAP
from graphcred_testbed import jose
from graphcred_testbed.imds import TOKEN_PATH, ImdsServer

pytestmark = pytest.mark.bed

GRAPH = "https://graph.microsoft.com"
SCOPES = [f"{GRAPH}/.default"]


def _refused(tokens: ManagedIdentityTokens, identity: ManagedIdentity) -> AcquisitionError:
    with pytest.raises(AcquisitionError) as caught:
        tokens.acquire(identity, SCOPES)
    return caught.value


def test_system_assigned_token_with_its_claims(imds_server: ImdsServer) -> None:
    system = imds_server.imds.assign(system=True, roles={GRAPH: ["User.Read.All", "Mail.Read"]})
    token = ManagedIdentityTokens().acquire(ManagedIdentity(), SCOPES)
    claims = jose.parse(token.access_token)[1]
    assert token.claims.audience == GRAPH
    assert token.claims.app_id == system.client_id
    assert token.claims.tenant_id == imds_server.imds.tenant_id
    assert token.claims.roles == ("User.Read.All", "Mail.Read")
    assert token.expires_on == dt.datetime.fromtimestamp(claims["exp"], dt.UTC)
    assert token.refresh_on is None  # neither IMDS nor MSAL gave a hint for a one-hour token
    assert imds_server.imds.requests()[0].query == {"api-version": "2018-02-01", "resource": GRAPH}


def test_user_assigned_token_is_for_that_identity(imds_server: ImdsServer) -> None:
    imds = imds_server.imds
    imds.assign(system=True, roles={GRAPH: ["User.Read.All"]})
    user = imds.assign(roles={GRAPH: ["Mail.Read"]})
    token = ManagedIdentityTokens().acquire(ManagedIdentity(user.client_id), SCOPES)
    assert token.claims.app_id == user.client_id
    assert token.claims.roles == ("Mail.Read",)
    assert imds.requests()[0].query["client_id"] == user.client_id


def test_identity_assigned_later_is_not_found_then_yields_a_token(imds_server: ImdsServer) -> None:
    tokens, client_id = ManagedIdentityTokens(), str(uuid.uuid4())
    error = _refused(tokens, ManagedIdentity(client_id))
    assert error.reason is Reason.CREDENTIAL_NOT_FOUND
    assert not error.permanent  # an assignment reaches the node moments later
    assert client_id in error.message and "assign" in error.message
    system_error = _refused(tokens, ManagedIdentity())
    assert system_error.reason is Reason.CREDENTIAL_NOT_FOUND and "system-assigned" in system_error.message
    imds_server.imds.assign(client_id)
    assert tokens.acquire(ManagedIdentity(client_id), SCOPES).claims.app_id == client_id


def test_system_assigned_on_a_node_with_several_user_assigned_needs_the_user(imds_server: ImdsServer) -> None:
    imds_server.imds.assign()
    imds_server.imds.assign()
    error = _refused(ManagedIdentityTokens(), ManagedIdentity())
    assert error.reason is Reason.CREDENTIAL_NOT_FOUND and error.permanent
    assert "managedIdentity.clientId" in error.message


@pytest.mark.parametrize(("retry_after", "expected"), [(7, 7.0), (100_000, RETRY_AFTER_CAP)])
def test_throttled_with_retry_after(imds_server: ImdsServer, retry_after: int, expected: float) -> None:
    identity = imds_server.imds.assign()
    imds_server.imds.fail_next(429, retry_after=retry_after)
    error = _refused(ManagedIdentityTokens(), ManagedIdentity(identity.client_id))
    assert error.reason is Reason.THROTTLED and not error.permanent
    assert error.retry_after == expected


@pytest.mark.parametrize("status", [500, 503, 404, 410])
def test_server_errors_and_updating_imds_are_transient(imds_server: ImdsServer, status: int) -> None:
    identity = imds_server.imds.assign()
    imds_server.imds.fail_next(status)
    tokens = ManagedIdentityTokens()
    error = _refused(tokens, ManagedIdentity(identity.client_id))
    assert error.reason is Reason.AUTHORITY_UNAVAILABLE and not error.permanent
    assert f"HTTP {status}" in error.message
    assert tokens.acquire(ManagedIdentity(identity.client_id), SCOPES).claims.app_id == identity.client_id


def test_other_refusals_need_the_user_and_never_echo_the_answer(imds_server: ImdsServer) -> None:
    identity = imds_server.imds.assign()
    imds_server.imds.fail_next(400, body=json.dumps({"error": "invalid_resource",
                                                     "error_description": "PEER-TEXT about the resource"}).encode())
    imds_server.imds.fail_next(403, body=json.dumps({"error": "made-up <b>code</b>",
                                                     "error_description": "PEER-TEXT"}).encode())
    tokens = ManagedIdentityTokens()
    first = _refused(tokens, ManagedIdentity(identity.client_id))
    assert first.reason is Reason.UNAUTHORIZED and first.permanent
    assert "HTTP 400, invalid_resource" in first.message  # a code from the fixed list
    second = _refused(tokens, ManagedIdentity(identity.client_id))
    assert second.reason is Reason.UNAUTHORIZED and "HTTP 403)" in second.message
    for error in (first, second):
        assert "PEER-TEXT" not in error.message and "made-up" not in error.message


def test_the_same_token_twice_from_imds_cache(imds_server: ImdsServer) -> None:
    identity = imds_server.imds.assign()
    tokens = ManagedIdentityTokens()
    first = tokens.acquire(ManagedIdentity(identity.client_id), SCOPES)
    again = tokens.acquire(ManagedIdentity(identity.client_id), SCOPES)
    assert again.access_token == first.access_token
    assert again.expires_on == first.expires_on
    # MSAL asked IMDS both times (its own cache never answers); IMDS answered its cached token
    assert imds_server.imds.token_requests(identity.client_id) == 2
    assert imds_server.imds.minted == 1


def test_refresh_on_from_imds_refresh_in(imds_server: ImdsServer) -> None:
    identity = imds_server.imds.assign()
    imds_server.imds.refresh_in = 1200
    clock = dt.datetime.now(dt.UTC).replace(microsecond=0)
    token = ManagedIdentityTokens(clock=lambda: clock).acquire(ManagedIdentity(identity.client_id), SCOPES)
    assert token.refresh_on == clock + dt.timedelta(seconds=1200)


def test_refresh_on_from_msal_for_long_lived_tokens(imds_server: ImdsServer) -> None:
    identity = imds_server.imds.assign()
    imds_server.imds.lifetime = 86_399  # MSAL suggests refreshing at half of a lifetime of two hours or more
    token = ManagedIdentityTokens().acquire(ManagedIdentity(identity.client_id), SCOPES)
    assert token.refresh_on is not None
    half = token.expires_on - dt.timedelta(seconds=86_399 // 2)
    assert abs((token.refresh_on - half).total_seconds()) <= 5


@pytest.mark.parametrize("unframed", [False, True], ids=["content-length", "until-close"])
def test_an_oversized_answer_is_refused(imds_server: ImdsServer, unframed: bool) -> None:
    identity = imds_server.imds.assign()
    imds_server.imds.fail_next(200, body=b'{"access_token": "' + b"A" * 100_000 + b'", "expires_in": "3599"}',
                               unframed=unframed)
    tokens = ManagedIdentityTokens()
    error = _refused(tokens, ManagedIdentity(identity.client_id))
    assert error.reason is Reason.AUTHORITY_UNAVAILABLE and not error.permanent
    assert "more than 64 KiB" in error.message
    assert tokens.acquire(ManagedIdentity(identity.client_id), SCOPES).claims.app_id == identity.client_id


def test_a_redirect_is_not_followed(imds_server: ImdsServer) -> None:
    identity = imds_server.imds.assign()
    elsewhere = f"{imds_server.base_url}{TOKEN_PATH}?api-version=2018-02-01&resource={GRAPH}"
    imds_server.imds.fail_next(307, headers={"Location": elsewhere})
    error = _refused(ManagedIdentityTokens(), ManagedIdentity(identity.client_id))
    assert error.reason is Reason.AUTHORITY_UNAVAILABLE and "redirect (HTTP 307)" in error.message
    assert imds_server.imds.token_requests() == 1  # the Location was never asked


def test_a_slow_answer_times_out(imds_server: ImdsServer) -> None:
    identity = imds_server.imds.assign()
    imds_server.imds.fail_next(500, delay=3)
    error = _refused(ManagedIdentityTokens(timeout=(2.0, 0.5)), ManagedIdentity(identity.client_id))
    assert error.reason is Reason.AUTHORITY_UNAVAILABLE and "no complete answer" in error.message


def test_unreachable_imds(imds_server: ImdsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", f"http://127.0.0.1:{port}")
    error = _refused(ManagedIdentityTokens(), ManagedIdentity())
    assert error.reason is Reason.AUTHORITY_UNAVAILABLE and "cannot connect" in error.message


def test_proxy_settings_are_ignored(imds_server: ImdsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    identity = imds_server.imds.assign()
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert ManagedIdentityTokens().acquire(ManagedIdentity(identity.client_id), SCOPES).claims.app_id \
        == identity.client_id


def test_an_unparseable_answer_is_transient_and_never_logged(imds_server: ImdsServer,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    identity = imds_server.imds.assign()
    imds_server.imds.fail_next(200, body=b'{"access_token": "eyJSECRET-TOKEN-PART')  # cut short
    with caplog.at_level(logging.DEBUG):
        error = _refused(ManagedIdentityTokens(), ManagedIdentity(identity.client_id))
    assert error.reason is Reason.AUTHORITY_UNAVAILABLE and not error.permanent
    assert "SECRET-TOKEN-PART" not in caplog.text and "SECRET-TOKEN-PART" not in error.message


def test_no_token_in_logs_or_messages(imds_server: ImdsServer, caplog: pytest.LogCaptureFixture) -> None:
    identity = imds_server.imds.assign()
    with caplog.at_level(logging.DEBUG):
        token = ManagedIdentityTokens().acquire(ManagedIdentity(identity.client_id), SCOPES)
    assert token.access_token not in caplog.text
    assert token.access_token.split(".")[2] not in caplog.text
    assert token.access_token not in repr(token)


def test_one_resource_per_token(imds_server: ImdsServer) -> None:
    with pytest.raises(AcquisitionError) as caught:
        ManagedIdentityTokens().acquire(ManagedIdentity(), [f"{GRAPH}/.default", "https://vault.azure.net/.default"])
    assert caught.value.reason is Reason.INVALID_SPEC
    assert imds_server.imds.token_requests() == 0


def test_concurrent_acquisitions_each_get_their_identity(imds_server: ImdsServer) -> None:
    identities = [imds_server.imds.assign() for _ in range(4)]
    tokens = ManagedIdentityTokens()
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: tokens.acquire(ManagedIdentity(i.client_id), SCOPES), identities * 4))
    assert [t.claims.app_id for t in got] == [i.client_id for i in identities * 4]
