"""The chart, installed for real on the bed's node, with the image built from the Dockerfile (issue 15): the
operator pods run as the chart says (uid 65532, read-only root filesystem, probes passing), get a credential Ready
through their in-cluster ServiceAccount and the chart's RBAC, survive three minutes as leader and standby, hand
over when the leader pod is deleted; consumer pods on the node read the token Secret through a volume (every
refresh, never an expired token), a subPath and an environment variable (the first token only, flagged).
`helm upgrade` and `helm uninstall` (the CRD stays). Select with `pytest -m node`; `-s` prints the figures."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from graphcred.api.keys import GROUP, PLURAL, VERSION
from graphcred_testbed.bed import Bed, wait_for
from graphcred_testbed.binaries import binary
from graphcred_testbed.node import NODE_NAME

from ..helpers import helm_env
from .conftest import pod_ready

# the module's first test also pays for the node, the image import and helm install; the standby test waits 3 min
pytestmark = [pytest.mark.bed, pytest.mark.node, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "graphcred"
IMAGE_REPOSITORY, IMAGE_TAG = "ghcr.io/graphcred/graphcred", "bed"
RELEASE, RELEASE_NS = "graphcred", "graphcred-system"
APP_NS = "consumers"
LIFETIME = 60  # seconds: the bed's tokens, so that a few minutes see several refreshes
REFRESH_BEFORE = "40s"  # a refresh every 20 s or so
STANDBY_WINDOW = 180.0  # seconds both replicas must stay Running without a restart
CONSUMER_WINDOW = 130.0  # seconds the consumers are watched: six refreshes or so, two expiries of the first token
TOKEN_FILE = "/var/run/graphcred/access_token"


def watch_script(read: str) -> str:
    """busybox sh: each second, `read` the token; print a short digest of it (never the token) when it changed."""
    return (f'last=""; while true; do h=$(printf %s "$({read})" | md5sum | cut -c1-12); '
            'if [ "$h" != "$last" ]; then echo "token $h"; last=$h; fi; sleep 1; done')


def digest(token: str) -> str:
    return hashlib.md5(token.encode()).hexdigest()[:12]  # an identifier in logs, not security


@dataclass
class Release:
    bed: Bed
    helm_env: dict[str, str]
    ready_at: float
    # every token the Secret held while the test watched: digest -> (first seen, expires)
    tokens: dict[str, tuple[dt.datetime, dt.datetime]] = field(default_factory=dict)

    def operator_pods(self) -> list[client.V1Pod]:
        pods = self.bed.core.list_namespaced_pod(RELEASE_NS, label_selector="app.kubernetes.io/name=graphcred").items
        return [p for p in pods if p.metadata.deletion_timestamp is None]

    def ready_operator_pods(self) -> list[client.V1Pod]:
        return [p for p in self.operator_pods() if pod_ready(p)]

    def leader(self) -> str | None:
        try:
            lease = client.CoordinationV1Api(self.bed.api).read_namespaced_lease("graphcred-leader", RELEASE_NS)
        except client.ApiException:
            return None
        holder: str | None = lease.spec.holder_identity
        return holder

    def helm(self, *args: str) -> str:
        out = subprocess.run([binary("helm"), *args], capture_output=True, text=True, env=self.helm_env, check=False)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def token_secret(self) -> tuple[str, dt.datetime] | None:
        try:
            secret = self.bed.core.read_namespaced_secret("mail-token", APP_NS)
        except client.ApiException:
            return None
        data = secret.data or {}
        if "access_token" not in data:
            return None
        token = base64.b64decode(data["access_token"]).decode()
        expires = dt.datetime.fromisoformat(base64.b64decode(data["expires_on"]).decode().replace("Z", "+00:00"))
        return token, expires

    def record_token(self) -> str | None:
        """Note the Secret's current token (digest, first time seen, expiry); returns its digest."""
        current = self.token_secret()
        if current is None:
            return None
        key = digest(current[0])
        self.tokens.setdefault(key, (dt.datetime.now(dt.UTC), current[1]))
        return key



def _restarts(pod: client.V1Pod) -> int:
    return sum(c.restart_count for c in (pod.status.container_statuses or []))


