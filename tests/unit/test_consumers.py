"""--watch-consumers: which pods read a token Secret where no refresh reaches them (pure classification), the pod
watch that finds them (against a small apiserver speaking the list/watch wire format, streams held open), and
what is reported (Events, status count, metric) with the real Controller and Reconciler over in-memory I/O. The
bed test (tests/e2e/test_consumer_warnings.py) covers the real apiserver."""

from __future__ import annotations

import copy
import json
import logging
import select
import socket
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes import client

from graphcred.consumers.pods import (
    ConsumerIndex,
    Finding,
    How,
    PodConsumer,
    PodKey,
    classify,
    unrefreshable,
    warning_message,
)
from graphcred.consumers.podwatch import PodWatch
from graphcred.consumers.reports import REASON, STATUS_FIELD
from graphcred.reconcile.reporting import status_patch
from graphcred_testbed.bed import wait_for

from .fakes import gac, secret_spec
from .harness import NS, TENANT, Rig, is_ready, run, until

TOKEN = "mail-token"


def _pod(name: str, *, containers: list[dict[str, Any]] | None = None, volumes: list[dict[str, Any]] | None = None,
         phase: str = "Pending", uid: str | None = None, namespace: str = NS, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name, "uid": uid or f"uid-{name}"},
            "spec": {"containers": containers or [{"name": "app", "image": "app"}], "volumes": volumes or [],
                     **spec},
            "status": {"phase": phase}}


def _secret_volume(secret: str = TOKEN, name: str = "token") -> dict[str, Any]:
    return {"name": name, "secret": {"secretName": secret}}


def _mounting(mount: dict[str, Any], name: str = "app") -> dict[str, Any]:
    return {"name": name, "image": "app", "volumeMounts": [{"name": "token", **mount}]}


def _env(secret: str = TOKEN, name: str = "app", **ref: Any) -> dict[str, Any]:
    return {"name": name, "image": "app",
            "env": [{"name": "ACCESS_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": "access_token",
                                                                             **ref}}}]}


def _env_from(secret: str = TOKEN, name: str = "app", prefix: str | None = None, **ref: Any) -> dict[str, Any]:
    source: dict[str, Any] = {"secretRef": {"name": secret, **ref}}
    if prefix:
        source["prefix"] = prefix
    return {"name": name, "image": "app", "envFrom": [source]}


SUB_PATH = Finding(TOKEN, "app", "container", How.SUB_PATH, "/etc/token")
ENV = Finding(TOKEN, "app", "container", How.ENV, "ACCESS_TOKEN")
ENV_FROM = Finding(TOKEN, "app", "container", How.ENV_FROM)


