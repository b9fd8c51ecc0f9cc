"""--watch-consumers on the real bed: the pods of one ReplicaSet (its controller's ownerReference, as the
ReplicaSet controller sets it; the bed runs no such controller, so the test creates the pods itself, owned by a real
ReplicaSet object the garbage collector finds) are one mistake and get one Warning Event, not one each."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from graphcred_testbed.bed import wait_for

from ..helpers import Env
from .test_consumer_warnings import (  # noqa: F401 - fixtures
    REASON,
    cenv,
    consumers_operator,
    count,
    ready_credential,
    submit_pod,
    warnings,
)

pytestmark = pytest.mark.bed
REPLICAS = 20


def replica_set(env: Env, name: str) -> dict[str, Any]:
    """A ReplicaSet object (nothing reconciles it here); its controller ownerReference for pods."""
    labels = {"app": name}
    body = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name},
            "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}}}}
    created = client.AppsV1Api(env.bed.api).create_namespaced_replica_set(env.namespace, body)
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name, "uid": created.metadata.uid,
            "controller": True}


def owned_pod(env: Env, name: str, owner: dict[str, Any]) -> None:
    """A pod of `owner` (as its controller creates it: owned from the start) reading the token from env."""
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "ownerReferences": [owner]},
            "spec": {"automountServiceAccountToken": False, "containers": [
                {"name": "app", "image": "registry.example/app:1", "env": [{"name": "ACCESS_TOKEN", "valueFrom": {
                    "secretKeyRef": {"name": "mail-token", "key": "access_token"}}}]}]}}
    submit_pod(env, body)


def test_a_replicasets_flagged_pods_get_one_event_naming_the_count(cenv: Env) -> None:  # noqa: F811
    """The pods are there before their credential (found by the rescan its new token Secret starts): one Event."""
    owner = replica_set(cenv, "web-7d9f8b6c5")
    for i in range(REPLICAS):
        owned_pod(cenv, f"web-7d9f8b6c5-{i:02d}", owner)
    token = ready_credential(cenv)
    wait_for(lambda: count(cenv) == REPLICAS, timeout=20, what=f"status.unrefreshableConsumers {REPLICAS}")
    messages = wait_for(lambda: warnings(cenv), timeout=10, what=f"an {REASON} Event")
    cenv.assert_stays(lambda: len(warnings(cenv)) == 1, 3, "one Event for the ReplicaSet's pods")
    assert f"(one of {REPLICAS} pods of ReplicaSet web-7d9f8b6c5)" in messages[0], messages
    assert token not in messages[0]
    # a pod replaced by its ReplicaSet (another uid, same owner; the new one comes while the old one terminates)
    owned_pod(cenv, "web-7d9f8b6c5-20", owner)
    cenv.bed.core.delete_namespaced_pod("web-7d9f8b6c5-00", cenv.namespace)
    wait_for(lambda: count(cenv) == REPLICAS, timeout=10, what=f"the count back at {REPLICAS}")
    cenv.assert_stays(lambda: len(warnings(cenv)) == 1, 3, "no Event for a replacement pod")
