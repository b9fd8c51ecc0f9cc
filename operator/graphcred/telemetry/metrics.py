"""Prometheus metrics, and the small HTTP server for /metrics, /healthz and /readyz.

Names follow cert-manager's lead where they mean the same (`..._expiration_timestamp_seconds`).
Per-credential Ready and next-refresh series are computed at scrape time from the workers' last written status, so
a credential has exactly one `graphcred_credential_ready` series (its current reason) and none once it is gone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

CredentialStatus = tuple[str, str, Mapping[str, Any] | None]
"""(namespace, name, the status last written or seen: None before the first)."""
CredentialFigures = tuple[str, str, float | None, int]
"""(namespace, name, expiry of the token in its Secret as Unix time (None: not known), consecutive failures), as the
credential's last pass reported them, whether or not its status patch went through."""


class Workload(Protocol):
    """What the scrape-time series read from the credentials' workers (the controller)."""

    def worker_counts(self) -> tuple[int, int]:
        """(live, dead): registered objects with and without a running worker."""

    def last_statuses(self) -> Iterable[Mapping[str, Any] | None]:
        """The status each worker last wrote (None before its first)."""

    def credential_statuses(self) -> Iterable[CredentialStatus]: ...

    def credential_figures(self) -> Iterable[CredentialFigures]: ...


class Metrics:
    """Everything the operator reports. One instance per process (its own registry, so tests can make more)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.acquisitions = Counter(
            "graphcred_token_acquisitions",
            "Token acquisitions by result (success; shared: served by an identical request; failure) and reason.",
            ["result", "reason"], registry=self.registry)
        self.latency = Histogram(
            "graphcred_token_acquisition_duration_seconds", "Time to acquire a token from the token endpoint.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0), registry=self.registry)
        self.consumers = Gauge(
            "graphcred_unrefreshable_consumers",
            "Pods reading each credential's token Secret where no refresh reaches them (subPath, env, envFrom); "
            "only with --watch-consumers.", ["namespace", "name"], registry=self.registry)
        self.internal_errors = Counter(
            "graphcred_internal_errors", "Passes that failed unexpectedly (an API error, a bug), by error type.",
            ["type"], registry=self.registry)
        self.worker_restarts = Counter(
            "graphcred_worker_restarts", "Per-credential workers that ended while their object was still "
            "registered, and were restarted.", registry=self.registry)
        self.events_lost = Counter(
            "graphcred_events_lost", "Events not posted, by why: queue_full (a burst beyond what the posters keep "
            "up with), stopped (the operator stopping), failed (refused, or failing after retries).", ["why"],
            registry=self.registry)
        for why in ("queue_full", "stopped", "failed"):  # at 0 from the start: a first loss is an increase()
            self.events_lost.labels(why)
        self.restarts = Counter(
            "graphcred_workload_restarts", "Tries to restart a restart target (spec.restartTargets, "
            "restartUnrefreshable) for a new token, by the workload's kind and the outcome: Restarted, Waiting (the "
            "rollout graphcred started last is still in progress), NotFound, Forbidden, Failed.", ["kind", "outcome"],
            registry=self.registry)
        self._states: Callable[[], Iterable[tuple[str, str]]] = lambda: ()
        self._workers: Callable[[], tuple[int, int]] = lambda: (0, 0)
        self._credentials: Callable[[], Iterable[CredentialStatus]] = lambda: ()
        self._figures: Callable[[], Iterable[CredentialFigures]] = lambda: ()
        self.registry.register(_ReadyCollector(lambda: self._states()))
        self.registry.register(_WorkersCollector(lambda: self._workers()))
        self.registry.register(_CredentialCollector(lambda: self._credentials()))
        self.registry.register(_FiguresCollector(lambda: self._figures()))

    def exposition(self) -> str:
        return generate_latest(self.registry).decode()

    def track(self, workload: Workload) -> None:
        """Read the worker counts, the Ready states and the per-credential series from `workload` at scrape time."""
        self.track_workers(workload.worker_counts)
        self.track_states(lambda: ready_states(workload.last_statuses()))
        self.track_credentials(workload.credential_statuses)
        self._figures = workload.credential_figures

    def track_workers(self, counts: Callable[[], tuple[int, int]]) -> None:
        """Where to read (live, dead) worker counts from at scrape time."""
        self._workers = counts

    def track_states(self, states: Callable[[], Iterable[tuple[str, str]]]) -> None:
        """Where to read each credential's (ready status, reason) from at scrape time."""
        self._states = states

    def track_credentials(self, statuses: Callable[[], Iterable[CredentialStatus]]) -> None:
        """Where to read each registered credential's (namespace, name, status) from at scrape time."""
        self._credentials = statuses

    def failed(self, reason: str) -> None:
        self.acquisitions.labels("failure", reason).inc()

    def forget(self, namespace: str, name: str) -> None:
        with contextlib.suppress(KeyError):
            self.consumers.remove(namespace, name)


