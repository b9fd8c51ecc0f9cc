"""The Event recorder: what it posts (component graphcred, the pod as instance), repeats counted on the Event posted
first, and never in the way of a pass (queued, bounded, failures logged). Against the real apiserver:
tests/e2e/test_events.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes.client import ApiException

from graphcred.kube.errors import Forbidden, KubeError, NoAnswer, ServerError, translated
from graphcred.kube.events import EventRecorder, event_body, event_name, instance_name
from graphcred.reconcile.memory import Memory
from graphcred.reconcile.snapshot import Snapshot

from .fakes import gac, secret_spec
from .harness import Rig, run

T0 = dt.datetime(2025, 11, 25, 18, 0, 0, 123456, tzinfo=dt.UTC)
REF = {"apiVersion": "graphcred.io/v1alpha1", "kind": "GraphAppCredential",
       "metadata": {"name": "mail", "namespace": "team-a", "uid": "u-1"}}


class FakeEvents:
    """The Event calls of Kube, in memory: Events by name; `failures` (KubeErrors, as Kube raises them) raised by
    the next create calls."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.failures: list[Exception] = []
        self.calls = 0
        self.gate = threading.Event()
        self.gate.set()

    def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        self.calls += 1
        if not self.gate.wait(timeout=10):
            raise TimeoutError("gate")
        if self.failures:
            raise self.failures.pop(0)
        assert body["metadata"]["namespace"] == namespace
        self.events[body["metadata"]["name"]] = body

    def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> bool:
        self.calls += 1
        if name not in self.events:
            return False
        self.events[name].update(patch)
        return True


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


def _recorder(api: FakeEvents, **kwargs: Any) -> EventRecorder:
    return EventRecorder(api, _in_thread, instance="graphcred-7d9f-x2x4q", clock=lambda: T0,
                         retry_delays=(0.01, 0.01), **kwargs)


def test_the_instance_is_the_pod_else_the_host() -> None:
    assert instance_name({"POD_NAME": "graphcred-7d9f-x2x4q"}, lambda: "node-1") == "graphcred-7d9f-x2x4q"
    assert instance_name({}, lambda: "laptop") == "laptop"
    assert len(instance_name({"POD_NAME": "p" * 300})) == 128


def test_an_event_names_graphcred_and_its_instance_in_both_apis_fields() -> None:
    body = event_body(REF, "Warning", "Unauthorized", "x" * 5000, name="mail.1", instance="pod-1", at=T0)
    assert body["involvedObject"] == {"apiVersion": "graphcred.io/v1alpha1", "kind": "GraphAppCredential",
                                      "name": "mail", "namespace": "team-a", "uid": "u-1"}
    assert body["source"] == {"component": "graphcred", "host": "pod-1"}
    assert (body["reportingComponent"], body["reportingInstance"]) == ("graphcred", "pod-1")
    assert body["action"] == "AcquireToken"
    assert (body["firstTimestamp"], body["eventTime"]) == ("2025-11-25T18:00:00Z", "2025-11-25T18:00:00.123456Z")
    assert len(body["message"]) == 1024 and body["message"].endswith("...")
    assert event_body(REF, "Warning", "UnrefreshableConsumer", "m", name="n", instance="i", at=T0)["action"] \
        == "CheckConsumers"
    assert event_name("mail", 255) == "mail.ff"
    assert len(event_name("a" * 253, 2**62)) == 253


def test_a_repeat_counts_on_the_event_posted_first() -> None:
    api = FakeEvents()

    async def scenario() -> None:
        recorder = _recorder(api)
        recorder.start()
        for _ in range(3):
            recorder(REF, "Warning", "Unauthorized", "AADSTS7000215")
        recorder(REF, "Normal", "TokenIssued", "token issued")
        await recorder.stop()

    run(scenario)
    assert sorted((e["reason"], e["count"]) for e in api.events.values()) == [("TokenIssued", 1),
                                                                             ("Unauthorized", 3)]


