"""The --workload-identity switch: from the command line or the chart's environment variable to the reconciler, and
the ServiceAccount watch that exists only with it (the chart grants ServiceAccount access only then); the same for
--watch-consumers and the pod watch."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from graphcred.app import wiring
from graphcred.app.config import RunConfig
from graphcred.app.stopflag import StopFlag
from graphcred.consumers.reports import ConsumerReports
from graphcred.kube.metawatch import Directory
from graphcred.reconcile.controller import Controller
from graphcred.telemetry.metrics import Health, Metrics

from .fakes import FakeKube
from .harness import Rig
from .runconfig import run_config


@pytest.mark.parametrize(("argv", "env", "expected"), [
    pytest.param((), None, False, id="off-by-default"),
    pytest.param(("--workload-identity",), None, True, id="flag"),
    pytest.param((), "true", True, id="chart-env"),
    pytest.param((), "false", False, id="chart-env-off"),
    pytest.param(("--no-workload-identity",), "true", False, id="flag-beats-env"),
])
def test_workload_identity_switch(monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...], env: str | None,
                                  expected: bool) -> None:
    if env is None:
        monkeypatch.delenv("GRAPHCRED_WORKLOAD_IDENTITY", raising=False)
    else:
        monkeypatch.setenv("GRAPHCRED_WORKLOAD_IDENTITY", env)
    assert run_config(monkeypatch, *argv).workload_identity is expected


@pytest.mark.parametrize(("flag", "env", "field"), [
    ("--authority-host", "GRAPHCRED_AUTHORITY_HOSTS", "authority_hosts"),
    ("--workload-identity-authority", "GRAPHCRED_WORKLOAD_IDENTITY_AUTHORITIES", "workload_identity_authorities"),
])
def test_allowed_authority_hosts_from_flags_or_the_chart_env(monkeypatch: pytest.MonkeyPatch, flag: str, env: str,
                                                             field: str) -> None:
    monkeypatch.setenv(env, "https://Login.Example.net/, https://b.example:8443")
    config = run_config(monkeypatch)
    assert getattr(config, field) == ("https://login.example.net", "https://b.example:8443")
    assert set(config.allowed_authorities) >= {"https://login.example.net", "https://b.example:8443"}
    assert getattr(run_config(monkeypatch, f"{flag}=https://c.example", f"{flag}=https://d.example:443"), field) \
        == ("https://c.example", "https://d.example")


@pytest.mark.parametrize("flag", ["--authority-host", "--workload-identity-authority"])
@pytest.mark.parametrize("bad", ["login.example.net", "http://login.example.net", "https://x.example/tenant",
                                 "https://127.0.0.1:99999", "https://user@x.example"])
def test_a_mistyped_authority_host_stops_the_operator_at_start(monkeypatch: pytest.MonkeyPatch, bad: str,
                                                               flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("GRAPHCRED_WORKLOAD_IDENTITY_AUTHORITIES", raising=False)
    monkeypatch.delenv("GRAPHCRED_AUTHORITY_HOSTS", raising=False)
    with pytest.raises(SystemExit) as exited:
        run_config(monkeypatch, f"{flag}={bad}")
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "expected https://host[:port]" in err and flag in err


class RecordedWatch:
    """Stands in for MetadataWatch: records what would be watched, starts nothing."""

    made: list[tuple[str, str | None, str]] = []

    def __init__(self, api: client.ApiClient, callback: Any, namespace: str | None = None,
                 resource: str = "secrets") -> None:
        self.made.append((resource, namespace, callback.__name__))

    def start(self) -> RecordedWatch:
        return self


APPS = "graphcred-system"  # the cluster resource namespace: ClusterGraphApps' Secrets and ServiceAccounts


@pytest.mark.parametrize(("namespaces", "workload_identity", "expected"), [
    ((), False, [("secrets", None, "on_secret")]),
    ((), True, [("secrets", None, "on_secret"), ("serviceaccounts", None, "on_service_account")]),
    (("a", "b"), False, [("secrets", "a", "on_secret"), ("secrets", "b", "on_secret"), ("secrets", APPS, "on_secret")]),
    (("a", "b"), True, [("secrets", "a", "on_secret"), ("secrets", "b", "on_secret"), ("secrets", APPS, "on_secret"),
                        ("serviceaccounts", "a", "on_service_account"),
                        ("serviceaccounts", "b", "on_service_account"),
                        ("serviceaccounts", APPS, "on_service_account")]),
    ((APPS, "b"), False, [("secrets", APPS, "on_secret"), ("secrets", "b", "on_secret")]),
])
def test_service_accounts_are_watched_only_with_workload_identity(
        monkeypatch: pytest.MonkeyPatch, namespaces: tuple[str, ...], workload_identity: bool,
        expected: list[tuple[str, str | None, str]]) -> None:
    monkeypatch.setattr(wiring, "MetadataWatch", RecordedWatch)
    monkeypatch.setattr(RecordedWatch, "made", [])
    cfg = RunConfig(namespaces=namespaces, workload_identity=workload_identity)

    async def wire() -> None:
        rig = Rig(workload_identity=workload_identity)
        reconciler, controller = rig.reconciler, rig.controller
        assert reconciler.workload_identity is workload_identity
        _watches(cfg, controller, _reports(controller, cfg))

    asyncio.run(wire())
    assert RecordedWatch.made == expected


def _watches(cfg: RunConfig, controller: Controller, consumers: ConsumerReports) -> list[Any]:
    """The watches the operator would start for `cfg`, from the wiring (the test patches what they are)."""
    return wiring.watches_for(client.ApiClient(), cfg, controller, consumers, Directory(), asyncio.get_running_loop())


def _reports(controller: Controller, cfg: RunConfig) -> ConsumerReports:
    return ConsumerReports(controller, FakeKube(), lambda *a: None, Metrics(), asyncio.to_thread,
                           watching=cfg.watch_consumers)


def test_a_service_account_event_reaches_the_controller_on_its_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The watch calls back from its own thread; the controller runs on the event loop."""
    callbacks: dict[str, Any] = {}

    class Capturing(RecordedWatch):
        def __init__(self, api: client.ApiClient, callback: Any, namespace: str | None = None,
                     resource: str = "secrets") -> None:
            callbacks[resource] = callback

    monkeypatch.setattr(wiring, "MetadataWatch", Capturing)
    events: list[tuple[str, str, str, bool]] = []

    async def wire() -> None:
        controller = Rig().controller
        monkeypatch.setattr(controller, "service_account_event", lambda *e: events.append(e))
        cfg = RunConfig(workload_identity=True)
        _watches(cfg, controller, _reports(controller, cfg))
        await asyncio.to_thread(callbacks["serviceaccounts"], "ns", "reader", "7", False)
        await asyncio.sleep(0)

    asyncio.run(wire())
    assert events == [("ns", "reader", "7", False)]


