"""Restart targets (issue 28, DESIGN §9) on the real node: a Deployment whose pods read the token from an environment
variable, with tokens of 60 s. Each new token rolls it once, right after it is written, so that every running Ready
pod always holds an unexpired token; an operator restart and a leader change roll nothing; a target that does not
exist is NotFound while the others are still restarted; a rollout stuck on an unschedulable pod is waited for, not
stacked on. (A forbidden target, with the chart's default RBAC: test_chart_on_node.py.)

One bed, one pair of operators (leader election) and one timeline for the module: each test takes the next step of
it, so the tests run in file order. Select with `pytest -m node`; `-s` prints the consumer's log next to the
rollouts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from kubernetes import client

from graphcred.api.keys import RESTARTED_AT_ANNOTATION
from graphcred_testbed import jose
from graphcred_testbed.bed import Bed, wait_for
from graphcred_testbed.node import NODE_NAME
from graphcred_testbed.operator_process import OperatorProcess, install_crd

from ..helpers import Env, lease_holder
from .conftest import pod_ready

pytestmark = [pytest.mark.bed, pytest.mark.node, pytest.mark.timeout(300)]

IMAGE = "ghcr.io/graphcred/graphcred:bed"  # the image built from the Dockerfile: it has python3
NS = "restarts"
LIFETIME = 60  # seconds: a new token every 30 s or so (half its life)
LEASE = "6"  # seconds: how long a killed leader's Lease lasts
CONSUMER, STUCK, MISSING = "env-app", "stuck-app", "no-such-app"
NEXT_TOKEN = LIFETIME + 20.0  # seconds to wait for the next new token: half a life, a takeover and some load

# The consumer: reads the token once, from its environment, as the images restart targets exist for do. It logs a
# digest of it (never the token), its exp claim, and whether it has expired: at start and every 2 s.
CONSUMER_SCRIPT = """
import base64, hashlib, json, os, time
token = os.environ["ACCESS_TOKEN"]
digest = hashlib.sha256(token.encode()).hexdigest()[:12]
payload = token.split(".")[1]
exp = int(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])
while True:
    print(f"token {digest} exp {exp} expired {'yes' if time.time() >= exp else 'no'}", flush=True)
    time.sleep(2)
