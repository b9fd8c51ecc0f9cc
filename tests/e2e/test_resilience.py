"""The operator survives being killed and the apiserver going away, without losing a token or storming."""

from __future__ import annotations

import base64
import time

import pytest
from kubernetes import watch

from graphcred.api.keys import GROUP, PLURAL, VERSION
from graphcred_testbed.bed import wait_for

from ..helpers import Env

pytestmark = pytest.mark.bed

N = 8
LIFETIME = 30


def _all_unexpired(env: Env, names: list[str]) -> bool:
    now = time.time()
    for name in names:
        token = env.token(f"{name}-token")
        if token is None or env.verified_claims(token)["exp"] <= now:
            return False
    return True


@pytest.mark.long  # a whole token lifetime and more
def test_sigkill_mid_refresh_then_restart(env: Env) -> None:
    app = env.secret_app("kill", secret_name="cred", lifetime=LIFETIME)
    names = [f"k{i}" for i in range(N)]
    for name in names:
        env.create(name, app, {"clientSecret": {"name": "cred"}})
    for name in names:
        env.wait_ready(name)
    issued = env.bed.issuer.token_requests(app.client_id)
    assert issued == 1, "identical credentials share one token request"
    # Slow the endpoint so refreshes are in flight, and kill the operator while one is.
    env.bed.issuer.fail(app.client_id, delay=3.0)
    wait_for(lambda: env.bed.issuer.token_requests(app.client_id) > issued, timeout=LIFETIME,
             what="a refresh in flight")
    env.operator.kill()
    env.bed.issuer.heal(app.client_id)
    killed_at = env.bed.issuer.token_requests(app.client_id)
    env.operator.start()
    # For more than a whole token lifetime after the restart, every Secret always holds an unexpired token.
    deadline = time.monotonic() + LIFETIME + 5
    while time.monotonic() < deadline:
        assert _all_unexpired(env, names), "a token expired: the restarted operator missed a refresh"
        time.sleep(0.5)
    after = env.bed.issuer.token_requests(app.client_id) - killed_at
    # Each credential refreshes about once per half-life (~15 s) over ~35 s: at most three rounds, and the
    # restart itself re-acquires only those whose refresh was due, not all of them.
    assert after <= 3 * N, f"{after} token requests for {N} credentials after the restart: a storm"
    for name in names:
        status = env.get(name)["status"]
        assert status["conditions"][0]["status"] == "True"


def test_apiserver_restart_is_survived(env: Env) -> None:
    app = env.secret_app("apiserver", secret_name="cred", lifetime=20)
    env.create("before", app, {"clientSecret": {"name": "cred"}})
    env.wait_ready("before")
    first = env.token("before-token")
    env.bed.control_plane.restart_apiserver(downtime=3.0)
    # existing credentials keep refreshing ...
    wait_for(lambda: env.token("before-token") not in (None, first), timeout=30,
             what="a refresh after the apiserver came back")
    # ... and new ones are noticed: the watches reconnected
    env.create("after", app, {"clientSecret": {"name": "cred"}})
    env.wait_ready("after", timeout=60)
    # ... and so did the Secret watch: a change to the credential Secret still triggers re-acquisition
    tokens = {n: env.token(f"{n}-token") for n in ("before", "after")}
    app.secrets.append(env.sv("apiserver-rotated"))
    env.bed.core.patch_namespaced_secret("cred", env.namespace,
                                         {"stringData": {"clientSecret": env.sv("apiserver-rotated")}})
    wait_for(lambda: all(env.token(f"{n}-token") != t for n, t in tokens.items()), timeout=30,
             what="both credentials re-acquiring after their Secret was rotated")


def test_a_token_secret_whose_status_was_lost_is_adopted_after_a_restart_never_blanked(env: Env) -> None:
    """The operator died after writing the token Secret and before writing the status. The next process finds the
    Secret (the watch lists it, or its create answers AlreadyExists) and patches its new token in: the same
    Secret (uid), another tool's label kept, and no version of it without a token meanwhile."""
    app = env.secret_app("adopt", secret_name="cred")
    env.create("adopt", app, {"clientSecret": {"name": "cred"}})
    env.wait_ready("adopt")
    env.operator.stop()
    env.bed.core.patch_namespaced_secret("adopt-token", env.namespace, {"metadata": {"labels": {"tool": "kept"}}})
    env.bed.custom.patch_namespaced_custom_object_status(GROUP, VERSION, env.namespace, PLURAL, "adopt",
                                                         {"status": None})
    before = env.secret("adopt-token")
    assert before is not None and not env.get("adopt").get("status")
    env.operator.start()
    env.wait_ready("adopt")
    # every version of the Secret since the restart: a watch from the version read before it replays them all
    versions = [(event["type"], bool((event["object"].data or {}).get("access_token")))
                for event in watch.Watch().stream(env.bed.core.list_namespaced_secret, env.namespace,
                                                  field_selector="metadata.name=adopt-token",
                                                  resource_version=before.metadata.resource_version,
                                                  timeout_seconds=2)]
    after = env.secret("adopt-token")
    assert after is not None and after.metadata.uid == before.metadata.uid, "the Secret was re-created"
    assert after.metadata.labels["tool"] == "kept"
    assert base64.b64decode(after.data["access_token"]) != base64.b64decode(before.data["access_token"])
    assert versions and all(kind == "MODIFIED" and token for kind, token in versions), versions