@pytest.mark.parametrize(("argv", "env", "expected"), [
    pytest.param((), None, False, id="off-by-default"),
    pytest.param(("--watch-consumers",), None, True, id="flag"),
    pytest.param((), "true", True, id="chart-env"),
    pytest.param((), "false", False, id="chart-env-off"),
    pytest.param(("--no-watch-consumers",), "true", False, id="flag-beats-env"),
])
def test_watch_consumers_switch(monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...], env: str | None,
                                expected: bool) -> None:
    if env is None:
        monkeypatch.delenv("GRAPHCRED_WATCH_CONSUMERS", raising=False)
    else:
        monkeypatch.setenv("GRAPHCRED_WATCH_CONSUMERS", env)
    assert run_config(monkeypatch, *argv).watch_consumers is expected


class RecordedPodWatch:
    """Stands in for PodWatch: records what would be watched, starts nothing."""

    made: list[tuple[str | None, str, str]] = []

    def __init__(self, api: client.ApiClient, on_pod: Any, on_listed: Any, relevant: Any,
                 namespace: str | None = None) -> None:
        self.namespace = namespace
        self.made.append((namespace, on_pod.__name__, on_listed.__name__))

    def start(self) -> RecordedPodWatch:
        return self


@pytest.mark.parametrize(("namespaces", "watch_consumers", "expected"), [
    ((), False, []),
    ((), True, [(None, "on_pod", "on_listed")]),
    (("a", "b"), False, []),
    (("a", "b"), True, [("a", "on_pod", "on_listed"), ("b", "on_pod", "on_listed")]),
])
def test_pods_are_watched_only_with_watch_consumers(monkeypatch: pytest.MonkeyPatch, namespaces: tuple[str, ...],
                                                    watch_consumers: bool,
                                                    expected: list[tuple[str | None, str, str]]) -> None:
    monkeypatch.setattr(wiring, "MetadataWatch", RecordedWatch)
    monkeypatch.setattr(wiring, "PodWatch", RecordedPodWatch)
    monkeypatch.setattr(RecordedWatch, "made", [])
    monkeypatch.setattr(RecordedPodWatch, "made", [])
    cfg = RunConfig(namespaces=namespaces, watch_consumers=watch_consumers)

    async def wire() -> ConsumerReports:
        controller = Rig().controller
        consumers = _reports(controller, cfg)
        _watches(cfg, controller, consumers)
        return consumers

    consumers = asyncio.run(wire())
    assert RecordedPodWatch.made == expected
    assert [r for r, _, _ in RecordedWatch.made if r == "pods"] == [], "no metadata watch of pods either"
    assert len(consumers.watches) == len(expected)
    assert consumers.watching is watch_consumers