# --- classification -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("pod", "expected"), [
    pytest.param(_pod("p", volumes=[_secret_volume()], containers=[_mounting({"mountPath": "/var/run/graphcred"})]),
                 (), id="plain-volume-mount-is-fine"),
    pytest.param(_pod("p", volumes=[_secret_volume()],
                      containers=[_mounting({"mountPath": "/etc/token", "subPath": "access_token"})]),
                 (SUB_PATH,), id="subPath"),
    pytest.param(_pod("p", volumes=[_secret_volume()],
                      containers=[_mounting({"mountPath": "/etc/token", "subPathExpr": "$(KEY)"})]),
                 (Finding(TOKEN, "app", "container", How.SUB_PATH_EXPR, "/etc/token"),), id="subPathExpr"),
    pytest.param(_pod("p", volumes=[{"name": "token", "projected": {"sources": [
        {"configMap": {"name": "settings"}}, {"secret": {"name": TOKEN}}]}}],
                      containers=[_mounting({"mountPath": "/etc/token", "subPath": "access_token"})]),
                 (SUB_PATH,), id="projected-secret-through-subPath"),
    pytest.param(_pod("p", volumes=[{"name": "token", "projected": {"sources": [{"secret": {"name": TOKEN}}]}}],
                      containers=[_mounting({"mountPath": "/var/run/graphcred"})]),
                 (), id="projected-plain-mount-is-fine"),
    pytest.param(_pod("p", volumes=[{"name": "token", "configMap": {"name": TOKEN}}],
                      containers=[_mounting({"mountPath": "/etc/token", "subPath": "x"})]),
                 (), id="a-configmap-of-the-same-name-is-not-the-secret"),
    pytest.param(_pod("p", containers=[_env()]), (ENV,), id="env"),
    pytest.param(_pod("p", containers=[_env(optional=True)]), (ENV,), id="env-optional-still-counts"),
    pytest.param(_pod("p", containers=[_env_from()]), (ENV_FROM,), id="envFrom"),
    pytest.param(_pod("p", containers=[_env_from(optional=True, prefix="GRAPH_")]),
                 (Finding(TOKEN, "app", "container", How.ENV_FROM, "GRAPH_"),), id="envFrom-optional-prefixed"),
    pytest.param(_pod("p", initContainers=[_env(name="setup")]), (), id="init-container-runs-once-at-start"),
    pytest.param(_pod("p", volumes=[_secret_volume()],
                      initContainers=[_mounting({"mountPath": "/t", "subPath": "access_token"}, name="setup")]),
                 (), id="init-container-subPath-runs-once-at-start"),
    pytest.param(_pod("p", initContainers=[{**_env(name="proxy"), "restartPolicy": "Always"}]),
                 (Finding(TOKEN, "proxy", "sidecar container", How.ENV, "ACCESS_TOKEN"),), id="sidecar-container"),
    pytest.param(_pod("p", ephemeralContainers=[_env_from(name="debug")]),
                 (Finding(TOKEN, "debug", "ephemeral container", How.ENV_FROM),), id="ephemeral-container"),
    pytest.param(_pod("p", volumes="junk", containers=[{"name": "app", "env": [None, {"valueFrom": 3}],
                                                        "envFrom": "x", "volumeMounts": [{"subPath": "a"}]}]),
                 (), id="malformed-fields-are-skipped"),
])
def test_classification(pod: dict[str, Any], expected: tuple[Finding, ...]) -> None:
    assert unrefreshable(pod["spec"]) == expected


def test_every_way_at_once_in_the_specs_order_without_duplicates() -> None:
    app = {**_mounting({"mountPath": "/etc/token", "subPath": "access_token"}),
           "env": _env()["env"] * 2, "envFrom": _env_from()["envFrom"]}
    findings = unrefreshable(_pod("p", volumes=[_secret_volume()], containers=[app],
                                  initContainers=[{**_env(name="setup"), "restartPolicy": "Always"}])["spec"])
    assert findings == (Finding(TOKEN, "setup", "sidecar container", How.ENV, "ACCESS_TOKEN"), SUB_PATH, ENV, ENV_FROM)


def test_only_the_token_secrets_in_use_count() -> None:
    pod = _pod("p", containers=[_env("database-password"), _env_from(TOKEN, name="side")])
    assert classify(pod, lambda ns, s: False) is None, "a pod reading other Secrets only: nothing to keep"
    key, consumer = classify(pod, lambda ns, s: (ns, s) == (NS, TOKEN))  # type: ignore[misc]
    assert key == (NS, "p")
    assert consumer == PodConsumer("uid-p", (Finding(TOKEN, "side", "container", How.ENV_FROM),))


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_a_finished_pod_does_not_count(phase: str) -> None:
    assert classify(_pod("p", containers=[_env()], phase=phase), lambda ns, s: True) == ((NS, "p"), None)


def test_the_warning_names_pod_container_secret_and_the_way_out() -> None:
    message = warning_message("batch", "reader-0", TOKEN, [SUB_PATH])
    assert message == ("pod batch/reader-0 container app reads mail-token through a subPath mount at /etc/token; it "
                       "will keep the first token and fail when it expires (the kubelet never updates a subPath "
                       "mount); mount the Secret as a volume without subPath")
    env = warning_message("batch", "env-0", TOKEN, [ENV])
    assert "environment variable ACCESS_TOKEN" in env and "set once, when the container starts" in env
    assert "subPath" not in env


def test_a_pod_with_many_uses_gets_one_bounded_message() -> None:
    uses = [Finding(TOKEN, f"c{i}", "container", How.ENV, f"VAR_{i}") for i in range(40)] + [SUB_PATH]
    message = warning_message(NS, "big", TOKEN, [*uses, Finding("other", "x", "container", How.ENV, "OTHER")])
    assert len(message) < 1024, "the apiserver refuses longer Event messages (events.py would cut it)"
    assert "container c0 reads mail-token" in message and "37 more" in message and "OTHER" not in message
    assert "without subPath and read the file instead of environment variables" in message