class _CredentialCollector(Collector):
    """`graphcred_credential_ready`, `graphcred_credential_next_refresh_timestamp_seconds` and (where known)
    `graphcred_credential_expiration_timestamp_seconds`, one series per registered credential. Labels are
    bounded: the reason is one of the operator's condition reasons (or Pending
    before the first pass); the message, which may name anything, is never a label."""

    def __init__(self, statuses: Callable[[], Iterable[CredentialStatus]]) -> None:
        self._statuses = statuses

    def collect(self) -> Iterable[GaugeMetricFamily]:
        ready = GaugeMetricFamily(
            "graphcred_credential_ready", "1 if the credential's Ready condition is True, else 0; the reason is the "
            "condition's (Pending before the first pass).", labels=["namespace", "name", "reason"])
        refresh = GaugeMetricFamily(
            "graphcred_credential_next_refresh_timestamp_seconds", "When (Unix time) the operator next acquires a "
            "token for the credential: the scheduled refresh, or the next retry after a failure.",
            labels=["namespace", "name"])
        expiry = GaugeMetricFamily(
            "graphcred_credential_expiration_timestamp_seconds", "When (Unix time) the credential itself expires: "
            "its certificate's notAfter, or the graphcred.io/credential-expires-on annotation of its client-secret "
            "Secret; no series where it is not known.", labels=["namespace", "name"])
        renewal = GaugeMetricFamily(
            "graphcred_certificate_renewal_failing", "1 while graphcred cannot renew a certificate.rotation "
            "credential's certificate in Entra (its CertificateRenewal condition is False; the reason is the "
            "condition's), else 0; no series without certificate.rotation.", labels=["namespace", "name", "reason"])
        for namespace, name, status in sorted(self._statuses(), key=lambda s: (s[0], s[1])):
            for condition in (status or {}).get("conditions") or []:
                if isinstance(condition, dict) and condition.get("type") == "CertificateRenewal":
                    renewal.add_metric([namespace, name, str(condition.get("reason") or "")],
                                       0.0 if condition.get("status") == "True" else 1.0)
            state, reason = next(iter(ready_states([status])))
            ready.add_metric([namespace, name, reason], 1.0 if state == "True" else 0.0)
            at = _timestamp((status or {}).get("refreshAt"))
            if at is not None:
                refresh.add_metric([namespace, name], at)
            lapses = _timestamp((status or {}).get("credentialExpiresOn"))
            if lapses is not None:
                expiry.add_metric([namespace, name], lapses)
        yield ready
        yield refresh
        yield expiry
        yield renewal