def test_a_blocking_call_after_the_threads_are_shut_down_is_cancelled_not_an_error() -> None:
    """Hostile soak: a leader that lost its Lease stopped; a shared token request that outlived its pass reached the
    executor after the cleanup had shut it down, and the stdlib's RuntimeError went to kopf, which logged a
    traceback for it at exit."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from graphcred.app.wiring import BlockingCalls

    async def scenario() -> None:
        executor = ThreadPoolExecutor(1)
        run_blocking = BlockingCalls(asyncio.get_running_loop(), executor)
        assert await run_blocking(sum, [1, 2]) == 3
        executor.shutdown(wait=True)
        try:
            await run_blocking(sum, [1, 2])
        except asyncio.CancelledError:
            return
        raise AssertionError("a call after the shutdown ran")

    asyncio.run(scenario())


def test_abandoning_the_blocking_calls_ends_a_shared_call_its_passes_no_longer_wait_for() -> None:
    """A token request shared by passes (shielded from their cancellation) whose authority answers late: once the
    cleanup cancelled the passes and abandoned the calls, it ends at once, not when its thread comes back (kopf
    waited 5 s for it, then cancelled it). Later calls are cancelled too."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from graphcred.app.wiring import BlockingCalls

    release = threading.Event()

    async def scenario() -> None:
        executor = ThreadPoolExecutor(1)
        calls = BlockingCalls(asyncio.get_running_loop(), executor)
        shared = asyncio.ensure_future(calls(release.wait, 30))
        waiting = asyncio.ensure_future(asyncio.shield(shared))
        await asyncio.sleep(0.05)
        waiting.cancel()  # the pass: cancelled by the controller's stop
        assert calls.abandon() == 1
        try:
            await asyncio.wait_for(shared, timeout=2)
        except asyncio.CancelledError:
            pass
        else:
            raise AssertionError("the shared call ran on after abandon")
        try:
            await calls(sum, [1, 2])
        except asyncio.CancelledError:
            pass
        else:
            raise AssertionError("a call after abandon ran")
        release.set()
        executor.shutdown(wait=True)

    asyncio.run(scenario())