# --- the index ------------------------------------------------------------------------------------------------
def test_the_index_counts_per_secret_and_warns_once_per_pod_and_credential() -> None:
    index = ConsumerIndex()
    assert index.put((NS, "a"), PodConsumer("u-a", (SUB_PATH,))) == {(NS, TOKEN)}
    index.put((NS, "b"), PodConsumer("u-b", (ENV, Finding("other", "app", "container", How.ENV, "X"))))
    assert index.count((NS, TOKEN)) == 2 and index.count((NS, "other")) == 1
    assert [p for p, *_ in index.unwarned((NS, TOKEN), "cred-1")] == [(NS, "a"), (NS, "b")]
    assert index.unwarned((NS, TOKEN), "cred-1") == []
    assert index.put((NS, "a"), PodConsumer("u-a", (SUB_PATH,))) == set(), "an update that changed nothing"
    assert [p for p, *_ in index.unwarned((NS, TOKEN), "cred-2")] == [(NS, "a"), (NS, "b")], "a new credential"
    index.put((NS, "a"), PodConsumer("u-a2", (SUB_PATH,)))  # deleted and re-created under the same name
    assert [p for p, *_ in index.unwarned((NS, TOKEN), "cred-1")] == [(NS, "a")]
    assert index.put((NS, "a"), None) == {(NS, TOKEN)}
    assert index.count((NS, TOKEN)) == 1
    index.drop_secret((NS, TOKEN))
    assert index.count((NS, TOKEN)) == 0 and index.count((NS, "other")) == 1 and len(index) == 1
    assert index.retain(None, []) == {(NS, "other")} and len(index) == 0


def test_the_reconcilers_status_patch_leaves_the_count_alone() -> None:
    before = {"conditions": [{"type": "Ready"}], STATUS_FIELD: 3}
    assert status_patch(before, {"conditions": [{"type": "Ready"}]}) is None
    assert status_patch(before, {"conditions": []}) == {"conditions": []}
    assert STATUS_FIELD not in (status_patch({STATUS_FIELD: 3}, {"secretName": "x", STATUS_FIELD: 1}) or {})


# --- reports: Events, status, metric (the real Controller and Reconciler, in-memory I/O) -------------------------
def _rig(watching: bool) -> Rig:
    rig = Rig()
    rig.with_consumer_reports(watching=watching)
    return rig


def _warnings(rig: Rig) -> list[str]:
    return [name for name, type_, reason in rig.events if reason == REASON and type_ == "Warning"]


def _gauge(rig: Rig, name: str) -> float | None:
    return rig.metrics.registry.get_sample_value("graphcred_unrefreshable_consumers",
                                                 {"namespace": NS, "name": name})


def test_flagged_pods_are_reported_once_and_counted_while_they_exist() -> None:
    async def scenario() -> None:
        rig = _rig(watching=True)
        reports = rig.consumers
        rig.add(gac("mail", secret_spec(TENANT, str(uuid.uuid4()))))
        await until(lambda: is_ready(rig, "mail"))
        reports.pod_changed(NS, "reader-0", PodConsumer("u0", (SUB_PATH,)))
        reports.pod_changed(NS, "env-0", PodConsumer("u1", (ENV,)))
        reports.pod_changed(NS, "envfrom-0", PodConsumer("u2", (ENV_FROM,)))
        await until(lambda: rig.status("mail").get(STATUS_FIELD) == 3, what="count 3")
        assert _warnings(rig) == ["mail"] * 3
        assert rig.ready("mail")["status"] == "True", "the count's patch left the conditions alone"
        assert _gauge(rig, "mail") == 3
        # updates of the same pods (status changes, a label) post nothing more
        for _ in range(3):
            reports.pod_changed(NS, "reader-0", PodConsumer("u0", (SUB_PATH,)))
        reports.pod_changed(NS, "env-0", None)  # deleted
        await until(lambda: rig.status("mail").get(STATUS_FIELD) == 2, what="count 2")
        assert _gauge(rig, "mail") == 2 and len(_warnings(rig)) == 3
        # a reconcile pass (a spec change) writes the status: the count stays
        rig.controller.observe(gac("mail", secret_spec(TENANT, str(uuid.uuid4())),
                                   uid=rig.controller.snapshot_of((NS, "mail")).uid, generation=2))  # type: ignore[union-attr]
        await until(lambda: is_ready(rig, "mail", generation=2))
        assert rig.status("mail").get(STATUS_FIELD) == 2
        # the same name re-created (a StatefulSet's pod): another pod, another Event
        reports.pod_changed(NS, "reader-0", PodConsumer("u0-new", (SUB_PATH,)))
        await until(lambda: len(_warnings(rig)) == 4, what="the re-created pod's Event")
        reports.pod_changed(NS, "reader-0", None)
        reports.pod_changed(NS, "envfrom-0", None)
        await until(lambda: STATUS_FIELD not in rig.status("mail"), what="the count removed: none left")
        assert _gauge(rig, "mail") == 0
        rig.controller.forget(NS, "mail")
        assert _gauge(rig, "mail") is None
        await rig.controller.stop()

    run(scenario)


