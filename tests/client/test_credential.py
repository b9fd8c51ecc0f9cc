"""MountedTokenCredential against real directories written the way the kubelet writes a Secret volume."""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken, AccessTokenInfo, SupportsTokenInfo, TokenCredential
from azure.core.exceptions import ClientAuthenticationError

from graphcred_client import MountedTokenCredential, _token_file
from graphcred_client._claims import unverified_claims

from .tokens import GRAPH, GRAPH_APP_ID, GRAPH_SCOPE, TENANT, Mount, make_jwt, rfc3339, shows_no_token


def _refusal(credential: MountedTokenCredential, *scopes: str, **kwargs: Any) -> str:
    with pytest.raises(ClientAuthenticationError) as caught:
        credential.get_token(*scopes, **kwargs)
    return str(caught.value)


def test_first_read_returns_the_mounted_token_and_its_expiry(mount: Mount) -> None:
    token = mount.write(lifetime=3600)
    expected = int(time.time()) + 3600
    credential = MountedTokenCredential(mount.directory)
    got = credential.get_token(GRAPH_SCOPE)
    assert isinstance(got, AccessToken)
    assert got.token == token
    assert abs(got.expires_on - expected) <= 2
    assert isinstance(credential, TokenCredential) and isinstance(credential, SupportsTokenInfo)


def test_a_kubelet_swap_is_used_by_the_next_call_of_the_same_credential(mount: Mount) -> None:
    first = mount.write()
    credential = MountedTokenCredential(mount.directory)
    assert credential.get_token(GRAPH_SCOPE).token == first
    second = mount.write()
    assert second != first
    assert credential.get_token(GRAPH_SCOPE).token == second
    assert credential.get_token_info(GRAPH_SCOPE).token == second


def test_an_unchanged_file_is_not_read_again(mount: Mount) -> None:
    mount.write()
    credential = MountedTokenCredential(mount.directory)
    first = credential.get_token(GRAPH_SCOPE).token
    # A read builds a new string; the very same object means the cached token was handed out.
    assert credential.get_token(GRAPH_SCOPE).token is first
    assert credential.get_token_info(GRAPH_SCOPE).token is first


def test_a_token_within_the_margin_is_read_again_and_warned_about_once(
        mount: Mount, caplog: pytest.LogCaptureFixture) -> None:
    token = mount.write(lifetime=120, iat=int(time.time()) - 1000)  # inside the 5-minute margin, and long overdue
    credential = MountedTokenCredential(mount.directory)
    with caplog.at_level(logging.DEBUG, logger="graphcred_client"):
        first = credential.get_token(GRAPH_SCOPE).token
        second = credential.get_token(GRAPH_SCOPE).token
    assert first == second == token
    assert second is not first  # read again
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "half its lifetime" in warnings[0].getMessage() and str(mount.directory) in warnings[0].getMessage()
    assert shows_no_token(caplog.text, token)
    # With a smaller margin the same token is cached.
    relaxed = MountedTokenCredential(mount.directory, margin=dt.timedelta(seconds=30))
    assert relaxed.get_token(GRAPH_SCOPE).token is relaxed.get_token(GRAPH_SCOPE).token


def test_a_short_lived_token_is_not_warned_about_until_its_last_quarter(
        mount: Mount, caplog: pytest.LogCaptureFixture) -> None:
    now = int(time.time())
    mount.write(lifetime=120, iat=now)  # all of its life inside the 5-minute margin, but only just issued
    credential = MountedTokenCredential(mount.directory)
    with caplog.at_level(logging.WARNING, logger="graphcred_client"):
        credential.get_token(GRAPH_SCOPE)
        assert not caplog.records
        mount.write(lifetime=20, iat=now - 100)  # 20 s of 120 left: should have been replaced at 60
        credential.get_token(GRAPH_SCOPE)
    assert len(caplog.records) == 1 and "half its lifetime" in caplog.records[0].getMessage()


def test_an_expired_token_is_refused_with_the_reasons_and_without_the_token(mount: Mount) -> None:
    token = mount.write(lifetime=-600)
    credential = MountedTokenCredential(mount.directory)
    message = _refusal(credential, GRAPH_SCOPE)
    assert str(mount.directory) in message
    assert f"expired at {rfc3339(int(time.time()) - 600)}"[:-3] in message  # to the minute
    assert "kubectl describe gac" in message and "subPath" in message and "env" in message
    assert shows_no_token(message, token)
    with pytest.raises(ClientAuthenticationError):
        credential.get_token_info(GRAPH_SCOPE)
    # The next refresh of the file is picked up: the credential is not stuck.
    fresh = mount.write()
    assert credential.get_token(GRAPH_SCOPE).token == fresh


def test_the_earlier_expiry_wins_when_file_and_token_disagree(mount: Mount) -> None:
    token = make_jwt(exp=int(time.time()) - 60)  # the JWT expired; the file claims an hour more
    mount.write(token=token, expires_on=int(time.time()) + 3600)
    assert "expired at" in _refusal(MountedTokenCredential(mount.directory), GRAPH_SCOPE)