"""
LINE = re.compile(r"^token ([0-9a-f]{12}) exp (\d+) expired (yes|no)$")

T = TypeVar("T")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def hms(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%H:%M:%S.%f")[:-4]


def from_epoch(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def cpu_millis(quantity: str) -> int:
    return int(quantity[:-1]) if quantity.endswith("m") else int(float(quantity) * 1000)


@dataclass
class PodLine:
    at: dt.datetime  # when the runtime took the line
    digest: str
    exp: int
    expired: bool


@dataclass
class Scene:
    """The module's bed, namespace and operators, and everything the test saw, checked at each look."""

    bed: Bed
    env: Env
    replicas: list[OperatorProcess]
    # the main credential's tokens as its Secret held them: digest -> (first seen, exp)
    tokens: dict[str, tuple[dt.datetime, int]] = field(default_factory=dict)
    # each credential's distinct lastRefreshTime values, in the order seen
    refreshes: dict[str, list[str]] = field(default_factory=lambda: {"main": [], "stuck": []})
    lines: dict[str, list[PodLine]] = field(default_factory=dict)  # consumer pod -> its log, as last read
    replica_sets: dict[str, dict[str, dt.datetime]] = field(default_factory=lambda: {CONSUMER: {}, STUCK: {}})
    ready_checks: int = 0  # Ready consumer pods found holding an unexpired token, over all looks
    notes: list[tuple[dt.datetime, str]] = field(default_factory=list)  # what the test did, for the timeline

    def note(self, text: str) -> None:
        self.notes.append((dt.datetime.now(dt.UTC), text))

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.bed.api)

    # --- the operators -----------------------------------------------------------------------------------------
    def start(self, replica: OperatorProcess) -> None:
        """Start a replica named as a pod is (POD_NAME, as the chart sets it): its Lease identity and its Events'
        reporting instance."""
        saved = os.environ.get("POD_NAME")
        os.environ["POD_NAME"] = replica.process.name
        try:
            replica.start()
        finally:
            if saved is None:
                del os.environ["POD_NAME"]
            else:
                os.environ["POD_NAME"] = saved

    def leader(self) -> OperatorProcess | None:
        holder = lease_holder(self.env)
        return next((r for r in self.replicas if r.process.name == holder and r.process.alive()), None)

    def wait_leader(self, other_than: OperatorProcess | None = None) -> OperatorProcess:
        return self.watch(lambda: (r := self.leader()) is not None and r is not other_than and r,
                          timeout=30, what="a leader")

    def resumed(self, replica: OperatorProcess) -> dt.datetime:
        """Wait for `replica`'s first pass of the main credential; it must find the token valid ("resuming"): a
        pass that writes a new token would say nothing about what a restart alone does."""
        token_time = self.refreshes["main"][-1]
        self.watch(lambda: f"resuming {NS}/main" in replica.logs(this_run=True) or self.refreshes["main"][-1]
                   != token_time, timeout=30, what=f"{replica.process.name}'s first pass of {NS}/main")
        assert self.refreshes["main"][-1] == token_time, (
            f"{replica.process.name} wrote a new token in its first pass: it took over too late to show anything")
        self.note(f"{replica.process.name} (leader) resumed {NS}/main: token valid")
        return dt.datetime.now(dt.UTC)

    def restarted_by(self, replica: OperatorProcess) -> float:
        """graphcred_workload_restarts_total{outcome="Restarted"} of one operator process (both credentials'
        targets: the stuck Deployment's first restart may fall to it)."""
        text = requests.get(f"{replica.metrics_url()}/metrics", timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("graphcred_workload_restarts_total{") and 'outcome="Restarted"' in line)

    def all_current(self, credential: str, count: int) -> Callable[[], bool]:
        def probe() -> bool:
            records = self.records(credential)
            return len(records) == count and {r["outcome"] for r in records.values()} == {"Current"}

        return probe

    def consumer_restarts(self) -> dict[str, tuple[int, set[str]]]:
        """The consumer's restarts as the main credential's Events tell them: token time -> (how many, by whom).
        A restart for the same token again would be counted on the same Event, or posted anew by another process."""
        found: dict[str, tuple[int, set[str]]] = {}
        for event in self.bed.core.list_namespaced_event(NS, field_selector="involvedObject.name=main").items:
            m = re.fullmatch(rf"restarted Deployment {CONSUMER} for the new token \(acquired at (\S+)\)",
                             event.message or "")
            if event.reason == "WorkloadRestarted" and m:
                count, by = found.get(m[1], (0, set()))
                found[m[1]] = (count + (event.count or 1), by | {event.reporting_instance or ""})
        return found

    def restarts_but(self, token_time: str) -> dict[str, tuple[int, set[str]]]:
        return {t: v for t, v in self.consumer_restarts().items() if t != token_time}

    def restarted_by_event(self, token_time: str) -> set[str]:
        """Who restarted the consumer for the token of `token_time`, once (its Event is posted in the background)."""
        count, by = self.watch(lambda: self.consumer_restarts().get(token_time), timeout=15,
                               what=f"the WorkloadRestarted Event for the token of {token_time}")
        assert count == 1, (token_time, count, by)
        return by

    # --- looking -----------------------------------------------------------------------------------------------
    def records(self, credential: str) -> dict[str, dict[str, Any]]:
        return {r["name"]: r for r in (self.env.get(credential).get("status") or {}).get("restarts") or []}

    def look(self) -> None:
        """One look at everything, asserting what must hold at every moment: each running Ready consumer pod holds
        an unexpired token the Secret held, and the stuck Deployment never has a third ReplicaSet."""
        # the ReplicaSets before the status: graphcred restarts only after the status names the new token, so a
        # ReplicaSet seen here is never one whose token this look misses
        for deployment in (CONSUMER, STUCK):
            for rs in self.apps.list_namespaced_replica_set(NS, label_selector=f"app={deployment}").items:
                if any(o.kind == "Deployment" and o.name == deployment for o in rs.metadata.owner_references or []):
                    self.replica_sets[deployment].setdefault(rs.metadata.name, rs.metadata.creation_timestamp)
        assert len(self.replica_sets[STUCK]) <= 2, f"a rollout stacked on the stuck one: {self.replica_sets[STUCK]}"
        for name, seen in self.refreshes.items():
            try:
                token_time = (self.env.get(name).get("status") or {}).get("lastRefreshTime")
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
                continue  # not created yet
            if token_time and token_time not in seen:
                seen.append(token_time)
        token = self.env.token("main-token")
        if token is not None and digest(token) not in self.tokens:
            self.tokens[digest(token)] = (dt.datetime.now(dt.UTC), int(jose.parse(token)[1]["exp"]))
        now = time.time()
        for pod in self.bed.core.list_namespaced_pod(NS, label_selector=f"app={CONSUMER}").items:
            name = pod.metadata.name
            lines = [PodLine(at, m[1], int(m[2]), m[3] == "yes")
                     for at, text in self.bed.node.log_lines(NS, name, "app") if (m := LINE.match(text))]
            if lines:
                self.lines[name] = lines  # kept after the pod and its log are gone
            running = pod.status.phase == "Running" and pod.metadata.deletion_timestamp is None and pod_ready(pod)
            if not running or not lines:
                continue  # a pod that has not logged yet is looked at next time
            held = lines[-1]
            assert held.digest in self.tokens, f"{name} holds {held.digest}, a token the Secret never held"
            assert held.exp > now and not held.expired, (
                f"Ready pod {name} holds token {held.digest}, expired at {hms(from_epoch(held.exp))}")
            self.ready_checks += 1

    def watch(self, probe: Callable[[], T | bool | None], *, timeout: float, what: str) -> T:
        """Look until `probe` is truthy; every look asserts the invariants."""
        def probe_after_look() -> T | bool | None:
            self.look()
            return probe()

        result: T = wait_for(probe_after_look, timeout=timeout, interval=0.5, what=what)  # type: ignore[arg-type]
        return result

    def next_token(self, credential: str, *, rollouts: int) -> str:
        """Look until `credential` holds a newer token; meanwhile the consumer keeps its `rollouts` + 1
        ReplicaSets (nothing but a new token rolls it)."""
        before = list(self.refreshes[credential])

        def newer() -> str | None:
            if self.refreshes[credential] != before:
                return self.refreshes[credential][-1]  # its rollout may already have begun: this look saw both
            assert len(self.replica_sets[CONSUMER]) == rollouts + 1, (
                f"a rollout without a new token: ReplicaSets {sorted(self.replica_sets[CONSUMER])}")
            return None

        return self.watch(newer, timeout=NEXT_TOKEN, what=f"a new token for {credential}")

    def restarted_for(self, token_time: str, *, rollouts: int) -> dict[str, Any]:
        """Look until the consumer is restarted for the token acquired at `token_time`: its record says so and its
        ReplicaSets number `rollouts` + 1."""
        def done() -> dict[str, Any] | None:
            record = self.records("main").get(CONSUMER) or {}
            if record.get("tokenTime") == token_time and len(self.replica_sets[CONSUMER]) == rollouts + 1:
                assert record["outcome"] == "Restarted", record
                return record
            assert len(self.replica_sets[CONSUMER]) <= rollouts + 1, sorted(self.replica_sets[CONSUMER])
            return None

        return self.watch(done, timeout=30, what=f"{CONSUMER} restarted for the token of {token_time}")

    def rolled_out(self) -> list[str]:
        """Look until the consumer's rollout is complete and its two Ready pods hold the Secret's newest token."""
        newest = max(self.tokens, key=lambda d: self.tokens[d][0])

        def complete() -> list[str] | None:
            body = self.apps.read_namespaced_deployment(CONSUMER, NS)
            status = body.status
            if (status.observed_generation != body.metadata.generation or status.updated_replicas != 2
                    or status.replicas != 2 or status.available_replicas != 2):
                return None
            pods = [p for p in self.bed.core.list_namespaced_pod(NS, label_selector=f"app={CONSUMER}").items
                    if p.metadata.deletion_timestamp is None and pod_ready(p)]
            held = [self.lines.get(p.metadata.name, [PodLine(dt.datetime.now(dt.UTC), "", 0, False)])[-1].digest
                    for p in pods]
            return sorted(p.metadata.name for p in pods) if held == [newest, newest] else None

        return self.watch(complete, timeout=90, what=f"{CONSUMER}'s two Ready pods holding token {newest}")


