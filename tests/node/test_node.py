"""A real node (issue 15): a Deployment's pods are scheduled, started by kubelet under containerd and runc, probed,
mount a Secret that kubelet refreshes, reach the apiserver through the `kubernetes` Service's ClusterIP, and are
replaced by the ReplicaSet when deleted. Stopping the node leaves no namespace, cgroup, mount or process.
Select with `pytest -m node`."""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client

from graphcred_testbed.bed import Bed, wait_for
from graphcred_testbed.node import NODE_NAME, SERVICE_IP

from .conftest import host_network, host_sysctls, pod_ready

pytestmark = [pytest.mark.bed, pytest.mark.node]

HOST_REPLY = "hello-from-the-host"


@dataclass
class App:
    bed: Bed
    namespace: str
    image: str
    host_port: int

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.bed.api)

    def ready_pods(self) -> list[client.V1Pod]:
        pods = self.bed.core.list_namespaced_pod(self.namespace, label_selector="app=reader").items
        return [p for p in pods if p.metadata.deletion_timestamp is None and pod_ready(p)]

    def log(self, pod: str) -> str:
        return self.bed.node.logs(self.namespace, pod, "reader")



class _HostReply(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = HOST_REPLY.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def host_server() -> Iterator[int]:
    """An HTTP server on host 127.0.0.1 that pods reach through Node.forward."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HostReply)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _deployment(image: str, forwarded: tuple[str, int]) -> dict[str, object]:
    ip, port = forwarded
    script = (
        "httpd -p 8080 -h /secret\n"
        # the in-cluster way to the apiserver: the env vars kubelet derives from the `kubernetes` Service. busybox
        # has no working TLS client; a plain HTTP request gets Go's TLS server's own answer, which names it
        'if printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 5 "$KUBERNETES_SERVICE_HOST" "$KUBERNETES_SERVICE_PORT" '
        '| grep -q "HTTP request to an HTTPS server"; then '
        'echo "apiserver=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT reachable"; fi\n'
        # nc, not wget: Debian's static busybox wget crashes where there is no NSS (no libc in the image)
        f'echo "host=$(printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 5 {ip} {port} | tail -n 1)"\n'
        'while true; do echo "value=$(cat /secret/value)"; sleep 1; done\n'
    )
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "reader"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "reader"}},
            "template": {
                "metadata": {"labels": {"app": "reader"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "securityContext": {"runAsUser": 65532, "runAsNonRoot": True,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "reader", "image": image, "imagePullPolicy": "IfNotPresent",
                        "command": ["/bin/sh", "-c", script],
                        "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": "payload", "mountPath": "/secret", "readOnly": True}],
                        "readinessProbe": {"httpGet": {"path": "/value", "port": 8080}, "periodSeconds": 1},
                        "livenessProbe": {"exec": {"command": ["cat", "/secret/value"]}, "periodSeconds": 2},
                    }],
                    "volumes": [{"name": "payload", "secret": {"secretName": "payload"}}],
                },
            },
        },
    }


@pytest.fixture(scope="module")
def app(node_bed: Bed, host_server: int) -> Iterator[App]:
    namespace = f"node-{uuid.uuid4().hex[:8]}"
    node_bed.create_namespace(namespace)
    image = node_bed.node.import_busybox()
    node_bed.core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="payload"), string_data={"value": "first"}))
    # pods are refused until the namespace's ServiceAccount exists
    wait_for(lambda: node_bed.core.list_namespaced_service_account(namespace).items, what="default ServiceAccount")
    application = App(node_bed, namespace, image, host_server)
    application.apps.create_namespaced_deployment(namespace, _deployment(image, node_bed.node.forward(host_server)))
    wait_for(lambda: len(application.ready_pods()) == 2, timeout=180, interval=0.5, what="2 Ready pods")
    yield application
    node_bed.delete_namespace(namespace)


def test_deployment_pods_run_ready_on_the_node(app: App) -> None:
    pods = app.ready_pods()
    assert {p.spec.node_name for p in pods} == {NODE_NAME}
    assert all(p.status.pod_ip.startswith("10.88.") for p in pods)
    for pod in pods:
        log = wait_for(lambda pod=pod: (text := app.log(pod.metadata.name)) and "value=" in text and text,
                       timeout=30, what=f"{pod.metadata.name} logging")
        assert "value=first" in log
        assert f"apiserver={SERVICE_IP}:443 reachable" in log
        assert f"host={HOST_REPLY}" in log


def test_kubelet_refreshes_the_mounted_secret(app: App) -> None:
    pods = [p.metadata.name for p in app.ready_pods()]
    app.bed.core.patch_namespaced_secret("payload", app.namespace, {"stringData": {"value": "second"}})
    written = time.monotonic()
    for name in pods:
        wait_for(lambda name=name: "value=second" in app.log(name), timeout=90, interval=0.5,
                 what=f"{name} reading the updated Secret")
    print(f"Secret write to both pods reading it: {time.monotonic() - written:.1f} s")


def test_a_deleted_pod_is_replaced(app: App) -> None:
    """And the pods' gateway keeps its MAC address as pods come and go: a bridge that took its lowest port's
    address changed it, and the other pods' ARP entries pointed nowhere for 10-30 s (the operator's leader lost its
    Lease to connect timeouts when consumer pods started)."""
    gateway = app.bed.node.bridge_mac()
    before = {p.metadata.name for p in app.ready_pods()}
    victim = sorted(before)[0]
    app.bed.core.delete_namespaced_pod(victim, app.namespace)
    after = wait_for(lambda: (names := {p.metadata.name for p in app.ready_pods()}) and len(names) == 2
                     and victim not in names and names, timeout=120, interval=0.5, what="a replacement pod Ready")
    assert len(after - before) == 1
    assert app.bed.node.bridge_mac() == gateway


def _host_mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


def test_the_host_keeps_its_sysctls_network_and_sees_no_node_mounts(node_bed: Bed, app: App,
                                                                     host_sysctls_before: dict[str, str],
                                                                     host_network_before: str) -> None:
    assert app.ready_pods()
    # pods, their veths, the bridge, the ClusterIP: all inside the node's network namespace
    assert host_network() == host_network_before
    # kubelet "corrects" these host-wide on start; in its mount namespace it reads covers instead
    assert host_sysctls() == host_sysctls_before
    # overlay root filesystems and Secret volumes live in the node's mount namespace only
    assert str(node_bed.node.dir) not in _host_mounts()


def test_stopping_the_node_leaves_nothing(node_bed: Bed, app: App) -> None:
    node = node_bed.node
    assert app.ready_pods()  # containers are running: there is something to clean up
    node.stop()
    assert node.id not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert str(node.dir) not in _host_mounts()
    assert not [root for root in node.cgroups.roots if root.exists()]
    leftovers = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(node.dir) in cmdline or node.id in cmdline:
            leftovers.append(cmdline)
    assert leftovers == []
