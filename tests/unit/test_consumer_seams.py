"""--watch-consumers against what a production cluster does to it. Each test names the defect it
shows; the real Controller and Reconciler over in-memory I/O (tests/unit/harness.Rig), the real PodWatch
over a canned page."""

from __future__ import annotations

import json
import tracemalloc
import uuid
from typing import Any

from kubernetes import client

from graphcred.consumers.pods import classify, unrefreshable
from graphcred.consumers.podwatch import PodWatch
from graphcred.consumers.reports import REASON, STATUS_FIELD

from .fakes import gac, secret_spec
from .harness import NS, TENANT, Rig, is_ready, run, until

TOKEN = "mail-token"


def _rig() -> tuple[Rig, list[str]]:
    rig = Rig()
    rig.with_consumer_reports(watching=True)
    messages: list[str] = []

    def emit(obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        if reason == REASON:
            messages.append(message)

    rig.consumers.emit = emit
    return rig, messages


def _replica(name: str, owner: str) -> dict[str, Any]:
    """A pod of ReplicaSet `owner` reading the token through an environment variable."""
    return {"metadata": {"namespace": NS, "name": name, "uid": str(uuid.uuid4()),
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner,
                                              "uid": f"uid-{owner}", "controller": True}]},
            "spec": {"containers": [{"name": "app", "env": [
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": TOKEN, "key": "access_token"}}}]}]},
            "status": {"phase": "Running"}}


# --- 1. Events: one per pod is a flood ---------------------------------------------------------------------------
def test_one_replicaset_of_1000_flagged_pods_is_one_event_not_1000() -> None:
    """A Deployment with 1,000 replicas has one mistake, in one template: 1,000 Warning Events (each its own Event
    object: kopf posts with generateName and aggregates nothing) bury everything else on the object, and come
    back in full after every restart, leader change and rollout."""
    async def scenario() -> None:
        rig, messages = _rig()
        reports = rig.consumers
        rig.add(gac("mail", secret_spec(TENANT, str(uuid.uuid4()))))
        await until(lambda: is_ready(rig, "mail"))
        for i in range(1000):
            found = classify(_replica(f"web-7d9f8b6c5-{i:04d}", "web-7d9f8b6c5"), lambda ns, s: s == TOKEN)
            assert found is not None
            (namespace, name), consumer = found
            reports.pod_changed(namespace, name, consumer)
        await until(lambda: rig.status("mail").get(STATUS_FIELD) == 1000, what="count 1000")
        assert len(messages) == 1, f"{len(messages)} Warning Events for one ReplicaSet's pods"
        assert "1000 pods of ReplicaSet web-7d9f8b6c5" in messages[0], messages[0]
        # a rollout (a new ReplicaSet) is a new mistake: one more Event; its pods re-created by name post nothing
        for i in range(3):
            found = classify(_replica(f"web-5f6b7c8d9-{i:04d}", "web-5f6b7c8d9"), lambda ns, s: s == TOKEN)
            assert found is not None
            reports.pod_changed(found[0][0], found[0][1], found[1])
        await until(lambda: rig.status("mail").get(STATUS_FIELD) == 1003, what="count 1003")
        assert len(messages) == 2 and "3 pods of ReplicaSet web-5f6b7c8d9" in messages[1], messages
        await rig.controller.stop()

    run(scenario)


# --- 2. A regular init container is a false positive -------------------------------------------------------------
def _init_pod(**init: Any) -> dict[str, Any]:
    return {"initContainers": [{"name": "fetch-config", **init, "env": [
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": TOKEN, "key": "authorization"}}}]}],
            "containers": [{"name": "app", "volumeMounts": [{"name": "token", "mountPath": "/var/run/graphcred"}]}],
            "volumes": [{"name": "token", "secret": {"secretName": TOKEN}}]}


def test_a_regular_init_container_reading_the_token_once_at_start_is_not_flagged() -> None:
    """A regular init container runs to completion before the app starts (kubernetes.io, Init Containers): it uses
    the token within seconds of reading it and never sees an expiry. Flagging it posts a Warning saying the pod
    'will fail when it expires', counts it and fires GraphcredUnrefreshableConsumer for a pod that is fine."""
    assert unrefreshable(_init_pod()) == ()


def test_a_sidecar_init_container_is_still_flagged() -> None:
    """restartPolicy: Always makes an init container a sidecar (kubernetes.io, Sidecar Containers): it runs as long
    as the pod, so an environment variable does go stale."""
    findings = unrefreshable(_init_pod(restartPolicy="Always"))
    assert [(f.container, f.detail) for f in findings] == [("fetch-config", "TOKEN")]


# --- 3. A subPath of a projected volume's other source is a false positive ---------------------------------------
def test_a_subpath_of_a_projected_configmap_item_is_not_the_token_secret() -> None:
    """A projected volume combining a ConfigMap and the token Secret; the app mounts the config file alone with
    subPath and the token directory without: the config file is no token, the pod is fine."""
    spec = {"volumes": [{"name": "bundle", "projected": {"sources": [
                {"configMap": {"name": "app-config", "items": [{"key": "app.yaml", "path": "app.yaml"}]}},
                {"secret": {"name": TOKEN, "items": [{"key": "access_token", "path": "token/access_token"}]}}]}}],
            "containers": [{"name": "app", "volumeMounts": [
                {"name": "bundle", "mountPath": "/etc/app/app.yaml", "subPath": "app.yaml"},
                {"name": "bundle", "mountPath": "/var/run/graphcred"}]}]}
    assert unrefreshable(spec) == ()
    # the same volume with the token file itself mounted by subPath is flagged, as before
    spec["containers"][0]["volumeMounts"][0]["subPath"] = "token/access_token"
    assert [f.how.value for f in unrefreshable(spec)] == ["subPath"]


# --- 4. One namespace's failing pod watch freezes every namespace's reports ----------------------------------------
class _Watch:
    """A PodWatch as ConsumerReports sees it: its namespace, whether its lists are complete, rescan."""

    def __init__(self, namespace: str, settled: bool) -> None:
        self.namespace, self._settled = namespace, settled

    def settled(self) -> bool:
        return self._settled

    def rescan(self, namespace: str) -> None:
        pass


def test_a_namespace_whose_pod_watch_cannot_list_does_not_freeze_the_others() -> None:
    """watchNamespaces [ns, gone]: namespace `gone` was deleted, and its Role with it, so its pod watch is answered
    403 for ever and never settles. The reports of `ns`, whose watch is fine, must still go out."""
    async def scenario() -> None:
        rig, messages = _rig()
        reports = rig.consumers
        reports.attach([_Watch(NS, True), _Watch("gone", False)])  # type: ignore[list-item]
        rig.add(gac("mail", secret_spec(TENANT, str(uuid.uuid4()))))
        await until(lambda: is_ready(rig, "mail"))
        found = classify(_replica("web-0", "web"), lambda ns, s: s == TOKEN)
        assert found is not None
        reports.pod_changed(found[0][0], found[0][1], found[1])
        await until(lambda: rig.status("mail").get(STATUS_FIELD) == 1, timeout=3,
                    what="the count in ns, whose pod watch is settled")
        assert len(messages) == 1
        await rig.controller.stop()

    run(scenario)


# --- 5. A page of whole pods at 500 a page -------------------------------------------------------------------------
def _realistic_pod(i: int) -> dict[str, Any]:
    """A Deployment's pod as the apiserver returns it (managedFields, probes, a dozen env vars, status): ~4.4 KiB."""
    env = [{"name": f"SETTING_{j}", "value": "x" * 30} for j in range(12)]
    container = {"name": "app", "image": "registry.example.com/team/app@sha256:" + "a" * 64, "env": env,
                 "args": ["--port=8080", "--config=/etc/app/config.yaml"],
                 "resources": {"limits": {"cpu": "1", "memory": "512Mi"}, "requests": {"cpu": "100m"}},
                 "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
                 "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 10},
                 "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/sa"}]}
    fields = {"f:spec": {"f:containers": {'k:{"name":"app"}': {"f:env": {f'k:{{"name":"{e["name"]}"}}': {
        ".": {}, "f:name": {}, "f:value": {}} for e in env}}}}}
    conditions = ("Ready", "Initialized", "PodScheduled", "ContainersReady", "PodReadyToStartContainers")
    return {"metadata": {"name": f"app-7d9f8b6c5-{i:05d}", "namespace": f"team-{i % 50}", "uid": str(uuid.uuid4()),
                         "resourceVersion": str(i), "labels": {"app": "app", "pod-template-hash": "7d9f8b6c5"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "controller": True,
                                              "name": "app-7d9f8b6c5", "uid": str(uuid.uuid4())}],
                         "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                                            "fieldsType": "FieldsV1", "fieldsV1": fields},
                                           {"manager": "kubelet", "subresource": "status", "fieldsV1": {
                                               "f:status": {f'k:{{"type":"{t}"}}': {"f:status": {}}
                                                            for t in conditions}}}]},
            "spec": {"containers": [container], "nodeName": "node-123.example.internal", "volumes": [
                {"name": "kube-api-access", "projected": {"sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}],
                "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                                 "effect": "NoExecute", "tolerationSeconds": 300}]},
            "status": {"phase": "Running", "podIP": "10.1.2.3", "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"} for t in conditions],
                "containerStatuses": [{"name": "app", "ready": True, "restartCount": 0, "image": container["image"],
                                       "containerID": "containerd://" + "b" * 64,
                                       "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}}


class _Page:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def release_conn(self) -> None:
        pass


def test_one_page_of_whole_pods_stays_well_under_the_operators_memory_limit() -> None:
    """The chart's limit is 256 MiB. Pods are listed whole (the Secret watch lists metadata only): a page of 500
    plain pods (~4.4 KiB each) was ~2.1 MiB of JSON and ~13 MiB parsed (36 MiB for 12 KiB pods), and one PodWatch
    per watched namespace lists at once at start. Python rarely returns such peaks to the OS."""
    watch = PodWatch(client.ApiClient(), lambda *a: None, lambda *a: None, lambda ns, s: False)
    items = [_realistic_pod(i) for i in range(watch.page_size)]
    data = json.dumps({"kind": "PodList", "metadata": {"resourceVersion": "9"}, "items": items}).encode()
    del items
    watch._list_page = lambda token, namespace=None: _Page(data)  # type: ignore[method-assign]
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        watch._read_pods(None, None)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert (peak + len(data)) / 2**20 < 8, \
        f"{watch.page_size} pods a page: {(peak + len(data)) / 2**20:.1f} MiB for one page"
