"""Restart targets (issue 28): the pure decisions of `reconcile.restarts`, and the restarter against an in-memory
workload store (the bed's tests, tests/e2e/test_restart_targets.py and tests/node, run the real thing)."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from graphcred.api.keys import RESTARTED_AT_ANNOTATION
from graphcred.api.model import GraphAppCredentialSpec, RestartOutcome, RestartStatus
from graphcred.kube.errors import Forbidden
from graphcred.reconcile import restarter as restarter_module
from graphcred.reconcile.restarter import Restarter
from graphcred.reconcile.restarts import Action, Target, action, records_of, rollout_in_progress, targets
from graphcred.telemetry.metrics import Metrics

T1, T2, T3 = "2026-12-06T10:00:00Z", "2026-12-06T10:30:00Z", "2026-12-06T11:00:00Z"
KEY = ("ns", "cred")


def record(outcome: RestartOutcome, token: str | None) -> RestartStatus:
    return RestartStatus(kind="Deployment", name="web", token_time=token, outcome=outcome)


# --- pure ---------------------------------------------------------------------------------------------------------
def test_a_target_restarts_once_for_each_newer_token_and_never_for_the_one_it_was_first_seen_with() -> None:
    assert action(None, T1) == Action.ADOPT, "first seen: its pods hold the token in the Secret"
    assert action(None, None) == Action.NOTHING, "no token yet: nothing to restart for"
    assert action(record(RestartOutcome.CURRENT, T1), T1) == Action.NOTHING
    assert action(record(RestartOutcome.RESTARTED, T1), T1) == Action.NOTHING, "at most once per token"
    assert action(record(RestartOutcome.RESTARTED, T1), T2) == Action.RESTART
    assert action(record(RestartOutcome.WAITING, T1), T2) == Action.RESTART, "still due while it waits"
    assert action(record(RestartOutcome.FORBIDDEN, T1), T2) == Action.RESTART
    assert action(record(RestartOutcome.NOT_FOUND, T2), T2) == Action.NOTHING, "a missing one is not retried"


def test_the_spec_refuses_a_target_in_another_namespace_and_an_unknown_kind() -> None:
    base = {"tenantId": "contoso.onmicrosoft.com", "clientId": "00000000-0000-0000-0000-000000000001",
            "credential": {"clientSecret": {"name": "s"}}}
    spec = GraphAppCredentialSpec.model_validate({**base, "restartTargets": [{"kind": "Deployment", "name": "web"}]})
    assert [(t.kind.value, t.name) for t in spec.restart_targets] == [("Deployment", "web")]
    with pytest.raises(ValueError, match="own namespace"):
        GraphAppCredentialSpec.model_validate(
            {**base, "restartTargets": [{"kind": "Deployment", "name": "web", "namespace": "other"}]})
    with pytest.raises(ValueError):
        GraphAppCredentialSpec.model_validate({**base, "restartTargets": [{"kind": "Pod", "name": "web"}]})


def deployment(*, generation: int = 2, observed: int = 2, replicas: int = 2, updated: int = 2, total: int = 2,
               available: int = 2, restarted: str | None = "2026-12-06T10:00:00Z", paused: bool = False
               ) -> dict[str, Any]:
    annotations = {RESTARTED_AT_ANNOTATION: restarted} if restarted else {}
    return {"metadata": {"name": "web", "generation": generation},
            "spec": {"replicas": replicas, "paused": paused, "template": {"metadata": {"annotations": annotations}}},
            "status": {"observedGeneration": observed, "replicas": total, "updatedReplicas": updated,
                       "availableReplicas": available}}


def test_a_rollout_graphcred_started_counts_as_in_progress_until_kubectl_rollout_status_would_say_done() -> None:
    assert rollout_in_progress("Deployment", deployment()) is None
    assert "not yet seen" in (rollout_in_progress("Deployment", deployment(observed=1)) or "")
    assert "1 of 2 pods updated" in (rollout_in_progress("Deployment", deployment(updated=1)) or "")
    assert "old pods" in (rollout_in_progress("Deployment", deployment(total=3)) or "")
    assert "1 of 2 updated pods available" in (rollout_in_progress("Deployment", deployment(available=1)) or "")
    assert "paused" in (rollout_in_progress("Deployment", deployment(paused=True)) or "")
    # a rollout graphcred did not start (no annotation of its own) is not its to wait for
    assert rollout_in_progress("Deployment", deployment(updated=0, restarted=None)) is None
    sts = {"metadata": {"generation": 3}, "spec": {"replicas": 3, "template": {"metadata": {"annotations": {
        RESTARTED_AT_ANNOTATION: T1}}}}, "status": {"observedGeneration": 3, "updatedReplicas": 3, "readyReplicas": 2}}
    assert "2 of 3 pods ready" in (rollout_in_progress("StatefulSet", sts) or "")
    on_delete = copy.deepcopy(sts)
    on_delete["spec"]["updateStrategy"] = {"type": "OnDelete"}
    assert rollout_in_progress("StatefulSet", on_delete) is None, "OnDelete rolls nothing by itself"
    ds = {"metadata": {"generation": 1}, "spec": {"template": {"metadata": {"annotations": {
        RESTARTED_AT_ANNOTATION: T1}}}}, "status": {"observedGeneration": 1, "desiredNumberScheduled": 4,
                                                    "updatedNumberScheduled": 4, "numberAvailable": 4}}
    assert rollout_in_progress("DaemonSet", ds) is None
    ds["status"]["updatedNumberScheduled"] = 3
    assert "3 of 4 pods updated" in (rollout_in_progress("DaemonSet", ds) or "")
    assert rollout_in_progress("Deployment", {"metadata": "junk", "spec": None}) is None


def test_targets_are_the_specs_in_order_then_the_derived_ones_it_does_not_name() -> None:
    found = targets([("Deployment", "b"), ("StatefulSet", "a")], [("Deployment", "b"), ("DaemonSet", "c")])
    assert found == [Target("Deployment", "b"), Target("StatefulSet", "a"), Target("DaemonSet", "c", derived=True)]
    assert records_of([{"kind": "Deployment", "name": "x", "outcome": "Nonsense"}, "junk"]) == {}


# --- the restarter ------------------------------------------------------------------------------------------------
class Workloads:
    """Deployments and ReplicaSets in dicts; generation bumps on a template change, as the apiserver does, and the
    rollout completes at once unless a test holds it back."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.patches: list[tuple[str, str]] = []
        self.status: dict[str, Any] = {}
        self.forbidden = False

    def add(self, kind: str, name: str, body: dict[str, Any] | None = None) -> None:
        self.objects[(kind, name)] = body or deployment(restarted=None)

    def read_workload(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        if self.forbidden:
            raise Forbidden(f"read {kind}", 403, "Forbidden")
        found = self.objects.get((kind, name))
        return copy.deepcopy(found) if found else None

    def patch_workload(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> bool:
        body = self.objects.get((kind, name))
        if body is None:
            return False
        self.patches.append((kind, name))
        body["spec"]["template"]["metadata"].setdefault("annotations", {}).update(
            patch["spec"]["template"]["metadata"]["annotations"])
        body["metadata"]["generation"] += 1
        body.setdefault("status", {})["observedGeneration"] = body["metadata"]["generation"]  # a quick controller
        return True

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.status.update(status)


class Rig:
    def __init__(self) -> None:
        self.kube = Workloads()
        self.events: list[tuple[str, str, str]] = []
        self.metrics = Metrics()

        async def blocking(fn: Callable[..., Any], *args: Any) -> Any:
            return fn(*args)

        def emit(obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
            self.events.append((type_, reason, message))

        self.restarter = Restarter(self.kube, blocking, emit, self.metrics,
                                   lambda: dt.datetime(2026, 12, 6, 12, tzinfo=dt.UTC))

    def track(self, token: str | None, named: list[tuple[str, str]] | None = None, status: dict[str, Any] | None = None,
              unrefreshable: bool = False) -> None:
        ref = {"metadata": {"namespace": KEY[0], "name": KEY[1]}}
        self.restarter.track(KEY, ref, status if status is not None else self.kube.status,
                             named if named is not None else [("Deployment", "web")], unrefreshable, token)

    def outcome(self, name: str = "web") -> str | None:
        return next((r["outcome"] for r in self.kube.status.get("restarts") or [] if r["name"] == name), None)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


async def until(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def settled(rig: Rig) -> None:
    """The restarter's tasks have ended: nothing is due (a task runs only while something is)."""
    await asyncio.sleep(0)
    await until(lambda: all(j.task is None or j.task.done() for j in rig.restarter._jobs.values()), "idle")


def test_one_rollout_per_new_token_and_none_for_a_token_already_served() -> None:
    rig = Rig()
    rig.kube.add("Deployment", "web")

    async def scenario() -> None:
        rig.track(T1)
        await until(lambda: rig.outcome() == "Current", "the target adopted")
        assert rig.kube.patches == [], "first seen: its pods already hold the token"
        rig.track(T2)
        await until(lambda: rig.outcome() == "Restarted", "the restart for T2")
        rig.track(T2)  # another pass, the same token (a re-render, a kept token)
        await settled(rig)
        assert rig.kube.patches == [("Deployment", "web")]
        assert ("Normal", "WorkloadRestarted") in [e[:2] for e in rig.events]
        await rig.restarter.stop()

    run(scenario)


def test_an_operator_restart_or_a_new_leader_restarts_nothing_for_the_token_its_status_records() -> None:
    before = Rig()
    before.kube.add("Deployment", "web")

    async def first_life() -> None:
        before.track(T1)
        await until(lambda: before.outcome() == "Current", "adopted")
        before.track(T2)
        await until(lambda: before.outcome() == "Restarted", "restarted")
        await before.restarter.stop()

    run(first_life)
    after = Rig()  # a new process: nothing in memory, the object's status as the last one left it
    after.kube.objects = before.kube.objects

    async def second_life() -> None:
        after.track(T2, status=copy.deepcopy(before.kube.status))
        await settled(after)
        assert after.kube.patches == [], "a restart or a leader change must cause no rollout"
        after.track(T3, status=copy.deepcopy(before.kube.status))
        await until(lambda: after.kube.patches == [("Deployment", "web")], "the restart for the next token")
        await after.restarter.stop()

    run(second_life)


def test_a_rollout_still_in_progress_is_waited_for_and_never_stacked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(restarter_module, "WAITING_POLL", 0.05)
    rig = Rig()
    rig.kube.add("Deployment", "web")

    async def scenario() -> None:
        rig.track(T1)
        await until(lambda: rig.outcome() == "Current", "adopted")
        rig.track(T2)
        await until(lambda: rig.outcome() == "Restarted", "the first restart")
        body = rig.kube.objects[("Deployment", "web")]
        body["status"]["updatedReplicas"] = 0  # stuck: an unschedulable pod, say
        rig.track(T3)
        await until(lambda: rig.outcome() == "Waiting", "the wait reported")
        await asyncio.sleep(0.3)  # several polls
        assert rig.kube.patches == [("Deployment", "web")], "no second rollout on a stuck one"
        assert [e[1] for e in rig.events].count("RestartWaiting") == 1, "one Event, not one per poll"
        body["status"]["observedGeneration"] = body["metadata"]["generation"]
        body["status"]["updatedReplicas"] = 2
        await until(lambda: rig.outcome() == "Restarted", "the restart once the rollout is done")
        assert rig.kube.patches == [("Deployment", "web")] * 2
        await rig.restarter.stop()

    run(scenario)


def test_a_missing_or_forbidden_target_says_so_and_a_forbidden_one_is_tried_again() -> None:
    rig = Rig()

    async def scenario() -> None:
        rig.track(T1, named=[("Deployment", "web"), ("StatefulSet", "db")])
        await until(lambda: rig.outcome("db") == "Current", "adopted")
        rig.kube.add("Deployment", "web")
        rig.kube.forbidden = True
        rig.track(T2, named=[("Deployment", "web"), ("StatefulSet", "db")])
        await until(lambda: rig.outcome("web") == "Forbidden" and rig.outcome("db") == "Forbidden", "refused")
        message = next(r["message"] for r in rig.kube.status["restarts"] if r["name"] == "web")
        assert "restartTargets.enabled" in message
        rig.kube.forbidden = False  # the admin enabled the RBAC: the retry (backoff from 1 s) restarts it
        await until(lambda: rig.outcome("web") == "Restarted", "restarted once allowed", timeout=10)
        assert rig.outcome("db") == "NotFound"
        assert rig.kube.patches == [("Deployment", "web")]
        await rig.restarter.stop()

    run(scenario)


def test_restart_unrefreshable_restarts_the_deployment_behind_a_flagged_pods_replica_set() -> None:
    rig = Rig()
    rig.kube.add("Deployment", "web")
    rig.kube.add("ReplicaSet", "web-5d8f", {"metadata": {"name": "web-5d8f", "ownerReferences": [
        {"kind": "Deployment", "name": "web", "controller": True}]}})
    rig.restarter.unrefreshable = lambda key: {"ReplicaSet/web-5d8f", "Job/once"}
    rig.restarter.watching = True

    async def scenario() -> None:
        rig.track(T1, named=[], unrefreshable=True)
        await until(lambda: rig.outcome() == "Current", "the derived target adopted")
        assert rig.kube.status["restarts"][0]["derived"] is True
        rig.track(T2, named=[], unrefreshable=True)
        await until(lambda: rig.outcome() == "Restarted", "restarted")
        assert rig.kube.patches == [("Deployment", "web")]
        rig.track(T2, named=[], unrefreshable=False)  # turned off: its record goes
        await until(lambda: rig.kube.status.get("restarts") is None, "the record removed")
        await rig.restarter.stop()

    run(scenario)


def test_restart_unrefreshable_without_the_pod_watch_says_it_finds_nothing() -> None:
    rig = Rig()

    async def scenario() -> None:
        rig.track(T1, named=[], unrefreshable=True)
        await until(lambda: any(e[1] == "RestartUnrefreshableUnwatched" for e in rig.events), "the warning")
        rig.track(T2, named=[], unrefreshable=True)
        await settled(rig)
        assert [e[1] for e in rig.events].count("RestartUnrefreshableUnwatched") == 1
        await rig.restarter.stop()

    run(scenario)