@pytest.fixture(scope="module")
def release(node_bed: Bed, image_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    bed = node_bed
    bed.node.import_image(image_archive)
    env = helm_env(tmp_path_factory.mktemp("helm"), bed)
    for namespace in (RELEASE_NS, APP_NS):
        bed.create_namespace(namespace)
        wait_for(lambda ns=namespace: bed.core.list_namespaced_service_account(ns).items, what="default SA")
    # the bed's issuer is a private authority host: its CA, as a cluster admin would hand it to the chart
    bed.core.create_namespaced_config_map(RELEASE_NS, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="issuer-ca"), data={"ca.crt": bed.issuer_ca_file.read_text()}))
    rel = Release(bed, env, time.monotonic())
    rel.helm("install", RELEASE, str(CHART), "--namespace", RELEASE_NS,
             "--set", f"image.repository={IMAGE_REPOSITORY}", "--set", f"image.tag={IMAGE_TAG}",
             "--set", "image.pullPolicy=Never",  # imported into the node; never pulled
             "--set", "replicaCount=2", "--set", "caBundle.configMapName=issuer-ca",
             "--set", "consumerWarnings.enabled=true",
             "--set", f"authorityHosts={{{bed.node_authority_host}}}")  # ... and allows it, as the admin must
    wait_for(lambda: len(rel.ready_operator_pods()) == 2, timeout=180, interval=1, what="2 operator pods Ready")
    rel.ready_at = time.monotonic()  # the standby window counts from here: both Running and Ready
    yield rel
    for namespace in (APP_NS, RELEASE_NS):
        bed.delete_namespace(namespace)


def test_the_operator_pods_run_as_the_chart_says(release: Release) -> None:
    pods = release.ready_operator_pods()
    assert len(pods) == 2 and {p.spec.node_name for p in pods} == {NODE_NAME}
    for pod in pods:
        [container] = pod.spec.containers
        assert container.image == f"{IMAGE_REPOSITORY}:{IMAGE_TAG}"
        assert pod.spec.service_account_name == RELEASE
        [status] = pod.status.container_statuses
        assert status.ready and status.restart_count == 0 and status.state.running is not None
        # as the kernel runs it, not only as the spec asks
        pid = release.bed.node.container_pid(status.container_id)
        proc = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if ":\t" in line)
        assert proc["Uid"].split() == ["65532"] * 4, proc["Uid"]
        assert proc["Gid"].split() == ["65532"] * 4, proc["Gid"]
        assert proc["NoNewPrivs"] == "1" and proc["Seccomp"] == "2", (proc["NoNewPrivs"], proc["Seccomp"])
        assert int(proc["CapEff"], 16) == 0, proc["CapEff"]
        root = [line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
                if line.split()[4] == "/"]
        assert root and "ro" in root[-1][5].split(","), root
        plain = client.ApiClient().sanitize_for_serialization
        print(f"{pod.metadata.name}: securityContext {json.dumps(plain(container.security_context))}; "
              f"pod securityContext {json.dumps(plain(pod.spec.security_context))}; "
              f"as run: uid {proc['Uid'].split()[0]}, NoNewPrivs {proc['NoNewPrivs']}, Seccomp {proc['Seccomp']}, "
              f"CapEff {proc['CapEff']}, root mount {root[-1][5]}; restarts {status.restart_count}")


def test_a_credential_gets_ready_through_the_in_cluster_service_account(release: Release) -> None:
    bed = release.bed
    assert bed.node_authority_host is not None
    secret = f"s3cret-{uuid.uuid4().hex[:12]}"
    app = bed.issuer.register_app(str(uuid.uuid4()), secret=secret, lifetime=LIFETIME)
    bed.core.create_namespaced_secret(APP_NS, client.V1Secret(
        metadata=client.V1ObjectMeta(name="cred"), string_data={"clientSecret": secret}))
    bed.custom.create_namespaced_custom_object(GROUP, VERSION, APP_NS, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "GraphAppCredential", "metadata": {"name": "mail"},
        "spec": {"tenantId": app.tenant_id, "clientId": app.client_id,
                 "authorityHost": bed.node_authority_host, "refreshBeforeExpiry": REFRESH_BEFORE,
                 "credential": {"clientSecret": {"name": "cred", "key": "clientSecret"}}}})

    def ready() -> dict[str, Any] | None:
        obj = bed.custom.get_namespaced_custom_object(GROUP, VERSION, APP_NS, PLURAL, "mail")
        conds = (obj.get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == "Ready" and c["status"] == "True"), None)

    try:
        wait_for(ready, timeout=60, interval=0.5, what="mail Ready")
    except TimeoutError:
        obj = bed.custom.get_namespaced_custom_object(GROUP, VERSION, APP_NS, PLURAL, "mail")
        logs = {p.metadata.name: bed.node.logs(RELEASE_NS, p.metadata.name, "graphcred")[-3000:]
                for p in release.operator_pods()}
        raise AssertionError(f"not Ready: {obj.get('status')}; operator logs: {logs}") from None
    assert release.record_token() is not None
    # written by the leader pod, through its ServiceAccount: the Event names the pod as its reporting instance
    leader = release.leader()

    def issued_events() -> list[Any]:  # posted after the status patch that said Ready: waited for, not read at once
        events = bed.core.list_namespaced_event(APP_NS, field_selector="involvedObject.name=mail").items
        return [e for e in events if e.reason == "TokenIssued"]

    issued = wait_for(issued_events, timeout=30, interval=0.5, what="the TokenIssued Event")
    assert {e.reporting_instance for e in issued} == {leader}, [(e.reason, e.reporting_instance) for e in issued]
    assert leader in {p.metadata.name for p in release.ready_operator_pods()}


