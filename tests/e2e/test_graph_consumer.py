"""From the token Secret to a Graph call (issue 12): the real msgraph-sdk, through graphcred_client, calls the bed's
Graph API with the token the operator wrote, mounted the way the kubelet mounts a Secret volume. A refresh reaches
the next call with no restart; a missing role is the SDK's 403; an expired file is a clear error, not a 401 loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.core.exceptions import ClientAuthenticationError
from msgraph.generated.models.o_data_errors.o_data_error import ODataError

from graphcred.acquire.jwt import b64url_decode
from graphcred.api.keys import RENEW_ANNOTATION
from graphcred_client import AsyncMountedTokenCredential, MountedTokenCredential
from graphcred_testbed.bed import wait_for
from graphcred_testbed.graph import DOMAIN
from graphcred_testbed.volume import SecretVolume

from ..graphsdk import graph_service_client
from ..helpers import Env

pytestmark = pytest.mark.bed
ROOT = Path(__file__).resolve().parents[2]
CREDENTIAL = {"clientSecret": {"name": "cred"}}


def _uti(token: str) -> str:
    return str(json.loads(b64url_decode(token.split(".")[1]))["uti"])


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    # one loop for the whole test: the SDK's httpx client belongs to the loop it first ran on
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _mounted(env: Env, tmp_path: Path, name: str, roles: list[str], lifetime: int = 3599) -> tuple[SecretVolume, str]:
    """A Ready credential whose token Secret is mounted (kubelet-style) in a directory; (volume, token)."""
    app = env.secret_app("s", roles=roles, lifetime=lifetime)
    env.create(name, app, CREDENTIAL)
    env.wait_ready(name)
    secret = env.secret(f"{name}-token")
    assert secret is not None
    volume = SecretVolume(tmp_path / name)
    volume.write_secret(secret)
    token = env.token(f"{name}-token")
    assert token is not None
    return volume, token


def _names(users: object) -> list[str]:
    return [u.display_name for u in (getattr(users, "value", None) or [])]


def test_the_graph_sdk_uses_each_refreshed_token_without_a_restart(
        env: Env, tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    volume, first = _mounted(env, tmp_path, "reader", ["User.Read.All"])
    credential = AsyncMountedTokenCredential(volume.directory)
    graph = graph_service_client(credential, env.bed.graph, env.bed.issuer_ca_file)

    assert "Adele Vance" in _names(loop.run_until_complete(graph.users.get()))
    call = env.bed.graph.calls()[-1]
    assert (call.status, call.token_id) == (200, _uti(first))

    # a renew request makes the operator write a new token; the kubelet swaps the mounted files
    env.bed.custom.patch_namespaced_custom_object(
        "graphcred.io", "v1alpha1", env.namespace, "graphappcredentials", "reader",
        {"metadata": {"annotations": {RENEW_ANNOTATION: dt.datetime.now(dt.UTC).isoformat()}}})
    second = wait_for(lambda: (t := env.token("reader-token")) != first and t, timeout=30, what="a new token")
    secret = env.secret("reader-token")
    assert secret is not None
    volume.write_secret(secret)

    # the same client object, no restart: the next call carries the new token
    assert "Adele Vance" in _names(loop.run_until_complete(graph.users.get()))
    call = env.bed.graph.calls()[-1]
    assert (call.status, call.token_id) == (200, _uti(second))
    loop.run_until_complete(credential.close())


def test_a_token_without_the_routes_role_gets_the_sdks_403(
        env: Env, tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    volume, token = _mounted(env, tmp_path, "mailonly", ["Mail.Read"])
    graph = graph_service_client(MountedTokenCredential(volume.directory), env.bed.graph, env.bed.issuer_ca_file)

    with pytest.raises(ODataError) as raised:
        loop.run_until_complete(graph.users.get())
    assert raised.value.response_status_code == 403
    assert raised.value.error is not None and raised.value.error.code == "Authorization_RequestDenied"
    assert token not in str(raised.value)
    # the role it has works: the same token reads a mailbox
    messages = loop.run_until_complete(graph.users.by_user_id(f"AdeleV@{DOMAIN}").messages.get())
    assert messages is not None and messages.value


def test_an_expired_token_file_is_a_clear_error_and_no_call_is_made(
        env: Env, tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    volume, token = _mounted(env, tmp_path, "shortlived", ["User.Read.All"], lifetime=3)
    expires = json.loads(b64url_decode(token.split(".")[1]))["exp"]
    wait_for(lambda: time.time() > expires + 1, timeout=10, what="the mounted token to expire")
    graph = graph_service_client(AsyncMountedTokenCredential(volume.directory), env.bed.graph,
                                 env.bed.issuer_ca_file)
    calls = len(env.bed.graph.calls())

    with pytest.raises(ClientAuthenticationError) as raised:
        loop.run_until_complete(graph.users.get())
    message = str(raised.value)
    assert "expired" in message and str(volume.directory) in message
    assert token not in message
    assert len(env.bed.graph.calls()) == calls, "an expired token was sent"


def test_the_example_daemon_lists_users_through_a_mounted_token(env: Env, tmp_path: Path) -> None:
    volume, _ = _mounted(env, tmp_path, "daemon", ["User.Read.All"])
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "consumer" / "graph_daemon.py"), "--count", "2"],
        env={**os.environ, "GRAPHCRED_TOKEN_DIR": str(volume.directory), "GRAPH_BASE_URL": env.bed.graph.base_url,
             "GRAPH_CA_BUNDLE": str(env.bed.issuer_ca_file), "INTERVAL": "0.2"},
        capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line for line in run.stdout.splitlines() if "GET /users" in line]
    assert len(lines) == 2 and all("Adele Vance" in line for line in lines), run.stdout
