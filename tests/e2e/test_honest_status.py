"""What the status promises on the real bed: Ready only for the spec the token was acquired for, a renew request
served at once, a renamed token Secret not left behind."""

from __future__ import annotations

import pytest

from graphcred_testbed.bed import wait_for

from ..helpers import GRAPH, Env

pytestmark = pytest.mark.bed

RENEW = "graphcred.io/renew-requested-at"


def test_fixed_in_entra_then_renew_requested_is_ready_at_once(env: Env) -> None:
    # The Secret holds a secret Entra does not know yet (replication delay, or added to the wrong app).
    app = env.register_app(secret="registered")
    env.client_secret("cred", "added-later")
    env.create("renew", app, {"clientSecret": {"name": "cred"}})
    env.wait_condition("renew", "False", "Unauthorized")
    # Fixed on the Entra side, nothing changes in the cluster; the user asks for a renewal.
    app.secrets.append(env.sv("added-later"))
    env.bed.custom.patch_namespaced_custom_object("graphcred.io", "v1alpha1", env.namespace, "graphappcredentials",
                                                  "renew", {"metadata": {"annotations": {RENEW: "now"}}})
    env.wait_ready("renew", timeout=10)
    assert env.bed.issuer.token_requests(app.client_id) == 2
    # A second request (a new value) gets a new token again, even though the current one is fresh.
    first = env.token("renew-token")
    env.bed.custom.patch_namespaced_custom_object("graphcred.io", "v1alpha1", env.namespace, "graphappcredentials",
                                                  "renew", {"metadata": {"annotations": {RENEW: "again"}}})
    wait_for(lambda: env.token("renew-token") not in (None, first), timeout=10, what="a renewed token")
    wait_for(lambda: any(r == "TokenIssued" and "renewed on request" in m for _, r, m in env.events("renew")),
             timeout=10, what="the TokenIssued Event of the renewal (Events are posted from a queue)")


def test_a_new_client_that_cannot_get_a_token_is_not_reported_ready(env: Env) -> None:
    app = env.secret_app("shared-secret", secret_name="cred")
    # a second app in the same tenant, with the same secret, whose endpoint is failing
    other = env.bed.issuer.register_app(app.tenant_id, secret=env.sv("shared-secret"), roles={GRAPH: ["X"]})
    env.create("moved", app, {"clientSecret": {"name": "cred"}})
    env.wait_ready("moved")
    env.bed.issuer.fail(other.client_id, status=503)
    env.patch_spec("moved", {"clientId": other.client_id})

    def reported_generation_2() -> dict[str, object] | None:
        cond = env.ready_condition("moved")
        return cond if cond and cond.get("observedGeneration") == 2 else None

    cond = wait_for(reported_generation_2, timeout=20, what="a status for generation 2")
    assert (cond["status"], cond["reason"]) == ("False", "AuthorityUnavailable"), cond
    assert "acquired for an earlier spec" in str(cond["message"])
    env.bed.issuer.heal(other.client_id)
    obj = env.wait_ready("moved", timeout=40)
    assert obj["status"]["appId"] == other.client_id


def test_a_renamed_token_secret_does_not_leave_the_old_one_behind(env: Env) -> None:
    app = env.secret_app("pw", secret_name="cred")
    env.create("rename", app, {"clientSecret": {"name": "cred"}})
    env.wait_ready("rename")
    env.patch_spec("rename", {"secretName": "renamed-token"})
    wait_for(lambda: env.token("renamed-token"), timeout=10, what="the new token Secret")
    wait_for(lambda: env.secret("rename-token") is None, timeout=10, what="the old token Secret to be deleted")
    env.wait_status("rename", {"secretName": "renamed-token"})  # patched after the old Secret's deletion
