"""--watch-consumers on the real bed: pods created directly on the apiserver (no scheduler or kubelet is needed to
read their specs: they stay Pending), a Ready GraphAppCredential, and what the operator reports about the pods that
read its token Secret through subPath, env or envFrom: a Warning Event naming each, status.unrefreshableConsumers and
the metric. A plain volume mount, and a pod reading another Secret, are not flagged.

Without the flag nothing watches pods: the operator, run with exactly the chart's default RBAC (no pod access), never
asks for one (a list or watch would be refused, and the refusal logged). That test comes first and uses the session
operator's place; the others run their own operator with --watch-consumers (the session operator is stopped for
them: two operators must not reconcile the same objects) and start it again after."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from graphcred_testbed.bed import Bed, wait_for
from graphcred_testbed.operator_process import OperatorProcess

from ..conftest import LeakCorpus
from ..helpers import Env
from .test_chart import chart_operator, release_namespace  # noqa: F401 - release_namespace: a fixture

pytestmark = pytest.mark.bed

REASON = "UnrefreshableConsumer"
FIELD = "unrefreshableConsumers"


@pytest.fixture(scope="module")
def consumers_operator(bed: Bed, operator: OperatorProcess, operator_logdir: Path) -> Iterator[OperatorProcess]:
    operator.stop()
    op = OperatorProcess(bed, operator_logdir, "--token-timeout=3", "--watch-consumers", name="graphcred-consumers",
                         log_format="json")
    try:
        yield op.start()
    finally:
        op.stop()
        operator.start()


@pytest.fixture
def cenv(bed: Bed, namespace: str, consumers_operator: OperatorProcess, leak_corpus: LeakCorpus) -> Iterator[Env]:
    e = Env(bed, namespace, consumers_operator)
    yield e
    leak_corpus.collect(e)


def ready_credential(env: Env, name: str = "mail") -> str:
    """A Ready GraphAppCredential `name` writing `<name>-token`; its token."""
    app = env.secret_app(f"{name}-secret", secret_name=f"{name}-cred")
    env.create(name, app, {"clientSecret": {"name": f"{name}-cred"}})
    env.wait_ready(name)
    token = env.token(f"{name}-token")
    assert token is not None
    return token


def create_pod(env: Env, name: str, container: dict[str, Any], volumes: list[dict[str, Any]] | None = None) -> None:
    submit_pod(env, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                     "spec": {"automountServiceAccountToken": False, "volumes": volumes or [],
                              "containers": [{"name": "app", "image": "registry.example/app:1", **container}]}})


def submit_pod(env: Env, body: dict[str, Any]) -> None:
    """Create the pod `body` in env's namespace, waiting for the namespace's default ServiceAccount if need be."""
    name = body["metadata"]["name"]

    def attempt() -> bool | None:
        try:
            env.bed.core.create_namespaced_pod(env.namespace, body)
        except client.ApiException as exc:
            if exc.status == 403 and "serviceaccount" in str(exc.body):
                return None  # a new namespace: its default ServiceAccount is not there yet
            raise
        return True

    wait_for(attempt, timeout=15, what=f"pod {name} created")


def sub_path_pod(env: Env, name: str, secret: str = "mail-token") -> None:
    create_pod(env, name, {"volumeMounts": [{"name": "token", "mountPath": "/etc/graphcred/token",
                                             "subPath": "access_token"}]},
               [{"name": "token", "secret": {"secretName": secret}}])


def env_pod(env: Env, name: str, secret: str = "mail-token") -> None:
    create_pod(env, name, {"env": [{"name": "ACCESS_TOKEN", "valueFrom": {
        "secretKeyRef": {"name": secret, "key": "access_token"}}}]})


def env_from_pod(env: Env, name: str, secret: str = "mail-token") -> None:
    create_pod(env, name, {"envFrom": [{"secretRef": {"name": secret}}]})


def volume_pod(env: Env, name: str, secret: str = "mail-token") -> None:
    create_pod(env, name, {"volumeMounts": [{"name": "token", "mountPath": "/var/run/graphcred", "readOnly": True}]},
               [{"name": "token", "secret": {"secretName": secret}}])


def warnings(env: Env, name: str = "mail") -> list[str]:
    return [message for type_, reason, message in env.events(name) if (type_, reason) == ("Warning", REASON)]


def count(env: Env, name: str = "mail") -> Any:
    return env.get(name).get("status", {}).get(FIELD)


def gauge(op: OperatorProcess, namespace: str, name: str = "mail") -> float | None:
    text = requests.get(f"{op.metrics_url()}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "graphcred_unrefreshable_consumers" \
                    and sample.labels == {"namespace": namespace, "name": name}:
                return sample.value
    return None


def test_without_the_flag_no_pod_is_listed_or_watched(env: Env, release_namespace: str,  # noqa: F811
                                                       operator_logdir: Path) -> None:
    """With the chart's default RBAC, which grants no pod access, a pod list or watch would be refused (HTTP 403) and
    logged: chart_operator fails on any 403 in the operator's log."""
    with chart_operator(env, operator_logdir, "consumers-off", []) as op:
        ready_credential(env)
        sub_path_pod(env, "reader-0")
        env.assert_stays(lambda: not warnings(env), 3, "no UnrefreshableConsumer Event without --watch-consumers")
        assert count(env) is None
        logs = op.logs(this_run=True)
        assert "consumer warnings disabled" in logs, "the operator says the feature is off"
        assert "pod watch" not in logs