def test_without_the_watch_a_count_left_by_an_earlier_run_is_removed_and_nothing_else_happens() -> None:
    async def scenario() -> None:
        rig = _rig(watching=False)
        rig.kube.statuses[(NS, "mail")] = {STATUS_FIELD: 3}
        rig.add(gac("mail", secret_spec(TENANT, str(uuid.uuid4())), status={STATUS_FIELD: 3}))
        await until(lambda: is_ready(rig, "mail"))
        await until(lambda: STATUS_FIELD not in rig.status("mail"), what="the stale count removed")
        assert _warnings(rig) == [] and _gauge(rig, "mail") is None
        await rig.controller.stop()

    run(scenario)


# --- the pod watch ----------------------------------------------------------------------------------------------
class PodApiserver:
    """Pods in a dict, served as the apiserver serves them: paged lists (of all namespaces or one) and watch streams
    that stay open, sending each change as it happens, from the resourceVersion asked, until the client goes."""

    def __init__(self) -> None:
        self.pods: dict[PodKey, dict[str, Any]] = {}
        self.history: list[tuple[int, str, dict[str, Any]]] = []  # (resourceVersion, event type, pod)
        self.rv = 10
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, query)
        self.changed = threading.Condition()
        self.closing = False
        self.too_old = False  # answer the next watch "410 Gone" (its resourceVersion was compacted)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                fake.requests.append((parts.path, query))
                namespace = parts.path.split("/")[4] if parts.path.startswith("/api/v1/namespaces/") else None
                if query.get("watch") == "true":
                    fake.stream(self, namespace, int(query.get("resourceVersion") or 0))
                else:
                    body = json.dumps(fake.page(namespace, int(query.get("limit") or 500),
                                                int(query.get("continue") or 0))).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def api(self) -> client.ApiClient:
        conf = client.Configuration()
        conf.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        return client.ApiClient(conf)

    def put(self, pod: dict[str, Any], kind: str = "ADDED") -> None:
        with self.changed:
            self.rv += 1
            pod = copy.deepcopy(pod)
            pod["metadata"]["resourceVersion"] = str(self.rv)
            key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
            if kind == "DELETED":
                self.pods.pop(key, None)
            else:
                self.pods[key] = pod
            self.history.append((self.rv, kind, pod))
            self.changed.notify_all()

    def delete(self, name: str) -> None:
        self.put(self.pods[(NS, name)], "DELETED")

    def page(self, namespace: str | None, limit: int, offset: int) -> dict[str, Any]:
        with self.changed:
            pods = [p for k, p in sorted(self.pods.items()) if namespace in (None, k[0])]
            rest = offset + limit < len(pods)
            return {"kind": "PodList", "metadata": {"resourceVersion": str(self.rv),
                                                    "continue": str(offset + limit) if rest else ""},
                    "items": pods[offset:offset + limit]}

    def stream(self, handler: BaseHTTPRequestHandler, namespace: str | None, since: int) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")  # as the apiserver: each event arrives as it is sent
        handler.send_header("Connection", "close")
        handler.end_headers()
        sent = since
        if self.too_old:
            self.too_old = False
            gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}
            line = json.dumps(gone).encode() + b"\n"
            handler.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(line), line))
            return
        while not self.closing:
            with self.changed:
                due = [(rv, kind, pod) for rv, kind, pod in self.history
                       if rv > sent and namespace in (None, pod["metadata"]["namespace"])]
                if not due:
                    self.changed.wait(0.1)
            for rv, kind, pod in due:
                line = json.dumps({"type": kind, "object": pod}).encode() + b"\n"
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                handler.wfile.flush()
                sent = rv
            if _gone(handler.connection):
                return

    def stop(self) -> None:
        self.closing = True
        self.server.shutdown()
        self.server.server_close()


