"""Events on the real apiserver as tools read them: reported by component `graphcred` from the operator's pod (the
chart's POD_NAME), in core/v1's source and reporting fields and in events.k8s.io/v1's reportingController, found by
`kubectl events --for gac/NAME` and its filters; repeats counted on one Event; a refused post harms nothing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from graphcred.app.config import RunConfig
from graphcred.app.wiring import api_client
from graphcred.kube.calls import Kube
from graphcred.kube.events import EventRecorder
from graphcred.kube.loopcalls import LoopKube
from graphcred_testbed.bed import wait_for

from ..helpers import Env
from .test_chart import render

pytestmark = pytest.mark.bed

POD = "graphcred-5c7d9f8b6d-x2x4q"


@pytest.fixture
def in_a_pod(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """The session operator, restarted as the chart runs it: POD_NAME set from the downward API."""
    env.operator.stop()
    monkeypatch.setenv("POD_NAME", POD)
    env.operator.start()
    try:
        yield env
    finally:
        env.operator.stop()
        monkeypatch.delenv("POD_NAME")
        env.operator.start()


def test_the_chart_names_the_pod_for_the_events() -> None:
    [deploy] = [d for d in render() if d["kind"] == "Deployment"]
    env = {e["name"]: e for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def kubectl_events(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl events` in the test's namespace. With a fresh discovery cache: kubectl's (kept 10 minutes) was
    filled before the bed installed the CRD, and `kubectl events --for` does not look again on a miss."""
    with tempfile.TemporaryDirectory() as cache:
        result: subprocess.CompletedProcess[str] = env.bed.kubectl("events", f"--cache-dir={cache}", "-n",
                                                                   env.namespace, *args, check=False)
    assert result.returncode == 0, result.stderr
    return result


def _core_events(env: Env, name: str) -> list[client.CoreV1Event]:
    return list(env.bed.core.list_namespaced_event(env.namespace, field_selector=f"involvedObject.name={name}").items)


def test_events_are_reported_by_graphcred_from_its_pod_and_kubectl_events_finds_them(in_a_pod: Env) -> None:
    env = in_a_pod
    app = env.secret_app("ev", secret_name="cred")
    obj = env.create("ev", app, {"clientSecret": {"name": "cred"}})
    env.wait_ready("ev")
    env.create("bad", env.register_app(secret="registered"), {"clientSecret": {"name": "cred"}})
    env.wait_condition("bad", "False", "Unauthorized")
    # posted after the status patch: waited for before `everything` below is listed
    wait_for(lambda: [e for e in _core_events(env, "bad") if e.reason == "Unauthorized"], timeout=10,
             what="bad's Unauthorized Event")
    issued = wait_for(lambda: [e for e in _core_events(env, "ev") if e.reason == "TokenIssued"], timeout=10,
                      what="the TokenIssued Event")[0]
    assert (issued.source.component, issued.source.host) == ("graphcred", POD)
    assert (issued.reporting_component, issued.reporting_instance) == ("graphcred", POD)
    assert issued.action == "AcquireToken" and issued.type == "Normal" and issued.count == 1
    assert issued.involved_object.uid == obj["metadata"]["uid"]
    assert issued.involved_object.kind == "GraphAppCredential"
    # the same Events through events.k8s.io/v1, as newer exporters read them
    v1 = client.EventsV1Api(env.bed.core.api_client).list_namespaced_event(env.namespace).items
    new_api = next(e for e in v1 if e.regarding.name == "ev" and e.reason == "TokenIssued")
    assert (new_api.reporting_controller, new_api.reporting_instance) == ("graphcred", POD)
    # nothing is posted under kopf's defaults any more
    everything = env.bed.core.list_namespaced_event(env.namespace).items
    assert {(e.source.component, e.reporting_component) for e in everything} == {("graphcred", "graphcred")}
    # kubectl events --for resolves the short name and lists them; --types filters
    listed = kubectl_events(env, "--for", "gac/ev").stdout
    assert "TokenIssued" in listed and "GraphAppCredential/ev" in listed
    warnings = kubectl_events(env, "--for", "gac/bad", "--types=Warning", "-o", "json")
    reasons = [(e["reason"], e["reportingComponent"], e["source"]["host"])
               for e in json.loads(warnings.stdout)["items"]]
    assert reasons == [("Unauthorized", "graphcred", POD)]
    none = kubectl_events(env, "--for", "gac/ev", "--types=Warning")
    assert "TokenIssued" not in none.stdout + none.stderr
    # the apiserver's own filters on the reporter, as `kubectl get events --field-selector` and exporters use them
    for selector in ("source=graphcred", "reportingComponent=graphcred"):
        found = env.bed.core.list_namespaced_event(env.namespace, field_selector=selector).items
        assert len(found) == len(everything) >= 2, selector
    assert env.bed.core.list_namespaced_event(env.namespace, field_selector="source=kopf").items == []