def test_pods_that_never_see_a_refresh_are_flagged_counted_and_measured(cenv: Env) -> None:
    token = ready_credential(cenv)
    sub_path_pod(cenv, "reader-0")
    env_pod(cenv, "env-0")
    env_from_pod(cenv, "envfrom-0")
    volume_pod(cenv, "good-0")
    env_pod(cenv, "other-0", secret="database-password")  # reads another Secret: none of graphcred's business
    messages = wait_for(lambda: (m := warnings(cenv)) and len(m) >= 3 and m, timeout=15,
                        what="three UnrefreshableConsumer Events")
    pods = sorted(m.split()[1] for m in messages)
    assert pods == [f"{cenv.namespace}/{p}" for p in ("env-0", "envfrom-0", "reader-0")], messages
    [sub_path] = [m for m in messages if "/reader-0 " in m]
    assert sub_path == (f"pod {cenv.namespace}/reader-0 container app reads mail-token through a subPath mount at "
                        "/etc/graphcred/token; it will keep the first token and fail when it expires (the kubelet "
                        "never updates a subPath mount); mount the Secret as a volume without subPath")
    assert any("environment variable ACCESS_TOKEN" in m for m in messages)
    assert all(token not in m for m in messages)
    print(f"Warning {REASON}: {sub_path}")  # quoted in the closing note (pytest -s)
    wait_for(lambda: count(cenv) == 3, timeout=10, what="status.unrefreshableConsumers 3")
    assert cenv.ready_condition("mail")["status"] == "True"  # type: ignore[index]
    wait_for(lambda: gauge(cenv.operator, cenv.namespace) == 3, timeout=10, what="the metric at 3")

    cenv.bed.core.delete_namespaced_pod("env-0", cenv.namespace)  # unscheduled: gone at once
    wait_for(lambda: count(cenv) == 2, timeout=10, what="the count down to 2 after a deletion")
    wait_for(lambda: gauge(cenv.operator, cenv.namespace) == 2, timeout=10, what="the metric at 2")
    # a finished pod does not count (Succeeded: it cannot fail any more)
    cenv.bed.core.patch_namespaced_pod_status("envfrom-0", cenv.namespace, {"status": {"phase": "Succeeded"}})
    wait_for(lambda: count(cenv) == 1, timeout=10, what="the count down to 1 after a pod finished")
    assert len(warnings(cenv)) == 3, "updates and deletions post no Event"


def test_a_pod_older_than_its_credential_is_flagged_too(cenv: Env) -> None:
    sub_path_pod(cenv, "early-0", secret="late-token")
    app = cenv.secret_app("late-secret", secret_name="late-cred")
    cenv.create("late", app, {"clientSecret": {"name": "late-cred"}})
    cenv.wait_ready("late")
    wait_for(lambda: warnings(cenv, "late"), timeout=15, what="the Event about the pod that was there first")
    wait_for(lambda: count(cenv, "late") == 1, timeout=10, what="status.unrefreshableConsumers 1")
    cenv.bed.core.delete_namespaced_pod("early-0", cenv.namespace)
    wait_for(lambda: count(cenv, "late") is None, timeout=10, what="the count removed: no consumer left")
