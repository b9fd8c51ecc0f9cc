"""Restart targets (issue 28, DESIGN §9) on the bed's apiserver: graphcred restarts a credential's workloads once per
new token, right after writing it, and for nothing else.

This bed runs no Deployment or StatefulSet controller (tests/node has the real ones, with pods reading the token
from an environment variable): where a rollout's progress matters, the test writes the workload's status as its
controller would, and says so.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from graphcred.api.keys import RESTARTED_AT_ANNOTATION
from graphcred_testbed.bed import wait_for
from tests.helpers import Env

pytestmark = pytest.mark.bed


def apps(env: Env) -> client.AppsV1Api:
    return client.AppsV1Api(env.bed.api)


def deployment(env: Env, name: str, replicas: int = 2) -> None:
    labels = {"app": name}
    apps(env).create_namespaced_deployment(env.namespace, {
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]}}}})
    rolled_out(env, name)


def rolled_out(env: Env, name: str) -> None:
    """What the Deployment controller writes once a rollout is complete (this bed runs none)."""
    body = apps(env).read_namespaced_deployment(name, env.namespace)
    replicas = body.spec.replicas
    apps(env).patch_namespaced_deployment_status(name, env.namespace, {"status": {
        "observedGeneration": body.metadata.generation, "replicas": replicas, "updatedReplicas": replicas,
        "readyReplicas": replicas, "availableReplicas": replicas}})


def restarted_at(env: Env, name: str) -> str | None:
    body = apps(env).read_namespaced_deployment(name, env.namespace)
    return (body.spec.template.metadata.annotations or {}).get(RESTARTED_AT_ANNOTATION)


def records(env: Env, name: str) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in (env.get(name).get("status") or {}).get("restarts") or []}


def credential(env: Env, name: str, targets: list[dict[str, Any]], **spec: Any) -> None:
    app = env.secret_app(f"{name}-secret")
    env.create(name, app, {"clientSecret": {"name": "cred"}}, restartTargets=targets, **spec)
    env.wait_ready(name)
    wait_for(lambda: len(records(env, name)) == len(targets), timeout=15, what="the targets recorded")


def test_each_new_token_restarts_each_target_once_and_nothing_else_does(env: Env) -> None:
    deployment(env, "web")
    deployment(env, "api")
    credential(env, "rt", [{"kind": "Deployment", "name": "web"}, {"kind": "Deployment", "name": "api"},
                           {"kind": "StatefulSet", "name": "missing"}])
    first = records(env, "rt")
    assert {r["outcome"] for r in first.values()} == {"Current"}, first
    assert restarted_at(env, "web") is None, "the first token restarts nothing: the pods start with it"

    token_times = []
    for _ in range(3):
        token_times.append(env.renew("rt"))
        wait_for(lambda: records(env, "rt")["web"].get("tokenTime") == token_times[-1]
                 and records(env, "rt")["api"].get("tokenTime") == token_times[-1], timeout=15,
                 what="both Deployments restarted for the new token")
        for name in ("web", "api"):
            rolled_out(env, name)
    got = records(env, "rt")
    assert got["web"]["outcome"] == got["api"]["outcome"] == "Restarted"
    assert got["missing"]["outcome"] == "NotFound" and "not found" in got["missing"]["message"]
    generation = apps(env).read_namespaced_deployment("web", env.namespace).metadata.generation
    assert generation == 1 + 3, f"three new tokens, three rollouts of web (generation {generation})"
    reasons = [e[1] for e in env.events("rt")]
    assert reasons.count("WorkloadRestarted") == 6, reasons
    assert reasons.count("RestartNotFound") == 1, "a missing target is told once, not at every token"

    # nothing but a new token restarts: a re-render (secretTemplate), then an operator restart
    env.patch_spec("rt", {"secretTemplate": {"metadata": {"labels": {"team": "a"}}}})
    wait_for(lambda: (env.secret("rt-token").metadata.labels or {}).get("team") == "a", timeout=15,
             what="the Secret rendered again")
    env.operator.stop()
    env.operator.start()
    wait_for(lambda: f"resuming {env.namespace}/rt" in env.operator.logs(this_run=True), timeout=30,
             what="the restarted operator's first pass of the credential")
    env.assert_stays(lambda: apps(env).read_namespaced_deployment("web", env.namespace).metadata.generation
                     == generation, 3, "a re-render or an operator restart must cause no rollout")


def test_a_rollout_still_in_progress_is_not_stacked_and_the_restart_follows_it(env: Env) -> None:
    deployment(env, "web")
    credential(env, "stuck", [{"kind": "Deployment", "name": "web"}])
    env.renew("stuck")
    wait_for(lambda: restarted_at(env, "web") is not None, timeout=15, what="the first restart")
    first = restarted_at(env, "web")
    # the controller never finishes it (an unschedulable pod, say): no status written
    newer = env.renew("stuck")
    wait_for(lambda: records(env, "stuck")["web"]["outcome"] == "Waiting", timeout=15, what="the wait reported")
    assert "in progress" in records(env, "stuck")["web"]["message"] or "not yet seen" in \
        records(env, "stuck")["web"]["message"]
    # past the first look again (10 s after the wait began): no second rollout on top of a stuck one
    env.assert_stays(lambda: restarted_at(env, "web") == first, 12, "no second rollout on top of a stuck one")
    assert ("Warning", "RestartWaiting") in [e[:2] for e in env.events("stuck")]
    rolled_out(env, "web")  # the rollout completes: the restart for the newer token follows
    wait_for(lambda: records(env, "stuck")["web"].get("tokenTime") == newer
             and records(env, "stuck")["web"]["outcome"] == "Restarted", timeout=45,
             what="the restart once the rollout is done")  # its next look is 30 s after the wait began
    assert restarted_at(env, "web") != first


def test_the_crd_refuses_a_target_in_another_namespace(env: Env) -> None:
    app = env.secret_app("rt-other-ns")
    with pytest.raises(ApiException) as refused:
        env.create("other", app, {"clientSecret": {"name": "cred"}},
                   restartTargets=[{"kind": "Deployment", "name": "web", "namespace": "kube-system"}])
    assert refused.value.status == 422 and "own namespace" in str(refused.value.body)
    with pytest.raises(ApiException) as unknown:
        env.create("other", app, {"clientSecret": {"name": "cred"}},
                   restartTargets=[{"kind": "CronJob", "name": "web"}])
    assert unknown.value.status == 422