class _FiguresCollector(Collector):
    """`graphcred_token_expiration_timestamp_seconds` and `graphcred_consecutive_failures`, one series per credential
    a pass has reported on, as the pass reported them (before its status patch: a patch that fails must not stop the
    failures counting, nor leave the expiry of a token the Secret no longer holds). Made at scrape time: a gauge's
    child per credential held 0.6 KiB (13 MiB at 10,000) and took a lock at each refresh."""

    def __init__(self, figures: Callable[[], Iterable[CredentialFigures]]) -> None:
        self._figures = figures

    def collect(self) -> Iterable[GaugeMetricFamily]:
        token = GaugeMetricFamily(
            "graphcred_token_expiration_timestamp_seconds",
            "Expiry (Unix time) of the token currently in each credential's Secret.", labels=["namespace", "name"])
        failures = GaugeMetricFamily(
            "graphcred_consecutive_failures", "Consecutive failed acquisitions of each credential.",
            labels=["namespace", "name"])
        for namespace, name, expires_at, count in sorted(self._figures(), key=lambda f: (f[0], f[1])):
            if expires_at is not None:
                token.add_metric([namespace, name], expires_at)
            failures.add_metric([namespace, name], float(count))
        yield token
        yield failures


def _timestamp(value: Any) -> float | None:
    """An RFC 3339 status time as Unix seconds; None when absent or unreadable (a series is then left out)."""
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class _WorkersCollector(Collector):
    def __init__(self, counts: Callable[[], tuple[int, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[GaugeMetricFamily]:
        live, dead = self._counts()
        family = GaugeMetricFamily("graphcred_workers", "Registered GraphAppCredentials by worker state: live "
                                   "(a task schedules its refreshes) or dead (none: must stay 0).", labels=["state"])
        family.add_metric(["live"], live)
        family.add_metric(["dead"], dead)
        yield family


class _ReadyCollector(Collector):
    def __init__(self, states: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self._states = states

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("graphcred_credentials", "GraphAppCredentials by Ready status and reason.",
                                   labels=["ready", "reason"])
        counts: dict[tuple[str, str], int] = {}
        for state in self._states():
            counts[state] = counts.get(state, 0) + 1
        for (ready, reason), count in sorted(counts.items()):
            family.add_metric([ready, reason], count)
        yield family


class Health:
    """Liveness: the process makes progress. Whatever drives it calls `tick()`: a standby's election loop after
    every attempt (answered or not: a restart would not bring the apiserver back), the leader's event loop every
    few seconds. Readiness: started, and able to act or to take over: a standby once the apiserver has answered
    its first Lease read, the leader once the operator runs. Readiness does not mean "leader": standbys must be
    Ready, or a rolling update would wait forever for its new pods."""

    def __init__(self, stale_after: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after = stale_after
        self._clock = clock
        self.beat = clock()
        self.ready = threading.Event()

    def tick(self) -> None:
        self.beat = self._clock()

    def alive(self) -> bool:
        return self._clock() - self.beat < self.stale_after


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A prober that hung up or timed out (a kubelet's probe after its timeout, a scraper's deadline) is the
        client's business: the stdlib printed a traceback to stderr for each one, in the middle of the log."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return
        log.warning("metrics server: a request failed (%s)", type(error).__name__)


def serve(port: int, metrics: Metrics, health: Health, host: str = "0.0.0.0") -> ThreadingHTTPServer:  # noqa: S104
    """Start the metrics/health server in a daemon thread. Port 0 picks a free one (see server_address)."""

    class Handler(BaseHTTPRequestHandler):
        # a client that sends nothing (or reads nothing) gives its thread back after this, not never
        timeout = 10

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass

        def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok = health.alive()
                self._send(200 if ok else 503, b"ok\n" if ok else b"stalled: no progress for %d s\n"
                           % int(health.stale_after))
            elif path == "/readyz":
                ok = health.ready.is_set()
                self._send(200 if ok else 503, b"ok\n" if ok else b"starting\n")
            else:
                self._send(404, b"not found\n")

    server = _Server((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="graphcred-http", daemon=True).start()
    log.info("serving /metrics, /healthz, /readyz on port %d", server.server_address[1])
    return server


def ready_states(statuses: Iterable[Mapping[str, Any] | None]) -> Iterable[tuple[str, str]]:
    for status in statuses:
        conds = (status or {}).get("conditions") or []
        cond = next((c for c in conds if c.get("type") == "Ready"), None)
        yield (cond["status"], cond.get("reason", "")) if cond else ("Unknown", "Pending")