def test_without_expires_on_the_jwt_exp_is_used(mount: Mount) -> None:
    token = mount.write(lifetime=1800, with_expires_on=False)
    got = MountedTokenCredential(mount.directory).get_token(GRAPH_SCOPE)
    assert got.token == token and abs(got.expires_on - (time.time() + 1800)) <= 2


def test_an_opaque_token_needs_expires_on(mount: Mount) -> None:
    mount.write(token="opaque-token-value-1234567890")
    credential = MountedTokenCredential(mount.directory)
    # Not a JWT: no audience to check, the file's expiry is all there is.
    assert credential.get_token("https://example.org/.default").token == "opaque-token-value-1234567890"
    mount.write(token="opaque-token-value-0987654321", with_expires_on=False)
    message = _refusal(credential, GRAPH_SCOPE)
    assert "No expiry" in message and shows_no_token(message, "opaque-token-value-0987654321")


def test_a_scope_for_another_resource_is_refused_naming_both(mount: Mount) -> None:
    token = mount.write(aud=GRAPH)
    credential = MountedTokenCredential(mount.directory)
    message = _refusal(credential, "https://vault.azure.net/.default")
    assert "'https://graph.microsoft.com'" in message and "'https://vault.azure.net'" in message
    assert shows_no_token(message, token)
    # Every scope is checked, not just the first.
    assert "vault.azure.net" in _refusal(credential, GRAPH_SCOPE, "https://vault.azure.net/.default")


@pytest.mark.parametrize(("aud", "scope"), [
    (GRAPH_APP_ID, GRAPH_SCOPE),                                   # Graph's application id is Graph
    (GRAPH, f"{GRAPH_APP_ID}/.default"),
    ("https://graph.microsoft.com/", "HTTPS://Graph.Microsoft.COM//.default"),  # trailing slash, case
    (GRAPH, "User.Read.All"),                                      # no resource named: Graph, as Entra reads it
    (GRAPH_APP_ID, "https://graph.microsoft.us/.default"),         # national clouds
    (GRAPH_APP_ID, "https://microsoftgraph.chinacloudapi.cn/.default"),
    ("https://dod-graph.microsoft.us", "https://dod-graph.microsoft.us/.default"),
    ("2b8e4f1a-6c3d-4e7f-9a0b-1c2d3e4f5a6b", "api://2b8e4f1a-6c3d-4e7f-9a0b-1c2d3e4f5a6b/.default"),  # v2.0 API
    ("https://contoso.example/api", "https://contoso.example/api/.default"),
    (["https://other.example", GRAPH], GRAPH_SCOPE),               # aud as a list
])
def test_aliases_of_the_same_resource_are_accepted(mount: Mount, aud: str | list[str], scope: str) -> None:
    token = mount.write(aud=aud)
    assert MountedTokenCredential(mount.directory).get_token(scope).token == token


@pytest.mark.parametrize(("aud", "scope"), [
    (GRAPH, "https://graph.microsoft.us/.default"),  # another cloud's Graph
    ("https://contoso.example/api", "https://contoso.example/other/.default"),
    ("https://contoso.example/api", "https://contoso.example/API/.default"),  # paths compare case-sensitively
    (GRAPH, "api://2b8e4f1a-6c3d-4e7f-9a0b-1c2d3e4f5a6b/.default"),
])
def test_other_resources_are_refused(mount: Mount, aud: str, scope: str) -> None:
    mount.write(aud=aud)
    assert "is for" in _refusal(MountedTokenCredential(mount.directory), scope)


def test_another_tenant_is_refused(mount: Mount) -> None:
    token = mount.write(tid=TENANT)
    credential = MountedTokenCredential(mount.directory)
    assert credential.get_token(GRAPH_SCOPE, tenant_id=TENANT.upper()).token == token
    other = "11111111-2222-3333-4444-555555555555"
    message = _refusal(credential, GRAPH_SCOPE, tenant_id=other)
    assert TENANT in message and other in message and shows_no_token(message, token)
    with pytest.raises(ClientAuthenticationError, match="tenant"):
        credential.get_token_info(GRAPH_SCOPE, options={"tenant_id": other})


def test_a_claims_challenge_cannot_be_served_from_a_file(mount: Mount) -> None:
    token = mount.write()
    credential = MountedTokenCredential(mount.directory)
    challenge = '{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}'
    message = _refusal(credential, GRAPH_SCOPE, claims=challenge)
    assert "claims challenge" in message and "renew-requested-at" in message and shows_no_token(message, token)
    with pytest.raises(ClientAuthenticationError, match="claims challenge"):
        credential.get_token_info(GRAPH_SCOPE, options={"claims": challenge})
    # What kiota passes on every call when there is no challenge, and CAE (ignored) is fine.
    assert credential.get_token(GRAPH_SCOPE, claims=None, enable_cae=True).token == token


def test_a_missing_mount_names_the_path_and_what_to_mount(tmp_path: Path) -> None:
    missing = tmp_path / "not-mounted"
    message = _refusal(MountedTokenCredential(missing), GRAPH_SCOPE)
    assert f"No token directory at {missing}" in message and "secretName" in message and "mountPath" in message
    missing.mkdir()
    message = _refusal(MountedTokenCredential(missing), GRAPH_SCOPE)
    assert f"No access_token file in {missing}" in message