def consumer(name: str, replicas: int, container: dict[str, Any], **pod: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "securityContext": {"runAsUser": 65532, "runAsNonRoot": True,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "app", "imagePullPolicy": "Never",
                        "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}},
                        **container}],
                    **pod,
                },
            },
        },
    }


@pytest.fixture(scope="module")
def scene(node_bed: Bed, image_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    """Two operators electing a leader; credential `main` (restart targets: the env consumer and a Deployment that
    does not exist) and credential `stuck` (a Deployment whose next rollout cannot be scheduled), both with tokens of
    60 s; both Deployments created right after their credential's first token, so each rollout is one new token's."""
    bed = node_bed
    install_crd(bed)
    bed.node.import_image(image_archive)
    busybox = bed.node.import_busybox()
    bed.create_namespace(NS)
    wait_for(lambda: bed.core.list_namespaced_service_account(NS).items, what="default ServiceAccount")
    logdir = tmp_path_factory.mktemp("operators")
    replicas = [OperatorProcess(bed, logdir, "--leader-election", f"--leader-election-namespace={NS}",
                                f"--lease-duration={LEASE}", name=f"operator-{i}", log_format="json")
                for i in range(2)]
    scene = Scene(bed, Env(bed, NS, replicas[0]), replicas)
    env = scene.env
    try:
        for replica in replicas:
            scene.start(replica)
        scene.wait_leader()
        targets = {"main": [{"kind": "Deployment", "name": CONSUMER}, {"kind": "Deployment", "name": MISSING}],
                   "stuck": [{"kind": "Deployment", "name": STUCK}]}
        for name, named in targets.items():
            app = env.secret_app(f"{name}-{uuid.uuid4().hex[:6]}", secret_name=f"{name}-cred", lifetime=LIFETIME)
            env.create(name, app, {"clientSecret": {"name": f"{name}-cred"}}, restartTargets=named)
        for name, named in targets.items():
            env.wait_ready(name, timeout=60)
            # each target first seen: taken to run with the token in the Secret, restarted for none
            scene.watch(scene.all_current(name, len(named)), timeout=30, what=f"{name}'s targets Current")
        first = {name: list(seen) for name, seen in scene.refreshes.items()}
        scene.apps.create_namespaced_deployment(NS, consumer(CONSUMER, 2, {
            "image": IMAGE, "command": ["python3", "-c", CONSUMER_SCRIPT],
            "env": [{"name": "ACCESS_TOKEN",
                     "valueFrom": {"secretKeyRef": {"name": "main-token", "key": "access_token"}}}]}))
        # one pod fits the node; a second beside it (the rollout's surge) does not
        allocatable = cpu_millis(bed.core.read_node(NODE_NAME).status.allocatable["cpu"])
        scene.apps.create_namespaced_deployment(NS, consumer(STUCK, 1, {
            "image": busybox, "command": ["/bin/sh", "-c", "while true; do sleep 5; done"],
            "resources": {"requests": {"cpu": f"{allocatable * 6 // 10}m"}}}))
        scene.look()
        assert scene.refreshes == first, "a token came before the Deployments: their rollouts would not count"
        scene.rolled_out()
        scene.watch(lambda: [p for p in bed.core.list_namespaced_pod(NS, label_selector=f"app={STUCK}").items
                             if pod_ready(p)], timeout=60, what=f"{STUCK}'s pod Ready")
        yield scene
    finally:
        for replica in replicas:
            replica.stop()
        bed.delete_namespace(NS)


def test_each_new_token_rolls_the_env_consumer_once_and_a_missing_target_is_not_found(scene: Scene) -> None:
    """The first new token: the leader restarts the consumer right after writing it (its pods start with the new
    token while the old one still has half its life); the target that does not exist is NotFound, and told once."""
    [first] = scene.refreshes["main"]
    assert len(scene.replica_sets[CONSUMER]) == 1
    token_time = scene.next_token("main", rollouts=0)
    record = scene.restarted_for(token_time, rollouts=1)
    leader = scene.leader()
    assert leader is not None and scene.restarted_by_event(token_time) == {leader.process.name}
    assert record["lastRestartTime"] >= token_time, record
    missing = scene.records("main")[MISSING]
    assert missing["outcome"] == "NotFound" and "not found" in missing["message"], missing
    events = [e[:2] for e in scene.env.events("main")]
    assert ("Normal", "WorkloadRestarted") in events and ("Warning", "RestartNotFound") in events, events
    pods = scene.rolled_out()
    template = scene.apps.read_namespaced_deployment(CONSUMER, NS).spec.template.metadata.annotations
    print(f"\nfirst new token (acquired {token_time}, the first at {first}): {CONSUMER} restarted at "
          f"{template[RESTARTED_AT_ANNOTATION]}, rolled out to {pods}; {MISSING}: {missing['outcome']}: "
          f"{missing['message']}")


def test_an_operator_restart_rolls_nothing(scene: Scene) -> None:
    """Both replicas stopped, then started: the new leader resumes with the token in the Secret and restarts
    nothing; the next new token rolls the consumer once."""
    token_time = scene.refreshes["main"][-1]
    before = scene.consumer_restarts()
    for replica in sorted(scene.replicas, key=lambda r: r is scene.leader()):  # the standby first: no handover
        replica.stop()
    for replica in scene.replicas:
        scene.start(replica)
    scene.note("both operators stopped (SIGTERM) and started again")
    leader = scene.wait_leader()
    resumed = scene.resumed(leader)
    metric = scene.restarted_by(leader)
    sets = len(scene.replica_sets[CONSUMER])
    newer = scene.next_token("main", rollouts=1)  # the ReplicaSets unchanged until then
    after = scene.restarts_but(newer)
    count = sum(c for c, _ in after.values()) - sum(c for c, _ in before.values())
    print(f"\noperator restart: {leader.process.name} leader again, resumed {NS}/main at {hms(resumed)} with the "
          f"token of {token_time}; restarts of {CONSUMER} by the restarted operator until the next new token "
          f"({newer}): {count}; ReplicaSets of {CONSUMER}: {sets} after the restart, {sets} until that token; "
          f"graphcred_workload_restarts_total{{outcome=Restarted}} of the restarted operator when it resumed: "
          f"{metric:.0f} (it counts the stuck credential's target too)")
    assert after == before and count == 0, (before, after)
    scene.restarted_for(newer, rollouts=2)
    assert scene.restarted_by_event(newer) == {leader.process.name}


def test_a_leader_change_rolls_nothing(scene: Scene) -> None:
    """The leader killed (no release of its Lease): the standby takes over when the Lease runs out, resumes with the
    token in the Secret and restarts nothing; the next new token rolls the consumer once, by the new leader."""
    old = scene.leader()
    assert old is not None
    token_time = scene.refreshes["main"][-1]
    before = scene.consumer_restarts()
    killed = time.monotonic()
    old.kill()
    scene.note(f"{old.process.name}, the leader, killed (SIGKILL)")
    new = scene.wait_leader(other_than=old)
    took = time.monotonic() - killed
    scene.note(f"{new.process.name} took the Lease")
    resumed = scene.resumed(new)
    metric = scene.restarted_by(new)
    sets = len(scene.replica_sets[CONSUMER])
    newer = scene.next_token("main", rollouts=2)  # the ReplicaSets unchanged until then
    after = scene.restarts_but(newer)
    count = sum(c for c, _ in after.values()) - sum(c for c, _ in before.values())
    print(f"\nleader change: {old.process.name} killed, {new.process.name} leader after {took:.1f} s, resumed "
          f"{NS}/main at {hms(resumed)} with the token of {token_time}; restarts of {CONSUMER} by the new leader "
          f"until the next new token ({newer}): {count}; ReplicaSets of {CONSUMER}: {sets} until that token; "
          f"graphcred_workload_restarts_total{{outcome=Restarted}} of the new leader when it resumed: {metric:.0f}")
    assert after == before and count == 0, (before, after)
    scene.restarted_for(newer, rollouts=3)
    assert scene.restarted_by_event(newer) == {new.process.name}
    scene.start(old)  # a standby again


def test_rollouts_equal_new_tokens_and_no_ready_pod_held_an_expired_token(scene: Scene) -> None:
    pods = scene.rolled_out()
    record = scene.records("main")[CONSUMER]
    refreshes = scene.refreshes["main"]
    assert record["tokenTime"] == refreshes[-1], (record, refreshes)
    new_tokens = len(refreshes) - 1
    rollouts = len(scene.replica_sets[CONSUMER]) - 1
    generation = scene.apps.read_namespaced_deployment(CONSUMER, NS).metadata.generation
    assert new_tokens >= 3, refreshes
    assert rollouts == new_tokens == generation - 1, (rollouts, new_tokens, generation)
    # each rollout right after its token: its ReplicaSet created within seconds of the token's lastRefreshTime
    created = sorted(scene.replica_sets[CONSUMER].values())[1:]
    lag = [(c - dt.datetime.fromisoformat(t.replace("Z", "+00:00"))).total_seconds()
           for c, t in zip(created, refreshes[1:], strict=True)]
    assert all(0 <= s < 10 for s in lag), list(zip(refreshes[1:], created, strict=True))
    expired = [(pod, line.digest, hms(line.at)) for pod, lines in scene.lines.items() for line in lines
               if line.expired]
    assert not expired, f"consumer pods logged an expired token: {expired}"

    # the consumer's log next to the rollouts, in time order
    # each token at its lastRefreshTime (whole seconds, as status has it; the test saw the Secret a moment later)
    timeline: list[tuple[dt.datetime, str]] = []
    written = sorted(scene.tokens.items(), key=lambda item: item[1][0])
    assert len(written) == len(refreshes), (len(written), refreshes)
    for (d, (seen, exp)), acquired in zip(written, refreshes, strict=True):
        timeline.append((dt.datetime.fromisoformat(acquired.replace("Z", "+00:00")),
                         f"Secret main-token: token {d} acquired (exp {hms(from_epoch(exp))}; the test saw it at "
                         f"{hms(seen)})"))
    timeline += [(at, f"test: {text}") for at, text in scene.notes]
    for rs, created in scene.replica_sets[CONSUMER].items():
        timeline.append((created, f"ReplicaSet {rs} created"))
    for pod, lines in scene.lines.items():
        timeline.append((lines[0].at, f"  {pod}: token {lines[0].digest} exp {hms(from_epoch(lines[0].exp))} "
                                      f"expired {'yes' if lines[0].expired else 'no'} (its first line)"))
        last = lines[-1]
        timeline.append((last.at, f"  {pod}: token {last.digest} expired {'yes' if last.expired else 'no'} "
                                  f"(its last line seen, {len(lines)} lines, "
                                  f"{last.exp - last.at.timestamp():.0f} s before exp)"))
    print(f"\n{new_tokens} new tokens after the first, {rollouts} rollouts of {CONSUMER} (generation {generation}), "
          f"each ReplicaSet {', '.join(f'{s:.0f}' for s in lag)} s after its token's lastRefreshTime; "
          f"{scene.ready_checks} checks of a Ready pod's token, none expired; pods now {pods}")
    for at, text in sorted(timeline, key=lambda entry: (entry[0], not entry[1].startswith("Secret"))):
        print(f"  {hms(at)} {text}")


def test_a_stuck_rollout_is_waited_for_not_stacked(scene: Scene) -> None:
    """stuck-app's first restart cannot be scheduled (its surge pod does not fit beside the old one): each newer
    token finds it in progress, Waiting, and no second rollout is started."""
    def waiting() -> dict[str, Any] | None:
        record = scene.records("stuck").get(STUCK) or {}
        return record if len(scene.refreshes["stuck"]) >= 3 and record.get("outcome") == "Waiting" else None

    record = scene.watch(waiting, timeout=NEXT_TOKEN, what=f"{STUCK} Waiting after two new tokens")
    refreshes = scene.refreshes["stuck"]
    assert record["tokenTime"] == refreshes[1], "the record keeps the token it last restarted for"
    assert record["lastRestartTime"] >= refreshes[1], record
    assert "in progress" in record["message"], record
    sets = scene.replica_sets[STUCK]
    assert len(sets) == 2, sets
    body = scene.apps.read_namespaced_deployment(STUCK, NS)
    assert body.metadata.generation == 2, "one restart only"
    pending = [p for p in scene.bed.core.list_namespaced_pod(NS, label_selector=f"app={STUCK}").items
               if p.status.phase == "Pending"]
    unschedulable = [c for p in pending for c in p.status.conditions or []
                     if c.type == "PodScheduled" and c.reason == "Unschedulable"]
    assert unschedulable, [p.status for p in pending]
    events = [e for e in scene.env.events("stuck") if e[1] == "RestartWaiting"]
    assert events and events[0][0] == "Warning", scene.env.events("stuck")
    print(f"\nstuck: {len(refreshes)} tokens ({', '.join(refreshes)}); ReplicaSets {sorted(sets)}; generation "
          f"{body.metadata.generation}; pending pod: {unschedulable[0].message}; record: {record['outcome']} since "
          f"the token of {record['tokenTime']}: {record['message']}")
