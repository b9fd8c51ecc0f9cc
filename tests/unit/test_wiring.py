"""The --workload-identity switch: from the command line or the chart's environment variable to the reconciler, and
the ServiceAccount watch that exists only with it (the chart grants ServiceAccount access only then); the same for
--watch-consumers and the pod watch."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes import client

from graphcred.app import handlers
from graphcred.app.config import RunConfig
from graphcred.consumers.reports import ConsumerReports
from graphcred.reconcile.controller import Controller
from graphcred.reconcile.reconciler import Reconciler
from graphcred.telemetry.metrics import Metrics

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


@pytest.mark.parametrize(("namespaces", "workload_identity", "expected"), [
    ((), False, [("secrets", None, "on_secret")]),
    ((), True, [("secrets", None, "on_secret"), ("serviceaccounts", None, "on_service_account")]),
    (("a", "b"), False, [("secrets", "a", "on_secret"), ("secrets", "b", "on_secret")]),
    (("a", "b"), True, [("secrets", "a", "on_secret"), ("secrets", "b", "on_secret"),
                        ("serviceaccounts", "a", "on_service_account"),
                        ("serviceaccounts", "b", "on_service_account")]),
])
def test_service_accounts_are_watched_only_with_workload_identity(
        monkeypatch: pytest.MonkeyPatch, namespaces: tuple[str, ...], workload_identity: bool,
        expected: list[tuple[str, str | None, str]]) -> None:
    monkeypatch.setattr(handlers, "MetadataWatch", RecordedWatch)
    monkeypatch.setattr(RecordedWatch, "made", [])
    cfg = RunConfig(namespaces=namespaces, workload_identity=workload_identity)

    async def wire() -> None:
        reconciler = Reconciler(None, None, lambda *a: None,  # type: ignore[arg-type]
                                workload_identity=workload_identity)
        assert reconciler.workload_identity is workload_identity
        controller = Controller(reconciler)
        handlers._watches(client.ApiClient(), cfg, controller, _reports(controller, cfg), asyncio.get_running_loop())

    asyncio.run(wire())
    assert RecordedWatch.made == expected


def _reports(controller: Controller, cfg: RunConfig) -> ConsumerReports:
    return ConsumerReports(controller, None, lambda *a: None, Metrics(), asyncio.to_thread,  # type: ignore[arg-type]
                           watching=cfg.watch_consumers)


def test_a_service_account_event_reaches_the_controller_on_its_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The watch calls back from its own thread; the controller runs on the event loop."""
    callbacks: dict[str, Any] = {}

    class Capturing(RecordedWatch):
        def __init__(self, api: client.ApiClient, callback: Any, namespace: str | None = None,
                     resource: str = "secrets") -> None:
            callbacks[resource] = callback

    monkeypatch.setattr(handlers, "MetadataWatch", Capturing)
    events: list[tuple[str, str, str, bool]] = []

    async def wire() -> None:
        controller = Controller(Reconciler(None, None, lambda *a: None))  # type: ignore[arg-type]
        monkeypatch.setattr(controller, "service_account_event", lambda *e: events.append(e))
        cfg = RunConfig(workload_identity=True)
        handlers._watches(client.ApiClient(), cfg, controller, _reports(controller, cfg), asyncio.get_running_loop())
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
    monkeypatch.setattr(handlers, "MetadataWatch", RecordedWatch)
    monkeypatch.setattr(handlers, "PodWatch", RecordedPodWatch)
    monkeypatch.setattr(RecordedWatch, "made", [])
    monkeypatch.setattr(RecordedPodWatch, "made", [])
    cfg = RunConfig(namespaces=namespaces, watch_consumers=watch_consumers)

    async def wire() -> ConsumerReports:
        controller = Controller(Reconciler(None, None, lambda *a: None))  # type: ignore[arg-type]
        consumers = _reports(controller, cfg)
        handlers._watches(client.ApiClient(), cfg, controller, consumers, asyncio.get_running_loop())
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

    from graphcred.app.wiring import blocking_runner

    async def scenario() -> None:
        executor = ThreadPoolExecutor(1)
        run_blocking = blocking_runner(asyncio.get_running_loop(), executor)
        assert await run_blocking(sum, [1, 2]) == 3
        executor.shutdown(wait=True)
        try:
            await run_blocking(sum, [1, 2])
        except asyncio.CancelledError:
            return
        raise AssertionError("a call after the shutdown ran")

    asyncio.run(scenario())
