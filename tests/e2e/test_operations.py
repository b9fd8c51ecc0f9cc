"""Running it for real: metrics and health endpoints, and high availability with two replicas."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import requests

from graphcred.api.keys import GROUP, PLURAL, RENEW_ANNOTATION, VERSION
from graphcred.base.times import parse_rfc3339
from graphcred_testbed.bed import wait_for

from ..helpers import Env, lease_holder, two_replicas

pytestmark = pytest.mark.bed


def _sample(text: str, metric: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(metric + "{") and not line.startswith(metric + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_and_health_endpoints(env: Env) -> None:
    base = env.operator.metrics_url()
    assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
    wait_for(lambda: requests.get(f"{base}/readyz", timeout=5).status_code == 200, timeout=30,
             what="/readyz once the operator has started")
    app = env.secret_app("metrics", secret_name="cred")
    env.client_secret("wrong", "not-it")
    env.create("scraped", app, {"clientSecret": {"name": "cred"}})
    env.create("refused", app, {"clientSecret": {"name": "wrong"}})
    obj = env.wait_ready("scraped")
    env.wait_condition("refused", "False", "Unauthorized")
    text = requests.get(f"{base}/metrics", timeout=5).text
    expires = parse_rfc3339(obj["status"]["expiresOn"])
    assert expires is not None
    assert _sample(text, "graphcred_token_expiration_timestamp_seconds", namespace=env.namespace,
                   name="scraped") == expires.timestamp()
    assert _sample(text, "graphcred_consecutive_failures", namespace=env.namespace, name="refused") == 1
    assert (_sample(text, "graphcred_token_acquisitions_total", result="success", reason="TokenIssued") or 0) >= 1
    assert (_sample(text, "graphcred_token_acquisitions_total", result="failure", reason="Unauthorized") or 0) >= 1
    assert (_sample(text, "graphcred_credentials", ready="True", reason="TokenIssued") or 0) >= 1
    assert (_sample(text, "graphcred_credentials", ready="False", reason="Unauthorized") or 0) >= 1
    assert (_sample(text, "graphcred_token_acquisition_duration_seconds_count") or 0) >= 2
    # deleted credentials leave no stale series behind
    env.delete("scraped")
    wait_for(lambda: _sample(requests.get(f"{base}/metrics", timeout=5).text,
                             "graphcred_token_expiration_timestamp_seconds", namespace=env.namespace,
                             name="scraped") is None, timeout=15, what="the series of a deleted credential to go")
    print("\n/metrics sample:\n" + "\n".join(
        line for line in text.splitlines() if (line.startswith("graphcred_") and env.namespace in line)
        or line.startswith(("graphcred_credentials", "graphcred_token_acquisitions_total"))))


def test_two_replicas_one_acts_and_the_other_takes_over(env: Env, operator_logdir: Path) -> None:
    with two_replicas(env, operator_logdir, "replica", "--lease-duration=6", "--token-timeout=3") as replicas:
        leader_id, leader, standby = replicas.leader_id, replicas.leader, replicas.standby
        app = env.secret_app("ha", secret_name="cred", lifetime=3600)
        names = [f"ha{i}" for i in range(5)]
        for name in names:
            env.create(name, app, {"clientSecret": {"name": "cred"}})
        for name in names:
            env.wait_ready(name)
        # only the leader acquires, and identical credentials share one request
        assert env.bed.issuer.token_requests(app.client_id) == 1
        assert "TokenIssued" not in standby.logs()
        versions = {n: env.secret(f"{n}-token").metadata.resource_version for n in names}  # type: ignore[union-attr]

        leader.kill()
        killed = time.monotonic()
        wait_for(lambda: lease_holder(env) not in (None, leader_id), timeout=30, interval=0.1,
                 what="the standby to take the Lease")
        env.create("after", app, {"clientSecret": {"name": "cred"}})
        env.wait_ready("after", timeout=30)
        takeover = time.monotonic() - killed
        # nothing lost, nothing written twice: the old tokens are resumed, not re-acquired
        assert env.bed.issuer.token_requests(app.client_id) == 2  # only "after": the others are resumed
        for name in names:
            assert env.secret(f"{name}-token").metadata.resource_version == versions[name]  # type: ignore[union-attr]
        assert re.search(r"became leader", standby.logs())
        print(f"\nHA takeover after SIGKILL of the leader (lease 6 s): new credential Ready {takeover:.1f} s "
              "after the kill")


def test_an_apiserver_restart_is_logged_as_warnings_while_credentials_keep_refreshing(env: Env) -> None:
    app = env.secret_app("outage", secret_name="cred", lifetime=20)
    env.create("before", app, {"clientSecret": {"name": "cred"}})
    env.wait_ready("before")
    first = env.token("before-token")
    offset = len(env.operator.logs(this_run=True))
    env.bed.control_plane.restart_apiserver(downtime=3.0)
    wait_for(lambda: env.token("before-token") not in (None, first), timeout=30,
             what="a refresh after the apiserver came back")
    env.create("after", app, {"clientSecret": {"name": "cred"}})  # the credential watch reconnected
    env.wait_ready("after", timeout=60)
    lines = [json.loads(line) for line in env.operator.logs(this_run=True)[offset:].splitlines()
             if line.startswith("{")]
    watches = [line for line in lines if line["logger"].split(".")[0] == "kopf"
               or line["logger"] == "graphcred.kube.metawatch"]
    errors = [line["message"][:160] for line in watches if line["level"] == "error"]
    assert not errors, f"a watch logged the outage it recovered from at ERROR: {errors}"
    reconnects = [line for line in watches if line["level"] == "warning"
                  and line["message"].startswith("credential watch")]
    assert reconnects, "no warning of the credential watch: the test saw no reconnect"


def test_forty_renew_annotations_send_at_most_four_token_requests_and_the_last_is_answered(env: Env) -> None:
    """Security review 6 (bed scenario L): each new value of the renew annotation sent a token request at once, 40
    in 7.7 s. Now three at once, then one every 30 s per credential; values arriving meanwhile join the pending
    one, which answers the newest (what `graphcred renew` waits for)."""
    app = env.secret_app("renew-burst-secret")
    env.create("burst", app, {"clientSecret": {"name": "cred"}})
    env.wait_ready("burst")
    before = env.bed.issuer.token_requests(app.client_id)
    started = time.monotonic()
    for i in range(40):
        env.bed.custom.patch_namespaced_custom_object(GROUP, VERSION, env.namespace, PLURAL, "burst", {
            "metadata": {"annotations": {RENEW_ANNOTATION: f"burst-{i}"}}})
    patched = time.monotonic() - started
    wait_for(lambda: (env.get("burst").get("status") or {}).get("lastRenewRequest") == "burst-39", timeout=60,
             what="the last renew request answered")
    sent = env.bed.issuer.token_requests(app.client_id) - before
    print(f"40 renew annotations patched in {patched:.1f} s: {sent} token requests; last answered after "
          f"{time.monotonic() - started:.1f} s")
    assert 1 <= sent <= 4, f"{sent} token requests for 40 renews"
    env.wait_ready("burst")