def test_a_repeat_of_an_event_gone_meanwhile_is_posted_anew() -> None:
    api = FakeEvents()

    async def scenario() -> None:
        recorder = _recorder(api)
        recorder.start()
        recorder(REF, "Warning", "Unauthorized", "m")
        await asyncio.sleep(0.1)
        api.events.clear()  # the apiserver's event TTL
        recorder(REF, "Warning", "Unauthorized", "m")
        await recorder.stop()

    run(scenario)
    assert [e["count"] for e in api.events.values()] == [1]


def test_what_is_remembered_for_counting_is_bounded() -> None:
    api = FakeEvents()

    async def scenario() -> None:
        recorder = _recorder(api, cache_size=2)
        recorder.start()
        for message in ("a", "b", "c", "a"):  # "a" was forgotten: a new Event, not a count
            recorder(REF, "Normal", "TokenIssued", message)
        await recorder.stop()
        assert len(recorder._posted) == 2

    run(scenario)
    assert sorted((e["message"], e["count"]) for e in api.events.values()) == [("a", 1), ("a", 1), ("b", 1), ("c", 1)]


def test_a_failing_post_is_retried_only_when_the_apiserver_may_recover_and_never_raises(
        caplog: pytest.LogCaptureFixture) -> None:
    api = FakeEvents()

    async def scenario() -> None:
        recorder = _recorder(api)
        recorder.start()
        api.failures = [ServerError("create Event", 503), ServerError("create Event", 500)]
        recorder(REF, "Normal", "TokenIssued", "third time lucky")
        await recorder.stop()
        assert (api.calls, recorder.lost) == (3, 0)
        api.calls = 0
        recorder = _recorder(api)
        recorder.start()
        api.failures = [Forbidden("create Event", 403, "Forbidden")]
        recorder(REF, "Normal", "TokenIssued", "refused")
        api.failures += [NoAnswer("create Event", None, "MaxRetryError")] * 3
        recorder(REF, "Normal", "TokenIssued", "unreachable")
        await recorder.stop()
        assert (api.calls, recorder.lost) == (4, 2)  # 403: once; no connection: three attempts

    with caplog.at_level(logging.DEBUG, logger="graphcred.kube.events"):
        run(scenario)
    assert [e["message"] for e in api.events.values()] == ["third time lucky"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["team-a/mail: Event TokenIssued not posted (post Event failed: HTTP 403 Forbidden); until "
                        "one is posted again, further losses are logged at DEBUG"]


def _terminating(namespace: str) -> KubeError:
    """The apiserver's answer to a create in a namespace being deleted (its namespace lifecycle admission), as Kube
    raises it."""
    exc = ApiException(status=403, reason="Forbidden")
    exc.body = json.dumps({
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
        "message": f"events is forbidden: unable to create new content in namespace {namespace} because it is "
                   "being terminated",
        "details": {"kind": "events", "causes": [{"reason": "NamespaceTerminating", "field": "metadata.namespace",
                                                   "message": f"namespace {namespace} is being terminated"}]}})
    error = translated("create Event", exc)
    assert isinstance(error, Forbidden)
    return error


def test_an_event_for_a_namespace_being_deleted_is_dropped_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """A credential in a namespace being deleted still gets passes (its last ones): their Events cannot be posted
    there, and that is no failure worth a warning (client-go's recorder drops them at V(5) too)."""
    api = FakeEvents()

    async def scenario() -> None:
        recorder = _recorder(api)
        recorder.start()
        api.failures = [_terminating("team-a")]
        recorder(REF, "Normal", "TokenIssued", "too late")
        api.failures += [Forbidden("create Event", 403, "Forbidden")]
        recorder(REF, "Warning", "Unauthorized", "a real refusal")
        await recorder.stop()
        assert (api.calls, recorder.lost) == (2, 1)  # neither retried; only the real refusal counts as lost

    with caplog.at_level(logging.DEBUG, logger="graphcred.kube.events"):
        run(scenario)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["team-a/mail: Event Unauthorized not posted (post Event failed: HTTP 403 Forbidden); until "
                        "one is posted again, further losses are logged at DEBUG"]


def test_posting_never_blocks_the_caller_and_a_full_queue_drops() -> None:
    api = FakeEvents()

    lost: list[str] = []

    async def scenario() -> None:
        recorder = _recorder(api, queue_size=2, on_lost=lost.append)
        recorder.start()
        api.gate.clear()  # the apiserver hangs
        recorder(REF, "Normal", "TokenIssued", "m0")
        await asyncio.sleep(0.05)  # in the poster's hands, waiting for the answer
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i in range(1, 10):
            recorder(REF, "Normal", "TokenIssued", f"m{i}")
        assert loop.time() - started < 0.05
        assert recorder.lost == 7  # two queued, seven dropped
        api.gate.set()
        await recorder.stop()

    run(scenario)
    assert sorted(e["message"] for e in api.events.values()) == ["m0", "m1", "m2"]
    assert lost == ["queue_full"] * 7  # graphcred_events_lost_total{why="queue_full"}: what an SRE sees of it


def test_on_the_loop_events_are_posted_by_more_posters_and_no_thread() -> None:
    """With the operator's calls on the loop (`LoopKube`), the recorder posts there: no thread (`run_blocking` is
    never called), eight posters at once, repeats counted as in threads."""
    api = FakeEvents()
    in_flight = [0, 0]  # now, most at once
    released = asyncio.Event()

    class OnLoop:
        async def create_event(self, namespace: str, body: dict[str, Any]) -> None:
            in_flight[0] += 1
            in_flight[1] = max(in_flight)
            try:
                await released.wait()
                api.create_event(namespace, body)
            finally:
                in_flight[0] -= 1

        async def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> bool:
            return api.patch_event(namespace, name, patch)

    async def no_thread(fn: Callable[..., Any], *args: Any) -> Any:
        raise AssertionError(f"{fn} run in a thread")

    async def scenario() -> None:
        recorder = EventRecorder(api, no_thread, instance="i", clock=lambda: T0, on_loop=OnLoop())
        recorder.start()
        for i in range(64):
            recorder({**REF, "metadata": {**REF["metadata"], "name": f"c{i}"}}, "Normal", "TokenIssued", "m")
        deadline = asyncio.get_running_loop().time() + 5
        while in_flight[1] < 8 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        released.set()
        for _ in range(2):
            recorder(REF, "Warning", "Unauthorized", "AADSTS7000215")
        await recorder.stop(timeout=10)
        assert recorder.lost == 0

    run(scenario)
    assert in_flight[1] == 8, f"{in_flight[1]} post(s) under way at once"
    assert len(api.events) == 65
    assert [e["count"] for e in api.events.values() if e["reason"] == "Unauthorized"] == [2]


def test_events_from_another_thread_reach_the_loop() -> None:
    api = FakeEvents()

    async def scenario() -> None:
        recorder = _recorder(api)
        recorder.start()
        await asyncio.to_thread(recorder, REF, "Warning", "UnrefreshableConsumer", "from the pod watch")
        await asyncio.sleep(0.05)
        await recorder.stop()

    run(scenario)
    assert [e["reason"] for e in api.events.values()] == ["UnrefreshableConsumer"]


def test_a_pass_completes_when_no_event_can_be_posted() -> None:
    """The reconciler emits from its path: an apiserver refusing every Event changes nothing for the token."""
    api = FakeEvents()
    api.failures = [ServerError("create Event", 500)] * 100

    async def scenario() -> None:
        recorder = _recorder(api)
        recorder.start()
        rig = Rig(emit=recorder)
        kube, reconciler = rig.kube, rig.reconciler
        body = gac("mail", secret_spec(str(uuid.uuid4()), str(uuid.uuid4())))
        kube.objects.add(("ns", "mail"))
        delay = await reconciler.reconcile(Snapshot.of(body), Memory())
        assert delay is not None and delay > 0
        assert kube.ready("ns", "mail") is not None and kube.ready("ns", "mail")["status"] == "True"
        await recorder.stop(timeout=0.1)

    run(scenario)
    assert api.events == {}


def test_several_objects_events_are_posted_at_once_each_objects_in_order() -> None:
    """With thousands of credentials refreshing, the apiserver and the event loop answer slowly, and one post at a
    time trailed a burst's Ready statuses by minutes (bench/scale.py, N=1000). Several objects' Events are under
    way at once; one object's still land one after the other, in order."""
    api = FakeEvents()
    loop_free = asyncio.Event()
    in_flight: list[int] = [0, 0]  # now, most at once
    threads = ThreadPoolExecutor(max_workers=4)  # as the operator posts them: threads of their own
    names = [f"c{i}" for i in range(16)]

    async def slow_answer(fn: Callable[..., Any], *args: Any) -> Any:
        in_flight[0] += 1
        in_flight[1] = max(in_flight)
        try:
            result = await asyncio.get_running_loop().run_in_executor(threads, fn, *args)
            await loop_free.wait()  # the answer comes only later
            return result
        finally:
            in_flight[0] -= 1

    async def scenario() -> None:
        recorder = EventRecorder(api, slow_answer, instance="i", clock=lambda: T0)
        recorder.start()
        for reason in ("Unauthorized", "TokenIssued"):
            for name in names:
                recorder({**REF, "metadata": {**REF["metadata"], "name": name}}, "Normal", reason, "m")
        deadline = asyncio.get_running_loop().time() + 5
        while in_flight[1] < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert in_flight[1] >= 2, f"{in_flight[1]} post(s) under way at once"
        loop_free.set()
        await recorder.stop(timeout=10)

    run(scenario)
    threads.shutdown()
    for name in names:
        posted = [e["reason"] for e in api.events.values() if e["involvedObject"]["name"] == name]
        assert posted == ["Unauthorized", "TokenIssued"], (name, posted)


def test_events_still_queued_when_the_recorder_stops_are_counted_lost() -> None:
    """Review of 60ecd3e: graphcred_events_lost_total{why="stopped"} says 'the operator stopping'; the Events
    still queued when stop() gives up waiting are lost then, and counted."""
    api = FakeEvents()
    lost: list[str] = []

    async def scenario() -> None:
        recorder = _recorder(api, on_lost=lost.append, posters=1)
        recorder.start()
        api.gate.clear()  # the apiserver hangs
        for i in range(3):
            recorder(REF, "Normal", "TokenIssued", f"m{i}")
        await asyncio.sleep(0.05)  # m0 in the poster's hands, m1 and m2 queued
        await recorder.stop(timeout=0.1)
        api.gate.set()

    run(scenario)
    assert lost == ["stopped", "stopped"]


def test_a_poster_outlives_a_call_cancelled_by_a_closed_transport() -> None:
    """LoopKube refuses calls once closed with CancelledError (as the passes' calls are refused at the stop): the
    Event is lost and counted, the poster is not stopped by it and posts the next one."""
    api = FakeEvents()
    refused = [True]

    class Closing:
        async def create_event(self, namespace: str, body: dict[str, Any]) -> None:
            if refused.pop() if refused else False:
                raise asyncio.CancelledError("the operator is stopping")
            api.create_event(namespace, body)

        async def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> bool:
            return api.patch_event(namespace, name, patch)

    lost: list[str] = []

    async def scenario() -> None:
        recorder = EventRecorder(api, _in_thread, instance="i", clock=lambda: T0, on_loop=Closing(), posters=1,
                                 on_lost=lost.append)
        recorder.start()
        recorder(REF, "Warning", "Unauthorized", "first")
        recorder(REF, "Normal", "TokenIssued", "second")
        await recorder.stop(timeout=5)

    run(scenario)
    assert lost == ["failed"]
    assert [e["message"] for e in api.events.values()] == ["second"]