def _post(env: Env, recorder_calls: list[tuple[dict[str, Any], str, str, str]], between: Any = None,
          how: str = "threads") -> EventRecorder:
    """Post Events through the operator's recorder to the bed's apiserver, in order; `between()` after the first.
    `how`: in threads (`Kube`), or on the loop (`LoopKube`), as the operator does when it can."""
    kube = Kube(api_client(RunConfig(kubeconfig=str(env.bed.kubeconfig))))

    async def scenario() -> EventRecorder:
        async def in_thread(fn: Any, *args: Any) -> Any:
            return await asyncio.to_thread(fn, *args)

        on_loop = LoopKube(kube, limit=4) if how == "loop" else None
        recorder = EventRecorder(kube, in_thread, instance="test-instance", retry_delays=(0.1,), on_loop=on_loop)
        recorder.start()
        for i, call in enumerate(recorder_calls):
            recorder(*call)
            if i == 0 and between is not None:
                await recorder.stop()
                between()
                recorder.start()
        await recorder.stop(timeout=20)
        if on_loop is not None:
            await on_loop.close()
        return recorder

    return asyncio.run(scenario())


@pytest.mark.parametrize("how", ["threads", "loop"])
def test_a_repeat_is_counted_on_one_event_and_an_expired_one_is_posted_anew(env: Env, how: str) -> None:
    app = env.register_app(secret="s")
    obj = env.create("counted", app, {"clientSecret": {"name": "missing"}})
    ref = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": obj["metadata"]}
    recorder = _post(env, [(ref, "Warning", "TestRepeat", "the same thing again")] * 3
                     + [(ref, "Warning", "TestLong", "x" * 3000)], how=how)
    assert recorder.lost == 0
    repeats = [e for e in _core_events(env, "counted") if e.reason == "TestRepeat"]
    assert [(e.count, e.source.component) for e in repeats] == [(3, "graphcred")]
    assert repeats[0].last_timestamp >= repeats[0].first_timestamp
    (long,) = [e for e in _core_events(env, "counted") if e.reason == "TestLong"]
    assert len(long.message) == 1024
    listed = kubectl_events(env, "--for", "gac/counted").stdout
    assert "(x3 over" in listed

    # an Event deleted meanwhile (the apiserver's TTL) is posted anew, not patched into the void
    def expire() -> None:
        for event in _core_events(env, "counted"):
            if event.reason == "TestExpired":
                env.bed.core.delete_namespaced_event(event.metadata.name, env.namespace)

    recorder = _post(env, [(ref, "Normal", "TestExpired", "m")] * 2, between=expire, how=how)
    assert recorder.lost == 0
    assert [e.count for e in _core_events(env, "counted") if e.reason == "TestExpired"] == [1]


@pytest.mark.parametrize("how", ["threads", "loop"])
def test_a_refused_event_is_dropped_and_logged_never_raised(env: Env, caplog: pytest.LogCaptureFixture,
                                                            how: str) -> None:
    ref = {"apiVersion": "graphcred.io/v1alpha1", "kind": "GraphAppCredential",
           "metadata": {"name": "ghost", "namespace": f"{env.namespace}-missing", "uid": "u"}}
    recorder = _post(env, [(ref, "Warning", "TestRefused", "into a namespace that does not exist")], how=how)
    assert recorder.lost == 1
    assert any("Event TestRefused not posted (post Event failed: HTTP 404" in r.getMessage() for r in caplog.records)