def _gone(conn: socket.socket) -> bool:
    """Has the client closed its end (EOF to read)?"""
    readable, _, _ = select.select([conn], [], [], 0)
    if not readable:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


@pytest.fixture
def apiserver() -> Iterator[PodApiserver]:
    fake = PodApiserver()
    yield fake
    fake.stop()


class Recorder:
    def __init__(self) -> None:
        self.pods: list[tuple[str, str, PodConsumer | None]] = []
        self.listed: list[tuple[str | None, frozenset[PodKey]]] = []
        self.tokens: set[tuple[str, str]] = set()

    def watch(self, fake: PodApiserver, namespace: str | None = None, page_size: int = 500) -> PodWatch:
        return PodWatch(fake.api(), lambda *a: self.pods.append(a), lambda *a: self.listed.append(a),
                        lambda ns, s: (ns, s) in self.tokens, namespace, server_timeout=30, page_size=page_size,
                        healthy_after=0.5).start()


def _sub_path_pod(name: str, secret: str = TOKEN, **kwargs: Any) -> dict[str, Any]:
    return _pod(name, volumes=[_secret_volume(secret)],
                containers=[_mounting({"mountPath": "/etc/token", "subPath": "access_token"})], **kwargs)


def test_the_pod_watch_reports_only_pods_reading_a_token_secret_in_use(apiserver: PodApiserver) -> None:
    rec = Recorder()
    rec.tokens.add((NS, TOKEN))
    for pod in (_sub_path_pod("reader-0"), _pod("envs", containers=[_env("database-password")]),
                _pod("good", volumes=[_secret_volume()], containers=[_mounting({"mountPath": "/var/run/g"})]),
                _pod("reader-1", containers=[_env()]), _sub_path_pod("elsewhere", namespace="other")):
        apiserver.put(pod)
    watch = rec.watch(apiserver, page_size=2)
    try:
        wait_for(watch.settled, timeout=10, what="the first list")
        assert [(ns, name) for ns, name, _ in rec.pods] == [(NS, "reader-0"), (NS, "reader-1")]
        assert rec.listed == [(None, frozenset({(NS, "reader-0"), (NS, "reader-1")}))]
        lists = [q for p, q in apiserver.requests if q.get("watch") != "true"]
        assert [q.get("continue", "") for q in lists] == ["", "2", "4"] and all(q["limit"] == "2" for q in lists)
        # then from the stream: a deletion, a pod that finished, and pods that do not matter
        apiserver.delete("reader-0")
        apiserver.put(_pod("reader-1", containers=[_env()], phase="Succeeded"), "MODIFIED")
        apiserver.put(_pod("envs-2", containers=[_env("database-password")]))
        apiserver.put(_sub_path_pod("reader-2"))
        wait_for(lambda: len(rec.pods) == 5, timeout=10, what="three events about token Secret readers")
        assert rec.pods[2:] == [(NS, "reader-0", None), (NS, "reader-1", None),
                                (NS, "reader-2", PodConsumer("uid-reader-2", (SUB_PATH,)))]
        assert {p for p, _ in apiserver.requests} == {"/api/v1/pods"}
    finally:
        watch.stop()