def test_no_scope_is_a_programming_error(mount: Mount) -> None:
    mount.write()
    with pytest.raises(ValueError, match="at least one scope"):
        MountedTokenCredential(mount.directory).get_token()


def test_a_plain_directory_rewritten_in_place_is_noticed(tmp_path: Path) -> None:
    """Not every mount is the kubelet's (a hostPath, a local run): a replaced file is noticed by its identity."""
    tmp_path.joinpath("expires_on").write_text(rfc3339(int(time.time()) + 3600))
    first, second = make_jwt(exp=int(time.time()) + 3600), make_jwt(exp=int(time.time()) + 3600)
    tmp_path.joinpath("access_token").write_text(first)
    credential = MountedTokenCredential(tmp_path)
    assert credential.get_token(GRAPH_SCOPE).token == first
    tmp_path.joinpath("new").write_text(second)
    os.replace(tmp_path / "new", tmp_path / "access_token")
    assert credential.get_token(GRAPH_SCOPE).token == second


def test_refresh_on_makes_azure_core_ask_again_within_a_minute(mount: Mount) -> None:
    mount.write(lifetime=3600)
    info = MountedTokenCredential(mount.directory).get_token_info(GRAPH_SCOPE)
    assert isinstance(info, AccessTokenInfo) and info.token_type == "Bearer"
    assert info.refresh_on is not None and time.time() - 2 <= info.refresh_on <= time.time() + 61


def test_the_token_never_shows_in_repr_logs_or_errors(mount: Mount, caplog: pytest.LogCaptureFixture) -> None:
    tokens = [mount.write(lifetime=100)]
    credential = MountedTokenCredential(mount.directory)
    assert repr(credential) == f"MountedTokenCredential(directory={str(mount.directory)!r})"
    texts = [repr(credential), str(credential)]
    with caplog.at_level(logging.DEBUG):
        credential.get_token(GRAPH_SCOPE)
        tokens.append(mount.write(lifetime=-5))
        for kwargs in ({}, {"tenant_id": "x"}, {"claims": "{}"}):
            with pytest.raises(ClientAuthenticationError) as caught:
                credential.get_token("https://vault.azure.net/.default", **kwargs)
            texts += [str(caught.value), repr(caught.value), repr(caught.value.__cause__),
                      repr(caught.value.__context__)]
        tokens.append(mount.write(aud="https://vault.azure.net"))
        with pytest.raises(ClientAuthenticationError) as caught:
            credential.get_token(GRAPH_SCOPE, tenant_id="x")
        texts += [str(caught.value), repr(caught.value)]
    assert caplog.records  # the credential did log (debug, warning), just not the token
    assert shows_no_token("\n".join([*texts, caplog.text]), *tokens)


def test_close_and_context_manager(mount: Mount) -> None:
    token = mount.write()
    with MountedTokenCredential(mount.directory) as credential:
        first = credential.get_token(GRAPH_SCOPE).token
    assert first == token
    # Closed: the cache is gone, the credential still works.
    assert credential.get_token(GRAPH_SCOPE).token is not first


def test_a_read_that_races_the_swap_is_retried(mount: Mount, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kubelet removes the old version right after the swap: a reader that resolved the symlink just before
    finds the file gone. That is retried, not reported."""
    mount.write()
    stale = os.path.realpath(mount.directory / "access_token")
    current = mount.write()  # the swap removes the directory `stale` is in
    resolved = []
    realpath = os.path.realpath

    def racing(path: Any) -> str:
        resolved.append(path)
        return stale if len(resolved) == 1 else realpath(path)

    monkeypatch.setattr(_token_file.os.path, "realpath", racing)
    assert MountedTokenCredential(mount.directory).get_token(GRAPH_SCOPE).token == current
    assert len(resolved) == 2


def test_a_swap_between_the_two_reads_never_pairs_one_token_with_another_expiry(
        mount: Mount, monkeypatch: pytest.MonkeyPatch) -> None:
    mount.write(lifetime=3600)
    swapped: list[bool] = []
    fstat = os.fstat

    def swap_after_the_token_is_opened(fd: int) -> os.stat_result:
        if not swapped:
            swapped.append(True)  # first: writing calls fstat too
            mount.write(lifetime=1800)  # another token, expiring sooner (a later expiry would hide in the min)
        return fstat(fd)

    monkeypatch.setattr(_token_file.os, "fstat", swap_after_the_token_is_opened)
    got = MountedTokenCredential(mount.directory).get_token(GRAPH_SCOPE)
    assert swapped
    assert got.expires_on == unverified_claims(got.token).expires_at


def test_an_unreadable_file_says_so(mount: Mount) -> None:
    mount.write()
    (mount.directory / "access_token").unlink()
    (mount.directory / "access_token").mkdir()  # EISDIR: readable by no one, root included
    message = _refusal(MountedTokenCredential(mount.directory), GRAPH_SCOPE)
    assert f"Cannot read the token in {mount.directory}: Is a directory" in message