class _Apiserver:
    """Answers every list with an empty one and holds every watch open, answering nothing, until closed: what the
    operator's watches meet at start in an empty cluster."""

    def __init__(self) -> None:
        released = self.released = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

            def do_GET(self) -> None:
                if "watch=" in self.path:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.flush()
                    released.wait(30)
                    return
                body = json.dumps({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                                   "items": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kubeconfig(self, path: Path) -> str:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{self.server.server_address[1]}"}}],
            "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}], "current-context": "c"}))
        return str(path)

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def test_the_operator_starts_and_stops_in_order_and_leaves_nothing_running(tmp_path: Path) -> None:
    """build() starts nothing; start() starts the Events, the watches (GraphAppCredentials, Namespaces, Secrets,
    ServiceAccounts, pods), the consumer reports and the heartbeat, then says ready; stop() ends them in the
    documented order (the watch streams cut while held open) and leaves no task and no thread of the operator
    behind."""
    apiserver = _Apiserver()
    threads_before = set(threading.enumerate())
    cfg = RunConfig(kubeconfig=apiserver.kubeconfig(tmp_path / "kubeconfig"), workload_identity=True,
                    watch_consumers=True, metrics_port=-1)
    health, stop_flag = Health(), StopFlag()
    order: list[str] = []

    async def lifecycle() -> None:
        loop, tasks_before = asyncio.get_running_loop(), asyncio.all_tasks()
        operator = wiring.build(cfg, Metrics(), health, loop, stop_flag=stop_flag)
        assert set(threading.enumerate()) == threads_before and asyncio.all_tasks() == tasks_before
        assert [w.resource.plural for w in operator.watches] == [
            "GraphAppCredentials", "Namespaces", "Secrets", "ServiceAccounts", "Pods"]
        assert operator.reconciler.secrets is not None and operator.reconciler.secrets.lookup("ns", "s") is None
        await operator.start()
        assert health.ready.is_set() and operator.heartbeat is not None
        for watch in operator.watches:  # listed, and now held in a watch stream that answers nothing
            assert await asyncio.to_thread(watch.ready.wait, 10), f"{watch.resource.plural} never listed"
        # its stream open: a stop while the watch request is still on its way is not cut (a join timeout of 5 s)
        for _ in range(1000):
            if all(w._response is not None for w in operator.watches):
                break
            await asyncio.sleep(0.01)
        beat = operator.heartbeat

        def noted(name: str, call: Any) -> Any:
            def note() -> None:
                if not order and beat.done():
                    order.append("heartbeat")
                order.append(name)
            if asyncio.iscoroutinefunction(call):
                async def noting_async(*args: Any, **kwargs: Any) -> Any:
                    note()
                    return await call(*args, **kwargs)
                return noting_async

            def noting(*args: Any, **kwargs: Any) -> Any:
                note()
                return call(*args, **kwargs)
            return noting

        for watch in operator.watches:
            watch.stop = noted(f"watch {watch.resource.plural}", watch.stop)  # type: ignore[method-assign]
        assert operator.loop_kube is not None  # the Events are posted through it: closed after them
        parts = (("consumers", operator.consumers, "stop"), ("controller", operator.controller, "stop"),
                 ("events", operator.events, "stop"), ("loop calls", operator.loop_kube, "close"),
                 ("io", operator.io, "shutdown"),
                 ("event io", operator.event_io, "shutdown"), ("stop flag", stop_flag, "set"))
        for name, part, method in parts:
            setattr(part, method, noted(name, getattr(part, method)))
        await operator.stop()
        assert asyncio.all_tasks() == tasks_before, "a task outlived stop()"

    try:
        asyncio.run(asyncio.wait_for(lifecycle(), timeout=60))
    finally:
        apiserver.close()
    assert order == ["heartbeat", "watch GraphAppCredentials", "watch Namespaces", "watch Secrets",
                     "watch ServiceAccounts", "watch Pods", "consumers", "controller", "events", "loop calls", "io",
                     "event io",
                     "stop flag"]
    deadline = time.monotonic() + 5
    while (left := set(threading.enumerate()) - threads_before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"threads outlived stop(): {sorted(t.name for t in left)}"


_LIGHT = """
import asyncio, sys
from pathlib import Path
from graphcred.app import wiring
from graphcred.app.config import RunConfig
from graphcred.telemetry.metrics import Health, Metrics
from tests.unit.test_wiring import _Apiserver

apiserver = _Apiserver()
cfg = RunConfig(kubeconfig=apiserver.kubeconfig(Path(sys.argv[1])), workload_identity=True, watch_consumers=True,
                metrics_port=-1)

async def main():
    operator = wiring.build(cfg, Metrics(), Health(), asyncio.get_running_loop())
    await operator.start()
    for watch in operator.watches:
        assert await asyncio.to_thread(watch.ready.wait, 10), watch.resource.plural
    await operator.stop()

asyncio.run(main())
apiserver.close()
print(sorted(m for m in sys.modules if m.startswith("kubernetes.client.api.")))
"""


def test_the_running_operator_loads_none_of_the_clients_api_classes(tmp_path: Path) -> None:
    """The watches list and watch through the client's ApiClient, not its generated API classes: importing
    CoreV1Api alone costs 22 MiB of memory (pydantic signatures of its hundreds of methods), for every replica."""
    ran = subprocess.run([sys.executable, "-c", _LIGHT, str(tmp_path / "kubeconfig")], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).parents[2])
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.strip().endswith("[]"), ran.stdout