def _consumer(name: str, how: str) -> dict[str, Any]:
    """A busybox pod reading the token Secret: `volume` (the way to), `subPath` or `env` (the ways not to)."""
    read = {"volume": f"cat {TOKEN_FILE}", "subPath": "cat /etc/token", "env": "echo $ACCESS_TOKEN"}[how]
    container: dict[str, Any] = {
        "name": "app", "image": "graphcred.local/busybox:1", "imagePullPolicy": "Never",
        "command": ["/bin/sh", "-c", watch_script(read)],
        "securityContext": {"runAsUser": 1000, "runAsNonRoot": True, "readOnlyRootFilesystem": True,
                            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}
    volumes: list[dict[str, Any]] = []
    if how == "volume":
        container["volumeMounts"] = [{"name": "token", "mountPath": "/var/run/graphcred", "readOnly": True}]
        volumes = [{"name": "token", "secret": {"secretName": "mail-token"}}]
    elif how == "subPath":
        container["volumeMounts"] = [{"name": "token", "mountPath": "/etc/token", "subPath": "access_token",
                                      "readOnly": True}]
        volumes = [{"name": "token", "secret": {"secretName": "mail-token"}}]
    else:
        container["env"] = [{"name": "ACCESS_TOKEN",
                             "valueFrom": {"secretKeyRef": {"name": "mail-token", "key": "access_token"}}}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [container], "volumes": volumes,
                     "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}}


def _seen(release: Release, pod: str) -> list[tuple[dt.datetime, str]]:
    """(time the runtime took the line, digest) for each token change the pod logged."""
    return [(at, text.split()[1]) for at, text in release.bed.node.log_lines(APP_NS, pod, "app")
            if text.startswith("token ")]


def test_consumers_on_the_node(release: Release) -> None:
    bed = release.bed
    bed.node.import_busybox()
    for name, how in (("reader", "volume"), ("subpath", "subPath"), ("env", "env")):
        bed.core.create_namespaced_pod(APP_NS, _consumer(name, how))
    # the Secret's every token, as the test sees it, from before the pods start (their first token included)
    wait_for(lambda: release.record_token() and all(_seen(release, p) for p in ("reader", "subpath", "env")),
             timeout=120, interval=0.25, what="the three consumers reading a token")
    first = {p: _seen(release, p)[0][1] for p in ("reader", "subpath", "env")}
    deadline = time.monotonic() + CONSUMER_WINDOW
    while time.monotonic() < deadline:
        release.record_token()
        time.sleep(0.25)
    # allow the kubelet its sync period to deliver the last write
    last = release.record_token()
    wait_for(lambda: _seen(release, "reader")[-1][1] == last, timeout=30, interval=0.5,
             what="the volume reader at the Secret's last token")

    reader = _seen(release, "reader")
    watched_from = reader[0][0]
    written = {d: seen for d, (seen, _) in release.tokens.items() if seen >= watched_from}
    read = {d: at for at, d in reader}
    missed = sorted(set(written) - set(read))
    assert not missed, f"tokens written but never read through the volume: {missed}"
    # Never an expired token: each one it read was valid when it read it and still when the next one came (it
    # logs changes only), and the last is valid now.
    ends = [at for at, _ in reader[1:]] + [dt.datetime.now(dt.UTC)]
    for (at, d), replaced in zip(reader, ends, strict=True):
        assert d in release.tokens, f"the reader saw a token the Secret never held: {d}"
        expires = release.tokens[d][1]
        assert replaced < expires, f"the reader held {d} from {at} to {replaced}; it expired at {expires}"
    delays = sorted((read[d] - written[d]).total_seconds() for d in written)
    print(f"volume consumer: {len(reader)} tokens read, {len(written)} refreshes while watched; Secret write "
          f"seen by the test to the pod's read: min {delays[0]:.1f} s, max {delays[-1]:.1f} s")
    for at, d in reader:
        print(f"  reader {at:%H:%M:%S.%f} token {d} (expires {release.tokens[d][1]:%H:%M:%S})")
    assert len(written) >= 4, f"only {len(written)} refreshes in {CONSUMER_WINDOW:.0f} s"

    now = dt.datetime.now(dt.UTC)
    for pod in ("subpath", "env"):
        seen = _seen(release, pod)
        assert [d for _, d in seen] == [first[pod]], f"{pod} saw {seen}"
        assert release.tokens[first[pod]][1] < now, f"{pod}'s only token has not expired yet"
    # and graphcred flags both (consumerWarnings.enabled=true)
    messages = wait_for(lambda: (m := [e.message for e in bed.core.list_namespaced_event(
        APP_NS, field_selector="involvedObject.name=mail").items if e.reason == "UnrefreshableConsumer"])
        and len(m) >= 2 and m, timeout=30, what="two UnrefreshableConsumer Events")
    assert sorted(m.split()[1] for m in messages) == [f"{APP_NS}/env", f"{APP_NS}/subpath"], messages
    for message in messages:
        print(f"Warning UnrefreshableConsumer: {message}")


def test_a_restart_target_is_forbidden_with_the_charts_default_rbac(release: Release) -> None:
    """Restart targets (issue 28) with the chart's default RBAC, which grants nothing on apps/deployments: a target
    first seen is taken as current; the next new token finds it Forbidden, and the status and a Warning Event name
    what grants it (restartTargets.enabled). Inside the standby test's three minutes: it costs the module nothing."""
    bed = release.bed

    def mail() -> dict[str, Any]:
        obj: dict[str, Any] = bed.custom.get_namespaced_custom_object(GROUP, VERSION, APP_NS, PLURAL, "mail")
        return obj.get("status") or {}

    outcomes: list[str] = []

    def forbidden() -> dict[str, Any] | None:
        status = mail()
        [record] = status.get("restarts") or [{}]
        if record.get("outcome") and record["outcome"] not in outcomes[-1:]:
            outcomes.append(record["outcome"])
        return {**record, "lastRefreshTime": status["lastRefreshTime"]} if record.get("outcome") == "Forbidden" \
            else None

    bed.custom.patch_namespaced_custom_object(GROUP, VERSION, APP_NS, PLURAL, "mail", {
        "spec": {"restartTargets": [{"kind": "Deployment", "name": "web"}]}})
    patched = time.monotonic()
    record = wait_for(forbidden, timeout=2 * LIFETIME, interval=0.25, what="the restart target Forbidden")
    took = time.monotonic() - patched
    assert outcomes == ["Current", "Forbidden"], outcomes
    assert "restartTargets.enabled" in record["message"], record
    # a new token's: the record keeps the token it was first seen with, which is not the Secret's now
    assert record["tokenTime"] < record["lastRefreshTime"], record
    events = [e.message for e in bed.core.list_namespaced_event(APP_NS, field_selector="involvedObject.name=mail").items
              if e.type == "Warning" and e.reason == "RestartForbidden"]
    assert events and "restartTargets.enabled" in events[0], events
    print(f"restart target without the RBAC, {took:.0f} s after it was named: {record['outcome']} (the token of "
          f"{record['lastRefreshTime']}; first seen with {record['tokenTime']}): {record['message']}")
    # and no longer named, it leaves the status
    bed.custom.patch_namespaced_custom_object(GROUP, VERSION, APP_NS, PLURAL, "mail", {
        "spec": {"restartTargets": None}})
    wait_for(lambda: "restarts" not in mail(), timeout=LIFETIME, interval=0.5, what="status.restarts gone")


def _why_restarted(release: Release, pod: client.V1Pod) -> str:
    [status] = pod.status.container_statuses
    last = status.last_state.terminated
    events = [f"{e.reason}: {e.message}" for e in release.bed.core.list_namespaced_event(
        RELEASE_NS, field_selector=f"involvedObject.name={pod.metadata.name}").items if e.type == "Warning"]
    logs = release.bed.node.logs(RELEASE_NS, pod.metadata.name, "graphcred")[-4000:]
    ended = last and (last.reason, last.exit_code)
    return (f"{pod.metadata.name} restarted {status.restart_count} times; last: {ended}; "
            f"leader {release.leader()}; warnings {events}; logs (all runs, tail):\n{logs}")


def test_the_standby_stays_running_for_three_minutes(release: Release) -> None:
    """Leader and standby: both Running and Ready, no restart, for STANDBY_WINDOW since both were Ready (the
    consumer test above took most of it). Each look checks them again: not a wait that hopes."""
    while True:
        pods = release.operator_pods()
        assert len(pods) == 2, [p.metadata.name for p in pods]
        for pod in pods:
            assert pod.status.phase == "Running" and pod_ready(pod), (pod.metadata.name, pod.status.phase)
            assert _restarts(pod) == 0, _why_restarted(release, pod)
        if time.monotonic() - release.ready_at >= STANDBY_WINDOW:
            break
        time.sleep(2)
    leader = release.leader()
    print(f"after {time.monotonic() - release.ready_at:.0f} s: leader {leader}; "
          + ", ".join(f"{p.metadata.name} restarts {_restarts(p)}" for p in pods))
    kubectl = release.bed.control_plane.kubectl
    print(kubectl("get", "nodes", "-o", "wide").stdout + kubectl("get", "pods", "-A", "-o", "wide").stdout)


def test_deleting_the_leader_pod_hands_over(release: Release) -> None:
    old = release.leader()
    assert old is not None
    before = {p.metadata.name for p in release.operator_pods()}
    deleted = time.monotonic()
    release.bed.core.delete_namespaced_pod(old, RELEASE_NS)
    new = wait_for(lambda: (h := release.leader()) and h != old and h, timeout=25, interval=0.2,
                   what="the standby holding the Lease (lease 15 s)")
    took = time.monotonic() - deleted
    replaced = wait_for(lambda: (names := {p.metadata.name for p in release.ready_operator_pods()})
                        and len(names) == 2 and old not in names and names, timeout=120, interval=1,
                        what="the Deployment's replacement pod Ready")
    # The leader releases its Lease when it stops: the standby and the replacement (up in a few seconds, the
    # image is local) both try every 2 s, and either may win, as with client-go's leader election.
    assert new in replaced, (new, replaced)
    who = "the standby" if new in before else "the replacement pod"
    print(f"leader {old} deleted: {new} ({who}) took over in {took:.1f} s; replacement {sorted(replaced - before)}")
    # and the new leader refreshes: a token newer than any so far reaches the Secret
    known = set(release.tokens)
    wait_for(lambda: release.record_token() not in known, timeout=60, interval=0.5,
             what="a refresh by the new leader")


def test_helm_upgrade_then_uninstall_keeps_the_crd(release: Release) -> None:
    old = {p.metadata.name for p in release.operator_pods()}
    release.helm("upgrade", RELEASE, str(CHART), "--namespace", RELEASE_NS, "--reuse-values",
                 "--set", "logLevel=DEBUG")

    def rolled() -> list[client.V1Pod] | None:
        pods = release.ready_operator_pods()
        fresh = [p for p in pods if p.metadata.name not in old]
        return fresh if len(fresh) == 2 and len(release.operator_pods()) == 2 else None

    pods = wait_for(rolled, timeout=180, interval=1, what="two new operator pods Ready after the upgrade")
    for pod in pods:
        env = {e.name: e.value for e in pod.spec.containers[0].env}
        assert env["GRAPHCRED_LOG_LEVEL"] == "DEBUG"
    release.helm("uninstall", RELEASE, "--namespace", RELEASE_NS)
    wait_for(lambda: not release.operator_pods(), timeout=60, interval=1, what="the operator pods gone")
    ext = client.ApiextensionsV1Api(release.bed.api)
    assert ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}").metadata.deletion_timestamp is None
    assert release.bed.custom.get_namespaced_custom_object(GROUP, VERSION, APP_NS, PLURAL, "mail")
    assert release.token_secret() is not None