def test_a_pod_older_than_its_credential_is_found_by_a_rescan_and_the_watch_goes_on(
        apiserver: PodApiserver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="graphcred")
    rec = Recorder()
    apiserver.put(_sub_path_pod("early"))
    watch = rec.watch(apiserver)
    try:
        wait_for(lambda: watch.settled() and any(q.get("watch") == "true" for _, q in apiserver.requests),
                 timeout=10, what="the first list and the stream")
        assert rec.pods == [], "its Secret is no token Secret yet"
        rec.tokens.add((NS, TOKEN))  # a credential now writes it
        started = time.monotonic()
        watch.rescan(NS)
        wait_for(lambda: rec.pods, timeout=5, what="the rescan")
        elapsed = time.monotonic() - started
        assert rec.pods == [(NS, "early", PodConsumer("uid-early", (SUB_PATH,)))]
        assert elapsed < 2, f"the rescan waited {elapsed:.1f} s: the stream was not cut for it"
        wait_for(watch.settled, timeout=5, what="settled after the rescan")
        assert rec.listed[-1] == (NS, frozenset({(NS, "early")}))
        assert ("/api/v1/namespaces/ns/pods", ) in [(p,) for p, q in apiserver.requests if q.get("watch") != "true"]
        apiserver.put(_sub_path_pod("late"))
        wait_for(lambda: len(rec.pods) == 2, timeout=5, what="the stream resumed after the rescan")
        assert rec.pods[1][1] == "late"
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "a rescan is not a failure"
        watches = [q for _, q in apiserver.requests if q.get("watch") == "true"]
        assert len(watches) == 2 and watches[1]["resourceVersion"] == watches[0]["resourceVersion"], \
            "resumed from where it was, not listed again"
    finally:
        watch.stop()


def test_a_namespaced_pod_watch_lists_and_watches_its_namespace_only(apiserver: PodApiserver) -> None:
    rec = Recorder()
    rec.tokens |= {(NS, TOKEN), ("other", TOKEN)}
    apiserver.put(_sub_path_pod("a"))
    watch = rec.watch(apiserver, namespace=NS)
    try:
        wait_for(lambda: any(q.get("watch") == "true" for _, q in apiserver.requests), timeout=10,
                 what="the stream")
        assert rec.listed == [(NS, frozenset({(NS, "a")}))]
        assert {p for p, _ in apiserver.requests} == {"/api/v1/namespaces/ns/pods"}
        assert watch._thread.name == "pod-watch:ns"
    finally:
        watch.stop()


def test_after_410_gone_the_pod_watch_lists_again_and_names_the_pods_still_there(apiserver: PodApiserver) -> None:
    """Pods deleted while the watch could not follow (its resourceVersion compacted) are forgotten: on_listed names
    the pods the new list found, and ConsumerIndex.retain drops the rest."""
    rec = Recorder()
    rec.tokens.add((NS, TOKEN))
    for name in ("a", "b"):
        apiserver.put(_sub_path_pod(name))
    watch = rec.watch(apiserver)
    try:
        wait_for(lambda: any(q.get("watch") == "true" for _, q in apiserver.requests), timeout=10,
                 what="the stream")
        with apiserver.changed:  # b goes while no stream reports it, and the next watch is too old
            apiserver.pods.pop((NS, "b"))
            apiserver.rv += 1
            apiserver.too_old = True
        watch.rescan(NS)  # cut the stream: the next one is answered 410
        wait_for(lambda: len(rec.listed) >= 3, timeout=10, what="the list after 410 Gone")
        assert rec.listed[-1] == (None, frozenset({(NS, "a")}))
        index = ConsumerIndex()
        for namespace, name, consumer in rec.pods[:2]:
            index.put((namespace, name), consumer)
        index.retain(*rec.listed[-1])
        assert index.count((NS, TOKEN)) == 1
    finally:
        watch.stop()


def test_the_index_keeps_under_a_kilobyte_a_flagged_pod() -> None:
    """What the watch's findings cost at scale: uid and findings per flagged pod, never a spec."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    index = ConsumerIndex()
    for i in range(20_000):
        namespace = f"namespace-{i % 200}"
        index.put((namespace, f"reader-7d9f8b6c5-{i:05d}"), PodConsumer(
            f"{i:08d}-1b2c-4d5e-8f90-123456789abc", (Finding(TOKEN, "app", "container", How.SUB_PATH,
                                                             "/etc/graphcred/token"),)))
    for n in range(200):
        index.unwarned((f"namespace-{n}", TOKEN), "credential-uid")
    size = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert size / 20_000 < 1024, f"{size / 20_000:.0f} bytes a pod"
