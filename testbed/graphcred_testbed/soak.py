"""The fault soak (issue 9): many credentials, two replicas, a seeded schedule of faults, and an invariant checker.

`python -m graphcred_testbed soak --minutes 20 --seed 1` (`make soak`) runs it on a bed of its own and prints the
figures; tests/e2e/test_soak.py runs a 3-minute version inside `make test` and fails on any violation.

The run:
  setup   apps in several tenants (client secret and certificate apps, short token lifetimes), credential Secrets
          (most credentials with a key of their own, some sharing one), GraphAppCredentials in a few namespaces
          (some with refreshBeforeExpiry near the lifetime); two `graphcred run --leader-election` replicas;
          everything Ready.
  faults  a plan drawn from random.Random(seed): per-app token endpoint faults (429 JSON and HTML with
          Retry-After, 5xx, slow answers, dropped connections, non-JSON 200), issuer-wide outages, one `200 <html>`
          discovery answer, apiserver restarts, SIGKILL of the leader, credential rotation good->bad->good,
          deletion and re-creation of sharing partners during a (slowed) acquisition, spec changes of clientId,
          scopes and refreshBeforeExpiry.
  quiet   every fault healed; every credential must be Ready within `ready_within` seconds.

A checker thread lists GraphAppCredentials and token Secrets about every second and records a violation on anything
a user would notice (see docs/soak.md for each invariant and why it has no false positives). A second thread acts as
kubelet and Prometheus: it restarts replicas that exit, probes /healthz (stricter than the chart), follows
the Lease, and reads `graphcred_workers` from the leader's /metrics.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import json
import random
import re
import ssl
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from kubernetes import client, config

from graphcred.acquire.jwt import b64url_decode
from graphcred.api.keys import GROUP, KIND, MANAGED_BY, MANAGED_BY_LABEL, PLURAL, VERSION
from graphcred.api.model import GRAPH_DEFAULT_SCOPE, parse_duration
from graphcred.tokensecret.render import controller_uid

from .bed import Bed
from .hostile import (
    ATTACKS,
    CHART_MEMORY_LIMIT,
    MIB,
    HostileTenant,
    StandIns,
    lateness_line,
    operator_supports_authority_host,
    scheduled_refresh,
    vm_peak_rss,
)
from .issuer import App, Fault, Issuer
from .operator_process import OperatorProcess
from .pki import KeyPair, self_signed

GRAPH = "https://graph.microsoft.com"
RESOURCES = (GRAPH, "https://vault.azure.net", "https://management.azure.com", "api://graphcred-soak")
LEASE_NAME = "graphcred-leader"
# A token Secret controlled by a deleted credential of ANOTHER name blocks a credential that names it (SecretConflict)
# until the garbage collector deletes it: Kubernetes' job, so such a wait is noted, not counted. (A re-created
# namesake adopts its predecessor's Secret: waiting for the GC there is a violation.)
GC_PENDING = "controlled by an object that no longer exists"
# Faults whose answer may rightly slow a whole tenant (DESIGN: a per-tenant circuit breaker for throttling).
TENANT_WIDE = {"throttle_json", "throttle_html"}
APP_FAULTS = ("throttle_json", "throttle_html", "server_error", "slow", "drop", "garbage")


# --- configuration and result ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 20.0  # the soak itself (faults, then the quiet phase), after setup
    seed: int = 1
    credentials: int = 200
    apps: int = 40
    tenants: int = 10
    namespaces: int = 4
    lifetimes: tuple[int, ...] = (60, 90, 120)  # token lifetimes, one per app (short: many refreshes)
    sharing: float = 0.15  # chance that a credential shares the previous one's app and key (groups of 2-3)
    certificates: float = 0.3  # fraction of apps authenticated by certificate
    near_lifetime: float = 0.05  # fraction of credentials with refreshBeforeExpiry = lifetime - 5 s
    quiet_seconds: float = 90.0  # the last part of the run, without faults
    ready_within: float = 60.0  # after the faults stop, every credential Ready within this
    setup_ready_within: float = 180.0
    poll_interval: float = 1.0
    lease_duration: float = 8.0
    token_timeout: float = 5.0  # the replicas' --token-timeout: slow answers beyond it become timeouts
    ready_expired_grace: float = 10.0  # Ready=True may outlive its token by this much (the operator's wake-up)
    stuck_grace: float = 60.0  # a due refresh or a new generation must show in status within this
    log_level: str = "INFO"
    # issue 24: a hostile namespace trying every attack of the security review (hostile.py), and the invariants
    # that go with it (refresh lateness, peak RSS, no restart, /healthz within 2 s, no forbidden host reached)
    hostile: bool = False
    hostile_interval: float = 3.0  # seconds between two attacks (after a first wave of tarpits)
    hostile_attacks: tuple[str, ...] = ATTACKS  # a subset shows one attack's effect (the tarpit hides the others)
    refresh_slack: float = 10.0  # a victim's refresh may come this late after its schedule
    memory_limit: int = CHART_MEMORY_LIMIT  # bytes: the chart's default limit; above it the pod is OOM-killed

    @property
    def fault_seconds(self) -> float:
        return max(self.minutes * 60 - self.quiet_seconds, 0.0)


@dataclass
class Violation:
    kind: str
    subject: str
    detail: str
    at: float  # seconds since the soak began
    count: int = 1

    def __str__(self) -> str:
        again = f" (x{self.count})" if self.count > 1 else ""
        return f"[{self.at:6.1f} s] {self.kind} {self.subject}: {self.detail}{again}"


@dataclass
class SoakResult:
    config: SoakConfig
    logdir: Path
    duration: float = 0.0
    setup_seconds: float = 0.0
    setup_ready_seconds: float | None = None
    began: str = ""  # wall clock (UTC) when the faults began: violation times count from here
    final_ready_seconds: float | None = None
    final_gc_waiting: int = 0  # credentials still waiting for the garbage collector when the faults stopped
    faults: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    token_requests: int = 0
    peak_token_requests_per_second: int = 0
    request_bounds: dict[str, tuple[int, float]] = field(default_factory=dict)  # app -> (requests, bound)
    secret_writes: tuple[int, float] = (0, 0.0)  # token Secret creates/replaces by the operator, bound
    status_writes: tuple[int, float] = (0, 0.0)
    apiserver_requests: Counter[str] = field(default_factory=Counter)  # "resource[/sub] VERB" -> count
    harness_requests: int = 0
    leader_changes: int = 0
    takeovers: list[float] = field(default_factory=list)  # seconds from a leader's SIGKILL to a new holder
    replica_restarts: Counter[str] = field(default_factory=Counter)  # by cause
    skipped_polls: int = 0
    polls: list[float] = field(default_factory=list)  # seconds each checker poll took
    notes: list[str] = field(default_factory=list)
    rss_peaks: dict[str, int] = field(default_factory=dict)  # replica -> highest VmHWM seen (bytes)
    lateness: list[float] = field(default_factory=list)  # victims' refreshes: seconds after their schedule
    overdue: list[float] = field(default_factory=list)  # victims' tokens never refreshed: seconds overdue at the end
    late_unexcused: int = 0  # of those, later than schedule + slack with nothing they need broken
    healthz: tuple[int, int, float] = (0, 0, 0.0)  # hostile mode: probes, failed or slower than 2 s, slowest
    hostile: list[str] = field(default_factory=list)  # the hostile tenant's report lines
    hostile_tried: Counter[str] = field(default_factory=Counter)  # attacks tried, by kind

    def report(self) -> str:
        c = self.config
        lines = [
            f"graphcred soak: seed {c.seed}, {c.minutes:g} min (faults {c.fault_seconds:.0f} s, quiet "
            f"{c.quiet_seconds:.0f} s), {c.credentials} credentials over {c.apps} apps in {c.tenants} tenants, "
            f"{c.namespaces} namespaces, 2 replicas; duration {self.duration:.0f} s (setup {self.setup_seconds:.0f} s)",
            f"setup: all Ready {_secs(self.setup_ready_seconds)}; faults began at {self.began} (violation times "
            "count from there)",
            f"faults injected ({sum(self.faults.values())}): " + _counts(self.faults),
            f"invariant checks ({sum(self.checks.values()):,}): " + _counts(self.checks),
            f"leader changes {self.leader_changes}; takeover after SIGKILL "
            + (", ".join(f"{t:.1f} s" for t in self.takeovers) or "-")
            + f"; replica restarts {sum(self.replica_restarts.values())} (" + _counts(self.replica_restarts) + ")",
            f"after the faults stopped: all Ready {_secs(self.final_ready_seconds)}"
            + (f" (but {self.final_gc_waiting} waiting for the garbage collector)" if self.final_gc_waiting else ""),
            f"token requests {self.token_requests:,} (peak {self.peak_token_requests_per_second}/s); "
            + self._bounds_line(),
            f"token Secret writes {self.secret_writes[0]:,} (bound {self.secret_writes[1]:,.0f}); status writes "
            f"{self.status_writes[0]:,} (bound {self.status_writes[1]:,.0f})",
            f"apiserver requests {sum(self.apiserver_requests.values()):,} (the harness {self.harness_requests:,}): "
            + _counts(Counter(dict(self.apiserver_requests.most_common(8)))),
            f"checker polls {len(self.polls):,} (median {_median(self.polls) * 1000:.0f} ms, max "
            f"{max(self.polls, default=0.0) * 1000:.0f} ms); skipped while the apiserver was unreachable: "
            f"{self.skipped_polls}",
            "victims' refresh lateness (seconds after the schedule): " + lateness_line(self.lateness, self.overdue)
            + f"; later than schedule + {c.refresh_slack:g} s with nothing they need broken: {self.late_unexcused}",
            "operator peak RSS (VmHWM): " + (", ".join(f"{k} {v / MIB:.0f} MiB" for k, v in
                                                        sorted(self.rss_peaks.items())) or "-")
            + f" (chart limit {c.memory_limit / MIB:.0f} MiB)",
        ]
        if c.hostile:
            probes, failed, slowest = self.healthz
            lines += self.hostile
            lines.append(f"/healthz probes every 2 s: {probes:,}, failed or slower than 2 s: {failed:,} (slowest "
                         f"answer {slowest:.2f} s)")
        kinds = Counter({k: sum(v.count for v in self.violations if v.kind == k) for k in
                         {v.kind for v in self.violations}})
        lines += [
            f"violations: {len(self.violations)}" + (f" (occurrences by kind: {_counts(kinds)})" if kinds else ""),
        ]
        lines += [f"  {v}" for v in self.violations[:25]]
        if len(self.violations) > 25:
            lines.append(f"  ... and {len(self.violations) - 25} more")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"logs and plan: {self.logdir}")
        return "\n".join(lines)

    def _bounds_line(self) -> str:
        if not self.request_bounds:
            return "no per-app bound"
        app, (n, bound) = max(self.request_bounds.items(), key=lambda kv: kv[1][0] / max(kv[1][1], 1.0))
        return f"per app at most {n} of a bound of {bound:.0f} (app {app[:8]}, closest to its bound)"


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] if values else 0.0


def _secs(value: float | None) -> str:
    return "NOT reached" if value is None else f"in {value:.1f} s"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counter.items())) or "-"


# --- the world: apps, keys, credentials --------------------------------------------------------------------------

@dataclass
class _App:
    index: int
    app: App
    kind: str  # "secret" | "certificate"
    lifetime: int

    @property
    def client_id(self) -> str:
        return self.app.client_id

    @property
    def tenant(self) -> str:
        return self.app.tenant_id


@dataclass
class _Key:
    """A credential Secret and the material in it (a client secret or a certificate)."""

    namespace: str
    name: str
    kind: str
    value: str | None = None
    pair: KeyPair | None = None
    apps: list[_App] = field(default_factory=list)  # where the material is registered

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def register(self, app: _App) -> None:
        """Entra side: add the current material to the app (a secret or certificate may be on several apps)."""
        if self.value is not None and self.value not in app.app.secrets:
            app.app.secrets.append(self.value)
        if self.pair is not None and self.pair.cert not in app.app.certificates:
            app.app.certificates.append(self.pair.cert)
        if app not in self.apps:
            self.apps.append(app)

    def string_data(self) -> dict[str, str]:
        if self.kind == "secret":
            assert self.value is not None
            return {"clientSecret": self.value}
        assert self.pair is not None
        return {"tls.crt": self.pair.cert_pem.decode(), "tls.key": self.pair.key_pem.decode()}


@dataclass
class _Cred:
    namespace: str
    name: str
    key: _Key
    app: _App
    resource: str = GRAPH
    rbe: str | None = None  # refreshBeforeExpiry
    group: int | None = None  # sharing group (same key as its partners)
    require_roles: bool = False  # spec.requiredRoles: [Mail.Read] (granted): a spec change that keeps the token
    apps_ever: set[str] = field(default_factory=set)
    tenants_ever: set[str] = field(default_factory=set)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def point_at(self, app: _App) -> None:
        self.app = app
        self.apps_ever.add(app.client_id)
        self.tenants_ever.add(app.tenant)

    def refresh_period(self) -> float:
        """Seconds between refreshes this credential may ask for, jitter included (the request bound's unit)."""
        lifetime = float(self.app.lifetime)
        before = parse_duration(self.rbe).total_seconds() if self.rbe else None
        wait = lifetime - before if before is not None and before < lifetime else lifetime / 2
        return max(0.9 * wait, 1.0)


@dataclass
class _Window:
    """A span in which something a credential needs was broken (wall clock)."""

    kind: str
    scope: str  # "app" | "tenant" | "all" | "key" | "apiserver" | "leader"
    target: str
    start: float
    end: float | None = None

    def overlaps(self, start: float, end: float) -> bool:
        return self.start <= end and (self.end is None or self.end >= start)


@dataclass
class _Assignment:
    """A credential pointed at an app from `start` to `end` (the request bound is summed over these)."""

    cred: str
    app: str
    key: str
    period: float
    start: float
    end: float | None = None


@dataclass(frozen=True)
class PlanItem:
    at: float  # seconds after the soak began
    kind: str
    duration: float = 0.0
    args: tuple[tuple[str, Any], ...] = ()

    def arg(self, name: str) -> Any:
        return dict(self.args)[name]

    def __str__(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.args)
        return f"{self.at:7.1f} s  {self.kind:<16} {self.duration:5.1f} s  {extra}"


class _World:
    """Apps (registered in the issuer), keys and credentials, drawn from the seed (the key material is not)."""

    def __init__(self, cfg: SoakConfig, rng: random.Random, issuer: Issuer, namespaces: list[str]) -> None:
        self.cfg, self.rng, self.issuer, self.namespaces = cfg, rng, issuer, namespaces
        self.apps: list[_App] = []
        self.spare: list[_App] = []  # apps in a tenant nobody uses at first (for the discovery fault)
        self.keys: dict[str, _Key] = {}
        self.creds: list[_Cred] = []
        self.groups: dict[int, list[int]] = {}

    def _id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def build(self) -> _World:
        cfg, rng = self.cfg, self.rng
        tenants = [self._id() for _ in range(cfg.tenants)]
        for i in range(cfg.apps):
            kind = "certificate" if i < round(cfg.apps * cfg.certificates) else "secret"
            reg = self.issuer.register_app(tenants[i % len(tenants)], self._id(), roles={GRAPH: ["Mail.Read"]},
                                           lifetime=rng.choice(cfg.lifetimes))
            self.apps.append(_App(i, reg, kind, reg.lifetime))
        fresh = self._id()
        for j, kind in enumerate(("secret", "certificate")):
            reg = self.issuer.register_app(fresh, self._id(), lifetime=cfg.lifetimes[0])
            self.spare.append(_App(cfg.apps + j, reg, kind, reg.lifetime))
        self._credentials()
        # the credentials were made app by app: put them in a seeded order so that indexes spread over apps
        rng.shuffle(self.creds)
        index = {id(c): i for i, c in enumerate(self.creds)}
        self.groups = {g: sorted(index[id(c)] for c in self.creds if c.group == g) for g in self.groups}
        return self

    def _credentials(self) -> None:
        """Each app gets a block of credentials; some join the previous one's key (a sharing group)."""
        cfg, rng = self.cfg, self.rng
        group = 0
        for i in range(cfg.credentials):
            app = self.apps[i * len(self.apps) // cfg.credentials]
            prev = self.creds[-1] if self.creds else None
            if prev is not None and prev.app is app and rng.random() < cfg.sharing and (
                    prev.group is None or len(self.groups[prev.group]) < 3):
                if prev.group is None:
                    prev.group, group = group, group + 1
                    self.groups[prev.group] = [len(self.creds) - 1]
                cred = _Cred(prev.namespace, f"c-{i:03d}", prev.key, app, group=prev.group)
                self.groups[prev.group].append(i)
            else:
                ns = rng.choice(self.namespaces)
                key = self._new_key(ns, f"key-{i:03d}", app.kind)
                key.register(app)
                cred = _Cred(ns, f"c-{i:03d}", key, app)
                if rng.random() < cfg.near_lifetime:
                    cred.rbe = f"{app.lifetime - 5}s"
            cred.point_at(app)
            self.creds.append(cred)

    def _new_key(self, ns: str, name: str, kind: str) -> _Key:
        key = _Key(ns, name, kind)
        if kind == "secret":
            key.value = f"soak-{name}~{uuid.uuid4().hex[:16]}"
        else:
            key.pair = self_signed(f"soak-{name}")
        self.keys[key.ref] = key
        return key


def plan_for(cfg: SoakConfig, issuer: Issuer) -> list[PlanItem]:
    """The fault plan a config (and its seed) gives, without a bed: the same plan for the same config."""
    rng = random.Random(cfg.seed)
    world = _World(cfg, rng, issuer, [f"ns-{i}" for i in range(cfg.namespaces)]).build()
    return _Planner(cfg, rng, world.apps, world.creds, world.groups, world.spare).plan()


# --- the plan ----------------------------------------------------------------------------------------------------

class _Planner:
    """Draws the whole fault schedule up front from the seed; targets are indexes into the world's lists."""

    def __init__(self, cfg: SoakConfig, rng: random.Random, apps: list[_App], creds: list[_Cred],
                 groups: dict[int, list[int]], spare: list[_App]) -> None:
        self.cfg, self.rng, self.apps, self.creds, self.groups, self.spare = cfg, rng, apps, creds, groups, spare
        self.span = cfg.fault_seconds
        self.busy: dict[str, list[tuple[float, float]]] = {}  # resource name -> busy intervals
        self.items: list[PlanItem] = []

    def _free(self, name: str, start: float, end: float) -> bool:
        return all(e < start or s > end for s, e in self.busy.get(name, []))

    def _take(self, names: list[str], start: float, end: float) -> None:
        for name in names:
            self.busy.setdefault(name, []).append((start, end))

    def _times(self, n: int, lo: float, hi: float) -> list[float]:
        return sorted(self.rng.uniform(lo * self.span, hi * self.span) for _ in range(n))

    def _count(self, every: float, least: int) -> int:
        return max(least, round(self.span / every))

    def _slot(self, lo: float, hi: float, free: Callable[[float], bool]) -> float | None:
        """A random moment in [lo, hi] of the fault phase at which `free` holds (a few tries)."""
        for _ in range(30):
            at = self.rng.uniform(lo * self.span, hi * self.span)
            if free(at):
                return at
        return None

    def plan(self) -> list[PlanItem]:
        if self.span < 30:
            return []
        end = self.span - 2
        self._discovery()
        # process-level faults, apart from each other (each is followed by a leader election)
        gap = min(25.0, self.span * 0.12)
        for kind in ["apiserver_restart"] * self._count(300, 1) + ["leader_kill"] * self._count(240, 1):
            at = self._slot(0.05, 0.9, lambda t: self._free("process", t - gap, t + gap))
            if at is not None:
                self._take(["process"], at - gap, at + gap)
                downtime = {"downtime": round(self.rng.uniform(2, 5), 1)} if kind == "apiserver_restart" else {}
                self._add(at, kind, 0.0, **downtime)
        for _ in range(self._count(300, 1)):
            duration = self.rng.uniform(8, 15)

            def outage_fits(t: float, d: float = duration) -> bool:
                return t + d < end and self._free("global", t - 5, t + d + 5)
            at = self._slot(0.1, 0.8, outage_fits)
            if at is not None:
                self._take(["global"], at - 5, at + duration + 5)
                self._add(at, "outage", duration, drop=self.rng.random() < 0.5)
        # the first churn's victim starts the request its partners wait on (the cancelled-sharer race)
        for i in range(self._count(45, 2)):
            trigger = "spec" if i % 2 == 0 else "rotation"
            self._slot(0.05, 0.8, functools.partial(self._churn, end=end, trigger=trigger))
        for _ in range(self._count(30, 2)):
            self._slot(0.05, 0.8, lambda t: self._rotation(t, end))
        n = self._count(5, 6)
        kinds = [APP_FAULTS[i % len(APP_FAULTS)] for i in range(n)]  # every kind, in a seeded order
        self.rng.shuffle(kinds)
        for kind, at in zip(kinds, self._times(n, 0.0, 0.9), strict=True):
            self._app_fault(kind, at, end)
        changes = ["client", "scopes", "rbe"]
        for i, at in enumerate(self._times(self._count(30, 3), 0.05, 0.85)):
            self._spec_change(at, changes[i % len(changes)])
        return sorted(self.items, key=lambda p: p.at)

    def _add(self, at: float, kind: str, duration: float, **args: Any) -> None:
        self.items.append(PlanItem(round(at, 1), kind, round(duration, 1), tuple(sorted(args.items()))))

    def _discovery(self) -> None:
        """One `200 <html>` discovery answer, for a tenant no credential used yet: two credentials move there."""
        if not self.spare:
            return
        # late, and no restart after it: a new process's empty cache must not hide a poisoned one
        at = self.rng.uniform(0.7, 0.8) * self.span
        candidates = [i for i, c in enumerate(self.creds) if c.group is None and c.rbe is None]
        movers = self.rng.sample(candidates, 2)
        targets = [a for a in self.spare if a.kind == self.creds[movers[0]].app.kind]
        second = [a for a in self.spare if a.kind == self.creds[movers[1]].app.kind]
        if not targets or not second:
            return
        self._take(["global"], at - 5, at + 25)
        self._take(["process"], at - min(25.0, self.span * 0.12), self.span)
        self._take([f"cred:{m}" for m in movers], at, at + 1)
        self._add(at, "discovery_html", 20.0, tenant=targets[0].tenant, creds=tuple(movers),
                  apps=(targets[0].index, second[0].index))

    def _app_fault(self, kind: str, at: float, end: float) -> None:
        duration = self.rng.uniform(8, 30)
        if at + duration >= end:
            duration = end - at
        if duration < 3:
            return
        free = [a.index for a in self.apps if self._free(f"app:{a.index}", at - 2, at + duration + 2)]
        if not free:
            return
        app = self.rng.choice(free)
        self._take([f"app:{app}"], at, at + duration)
        args: dict[str, Any] = {"app": app}
        if kind in ("throttle_json", "throttle_html"):
            args["retry_after"] = self.rng.randint(1, 5)
        elif kind == "server_error":
            args["status"] = self.rng.choice([500, 502, 503, 504])
        elif kind == "slow":
            args["delay"] = round(self.rng.uniform(2, 8), 1)
        self._add(at, kind, duration, **args)

    def _churn(self, at: float, end: float, trigger: str) -> bool:
        """Slow the app; make the partners acquire together (trigger "spec": the victim first, by a spec change
        that keeps the sharing key, its partners 0.5 s later, so they wait on the victim's request; "rotation":
        the group's key rotated to a new good value, all at once); delete the victim while the request is in
        flight, create it again."""
        duration = 8.0
        groups = [g for g, members in self.groups.items()
                  if self._free(f"app:{self.creds[members[0]].app.index}", at - 2, at + duration + 2)
                  and self._free(f"key:{self.creds[members[0]].key.ref}", at - 2, at + duration + 2)
                  and all(self._free(f"cred:{m}", at - 2, at + duration + 2) for m in members)]
        if not groups or at + duration >= end:
            return False
        group = self.rng.choice(groups)
        members = self.groups[group]
        first = self.creds[members[0]]
        self._take([f"app:{first.app.index}", f"key:{first.key.ref}", *(f"cred:{m}" for m in members)],
                   at, at + duration)
        self._add(at, "partner_churn", duration, group=group, victim=self.rng.choice(members), delay=4.0,
                  trigger=trigger)
        return True

    def _rotation(self, at: float, end: float) -> bool:
        duration = self.rng.uniform(10, 25)
        keys = sorted({c.key.ref for c in self.creds if self._free(f"key:{c.key.ref}", at - 2, at + duration + 2)})
        if not keys or at + duration >= end:
            return False
        key = self.rng.choice(keys)
        self._take([f"key:{key}"], at, at + duration)
        self._add(at, "rotation", duration, key=key.split("/")[1], new_value=self.rng.random() < 0.5)
        return True

    def _spec_change(self, at: float, kind: str) -> None:
        free = [i for i, c in enumerate(self.creds) if c.group is None
                and self._free(f"cred:{i}", at - 5, at + 5) and self._free(f"key:{c.key.ref}", at - 5, at + 5)]
        if not free:
            return
        cred = self.rng.choice(free)
        self._take([f"cred:{cred}"], at, at + 1)
        c = self.creds[cred]
        if kind == "client":
            same = [a.index for a in self.apps if a.kind == c.app.kind and a.index != c.app.index]
            self._add(at, "spec_client", 0.0, cred=cred, app=self.rng.choice(same))
        elif kind == "scopes":
            resource = self.rng.choice([r for r in RESOURCES if r != c.resource])
            self._add(at, "spec_scopes", 0.0, cred=cred, resource=resource)
        else:
            self._add(at, "spec_rbe", 0.0, cred=cred)


# --- helpers -----------------------------------------------------------------------------------------------------

def _claims(token: str) -> dict[str, Any] | None:
    """A JWT's payload, not verified (header.payload.signature, base64url)."""
    try:
        payload = json.loads(b64url_decode(token.split(".")[1]))
    except (IndexError, ValueError, TypeError):
        return None
    return payload if isinstance(payload, dict) else None


def _ready_condition(obj: dict[str, Any]) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return dict(cond)
    return None


def _ready_for_generation(obj: dict[str, Any]) -> bool:
    """Ready=True for the object's current generation (a condition for an older generation says nothing yet)."""
    cond = _ready_condition(obj)
    if cond is None or cond.get("status") != "True":
        return False
    observed = cond.get("observedGeneration", (obj.get("status") or {}).get("observedGeneration"))
    return bool(observed == obj["metadata"].get("generation"))


def _observed(obj: dict[str, Any]) -> int | None:
    cond = _ready_condition(obj) or {}
    value = cond.get("observedGeneration", (obj.get("status") or {}).get("observedGeneration"))
    return int(value) if isinstance(value, int) else None


def _secret_name(obj: dict[str, Any]) -> str:
    return str((obj.get("spec") or {}).get("secretName") or f"{obj['metadata']['name']}-token")


def _mismatch(claims: dict[str, Any], spec: dict[str, Any]) -> str | None:
    """Why a token was not acquired for this spec (tenant, app, resource), or None."""
    scope = (spec.get("scopes") or [GRAPH_DEFAULT_SCOPE])[0]
    wanted = {"tid": str(spec.get("tenantId", "")).lower(), "appid": str(spec.get("clientId", "")).lower(),
              "aud": str(scope).removesuffix("/.default")}
    wrong = [f"{k} is {claims.get(k)!r}, spec wants {v!r}" for k, v in wanted.items() if claims.get(k) != v]
    return "; ".join(wrong) or None


def _parse_time(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _sample(text: str, metric: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith((metric + "{", metric + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def _api_client(bed: Bed) -> client.ApiClient:
    """An admin client that does not retry: a refused call during an apiserver restart fails at once, quietly."""
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(bed.kubeconfig),  # type: ignore[no-untyped-call]
                            client_configuration=configuration)
    configuration.retries = False
    return client.ApiClient(configuration)


def apiserver_requests(bed: Bed) -> Counter[str]:
    """apiserver_request_total from the bed apiserver's /metrics, by "resource[/subresource] VERB"."""
    pki = bed.control_plane.dir / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(pki / "admin.crt", pki / "admin.key")
    with urllib.request.urlopen(f"{bed.control_plane.server}/metrics", context=ctx, timeout=30) as resp:
        text = resp.read().decode()
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            resource = labels.get("resource", "") + ("/" + labels["subresource"] if labels.get("subresource") else "")
            counts[f"{resource} {labels.get('verb', '')}"] += int(float(line.rsplit(" ", 1)[1]))
    return counts


# --- replicas: kubelet and Prometheus for two operator processes -------------------------------------------------

class _Replicas:
    def __init__(self, bed: Bed, logdir: Path, cfg: SoakConfig, lease_namespace: str, *extra: str) -> None:
        args = ("--leader-election", f"--leader-election-namespace={lease_namespace}",
                f"--lease-duration={cfg.lease_duration:g}", f"--token-timeout={cfg.token_timeout:g}", *extra)
        self.ops = [OperatorProcess(bed, logdir, *args, name=f"soak-replica-{i}", log_level=cfg.log_level)
                    for i in range(2)]
        self.lock = threading.RLock()
        self.restarts: Counter[str] = Counter()
        self.exits: list[str] = []
        self._urls: dict[int, str] = {}
        self._probe_failures: dict[int, int] = {}
        self.held: set[str] = set()  # killed by the plan, started again by it (not by the supervisor)
        self.on_restart: Callable[[str, str], None] | None = None  # (replica, cause) of a restart not planned

    def start(self) -> None:
        for op in self.ops:
            op.start()

    def stop(self) -> None:
        with self.lock:
            for op in self.ops:
                op.stop()

    @staticmethod
    def pid(op: OperatorProcess) -> int | None:
        popen = op.process.popen
        return popen.pid if popen is not None and popen.poll() is None else None

    def holder(self, identity: str | None) -> OperatorProcess | None:
        for op in self.ops:
            pid = self.pid(op)
            if identity and pid is not None and identity.endswith(f"-{pid}"):
                return op
        return None

    def restart(self, op: OperatorProcess, cause: str) -> None:
        with self.lock:
            op.kill()
            op.start()
            self.restarts[cause] += 1
        if self.on_restart is not None:
            self.on_restart(op.process.name, cause)

    def url(self, op: OperatorProcess) -> str | None:
        pid = self.pid(op)
        if pid is None:
            return None
        if pid not in self._urls:
            with contextlib.suppress(TimeoutError):
                self._urls[pid] = op.metrics_url(timeout=0.2)
        return self._urls.get(pid)

    def supervise(self) -> None:
        """As a Deployment would: a replica that exited is started again."""
        with self.lock:
            for op in self.ops:
                popen = op.process.popen
                if op.process.name not in self.held and popen is not None and popen.poll() is not None:
                    self.exits.append(f"{op.process.name} exited with {popen.returncode}")
                    op.stop()
                    op.start()
                    self.restarts["exited"] += 1
                    if self.on_restart is not None:
                        self.on_restart(op.process.name, f"exited with {popen.returncode}")

    def probe(self, op: OperatorProcess) -> bool | None:
        """One liveness probe (GET /healthz), stricter than the chart's (6 failures of 5 s); True after 3 failures
        in a row (the harness restarts the replica, as a kubelet would)."""
        pid, url = self.pid(op), self.url(op)
        if pid is None or url is None:
            return None
        try:
            ok = requests.get(f"{url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            ok = False
        self._probe_failures[pid] = 0 if ok else self._probe_failures.get(pid, 0) + 1
        return self._probe_failures[pid] >= 3


# --- the soak ----------------------------------------------------------------------------------------------------

class Soak:
    def __init__(self, bed: Bed, cfg: SoakConfig, logdir: Path) -> None:
        self.bed, self.cfg, self.logdir = bed, cfg, logdir
        self.rng = random.Random(cfg.seed)  # a reproducible schedule, not cryptography
        self.run_id = uuid.uuid4().hex[:6]  # unique names on a shared bed; the plan does not depend on it
        self.namespaces = [f"soak-{self.run_id}-{i}" for i in range(cfg.namespaces)]
        self.lease_namespace = f"soak-{self.run_id}-system"
        self.hostile_namespace = f"soak-{self.run_id}-hostile"  # not a victim: the checker does not judge it
        self.result = SoakResult(cfg, logdir)
        self.lock = threading.RLock()
        self.apps: list[_App] = []
        self.spare: list[_App] = []  # apps in a tenant nobody uses at first (for the discovery fault)
        self.keys: dict[str, _Key] = {}
        self.creds: list[_Cred] = []
        self.by_ref: dict[str, _Cred] = {}
        self.groups: dict[int, list[int]] = {}
        self.windows: list[_Window] = []
        self.assignments: list[_Assignment] = []
        self.restarts: list[float] = []  # apiserver restarts and leader kills (wall clock)
        self.own_secret_writes = 0
        self.active_faults: dict[str, Fault] = {}  # client id -> its token endpoint fault (re-applied after heal())
        self.base_requests: dict[str, int] = {}
        self.api_counts: Counter[str] = Counter()
        self.api_base: Counter[str] | None = None
        self._queue: list[tuple[float, int, Callable[[], None], str]] = []
        self.t0 = 0.0  # wall clock when the soak (after setup) began
        self.stopping = threading.Event()
        self.replicas: _Replicas | None = None
        self.stand_ins: StandIns | None = None
        self.hostile: HostileTenant | None = None
        self.healthz: list[float | None] = []  # hostile mode: each probe's answer time (None: failed)
        self.api = _api_client(bed)
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.checker = _Checker(self)

    # --- bookkeeping ---------------------------------------------------------------------------------------
    def now(self) -> float:
        return time.time() - self.t0

    def violation(self, kind: str, subject: str, detail: str, dedup: str | None = None) -> None:
        with self.lock:
            for v in self.result.violations:
                if (v.kind, v.subject) == (kind, subject) and (dedup is None or v.detail.startswith(dedup)):
                    v.count += 1
                    return
            self.result.violations.append(Violation(kind, subject, detail, round(self.now(), 1)))

    def open_window(self, kind: str, scope: str, target: str) -> _Window:
        window = _Window(kind, scope, target, time.time())
        with self.lock:
            self.windows.append(window)
        return window

    def disruption(self, cred: _Cred | None, start: float, end: float) -> _Window | None:
        """A window that broke something this credential needs, overlapping [start, end] (wall clock)."""
        with self.lock:
            for w in self.windows:
                if not w.overlaps(start, end):
                    continue
                if w.scope in ("all", "apiserver"):
                    return w
                if cred is None:
                    continue
                if (w.scope == "app" and w.target in cred.apps_ever) or (
                        w.scope == "tenant" and w.target in cred.tenants_ever) or (
                        w.scope == "key" and w.target == cred.key.ref):
                    return w
        return None

    def operator_gap_end(self, start: float, end: float) -> float | None:
        """The end of the last apiserver restart or leader kill window overlapping [start, end] (wall clock)."""
        with self.lock:
            ends = [w.end or time.time() for w in self.windows
                    if w.scope in ("apiserver", "leader") and w.overlaps(start, end)]
        return max(ends, default=None)

    def assign(self, cred: _Cred, app: _App | None) -> None:
        """The credential points at `app` from now on (None: it was deleted)."""
        now = time.time()
        with self.lock:
            for a in self.assignments:
                if a.cred == cred.ref and a.end is None:
                    a.end = now
            if app is not None:
                cred.point_at(app)
                self.assignments.append(_Assignment(cred.ref, app.client_id, cred.key.ref, cred.refresh_period(),
                                                    now))

    # --- setup ---------------------------------------------------------------------------------------------
    def build_world(self) -> None:
        w = _World(self.cfg, self.rng, self.bed.issuer, self.namespaces).build()
        self.apps, self.spare, self.keys, self.creds, self.groups = w.apps, w.spare, w.keys, w.creds, w.groups
        self.by_ref = {c.ref: c for c in self.creds}

    def manifest(self, cred: _Cred) -> dict[str, Any]:
        ref = {"clientSecret": {"name": cred.key.name}} if cred.key.kind == "secret" else {
            "certificate": {"name": cred.key.name}}
        spec: dict[str, Any] = {"tenantId": cred.app.tenant, "clientId": cred.app.client_id,
                                "authorityHost": self.bed.authority_host, "credential": ref,
                                "scopes": [f"{cred.resource}/.default"]}
        if cred.rbe:
            spec["refreshBeforeExpiry"] = cred.rbe
        if cred.require_roles:
            spec["requiredRoles"] = ["Mail.Read"]
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": cred.name}, "spec": spec}

    def _spaces(self) -> list[str]:
        return [*self.namespaces, self.lease_namespace] + ([self.hostile_namespace] if self.cfg.hostile else [])

    def create_objects(self) -> None:
        for ns in self._spaces():
            self.bed.create_namespace(ns)
        for key in self.keys.values():
            self.core.create_namespaced_secret(key.namespace, client.V1Secret(
                metadata=client.V1ObjectMeta(name=key.name), string_data=key.string_data(),
                type="Opaque" if key.kind == "secret" else "kubernetes.io/tls"))
        for cred in self.creds:
            self.custom.create_namespaced_custom_object(GROUP, VERSION, cred.namespace, PLURAL, self.manifest(cred))

    def cleanup(self) -> None:
        for ns in self._spaces():
            with contextlib.suppress(Exception):
                self.bed.delete_namespace(ns)

    # --- running -------------------------------------------------------------------------------------------
    def run(self) -> SoakResult:
        started = time.monotonic()
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.build_world()
        plan = _Planner(self.cfg, self.rng, self.apps, self.creds, self.groups, self.spare).plan()
        self._write_plan(plan)
        self.replicas = _Replicas(self.bed, self.logdir, self.cfg, self.lease_namespace, *self._hostile_setup())
        self.replicas.on_restart = self._unplanned_restart
        threads: list[threading.Thread] = []
        try:
            self.create_objects()
            if self.hostile is not None:
                self.hostile.prepare()
            self.replicas.start()
            self.t0 = time.time()
            threads = [threading.Thread(target=self._guard(self.checker.loop), name="soak-checker", daemon=True),
                       threading.Thread(target=self._guard(self._kubelet_loop), name="soak-kubelet", daemon=True),
                       threading.Thread(target=self._guard(self._monitor_loop), name="soak-monitor", daemon=True)]
            for t in threads:
                t.start()
            self._await_setup()
            self.result.setup_seconds = time.monotonic() - started
            self._begin()
            if self.hostile is not None:
                attacker = threading.Thread(target=self._guard(self.hostile.loop), name="soak-hostile", daemon=True)
                attacker.start()
                threads.append(attacker)
            self._execute(plan)
            self._quiet()
        finally:
            self.stopping.set()
            for t in threads:
                t.join(timeout=30)
            self.replicas.stop()
            self._finish()
            self.cleanup()
            if self.stand_ins is not None:
                self.stand_ins.close()
            self.api.close()  # type: ignore[no-untyped-call]
            self.checker.api.close()  # type: ignore[no-untyped-call]
            self.result.duration = time.monotonic() - started
        return self.result

    def _hostile_setup(self) -> list[str]:
        """Hostile mode: start the stand-ins and the attacker; the replicas' extra arguments (the allow-list of
        authority hosts, when the operator has one: the bed's issuer and the hostile authority, which a tenant's
        own Entra stand-in, allowed by the admin, may well be)."""
        if not self.cfg.hostile:
            return []
        self.stand_ins = StandIns(self.bed.issuer_ca, self.logdir / "stand-ins", self._forbidden).start()
        api = _api_client(self.bed)
        tenants = Counter(c.app.tenant for c in self.creds)
        self.hostile = HostileTenant(
            issuer=self.bed.issuer, authority_host=self.bed.authority_host, stand_ins=self.stand_ins,
            namespace=self.hostile_namespace, victim_tenant=tenants.most_common(1)[0][0],
            custom=client.CustomObjectsApi(api), core=client.CoreV1Api(api), seed=self.cfg.seed,
            interval=self.cfg.hostile_interval, stopping=self.stopping, note=self.result.notes.append,
            attacks=self.cfg.hostile_attacks)
        if not operator_supports_authority_host():
            self.result.notes.append("graphcred run has no --authority-host: every authorityHost is accepted as is")
            return []
        self.result.notes.append(f"replicas run with --authority-host {self.bed.authority_host} and "
                                 f"{self.stand_ins.authority_url} (the hostile authority)")
        return [f"--authority-host={self.bed.authority_host}", f"--authority-host={self.stand_ins.authority_url}"]

    def _forbidden(self, who: str, request: str) -> None:
        self.violation("forbidden-host", f"{who} stand-in", f"received {request}", dedup="received")

    def _unplanned_restart(self, replica: str, cause: str) -> None:
        # A leader that cannot renew its Lease while the plan has the apiserver down exits by design (a restart
        # comes back as a standby): planned, if it happens in the restart's window (which lasts a Lease and 15 s
        # past the restart) or a leader kill's.
        now = time.time()
        if self.operator_gap_end(now - 1, now) is not None:
            return
        if self.cfg.hostile:
            self.violation("restart", replica, cause, dedup=cause[:10])

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - a harness bug must fail the soak, visibly
                self.violation("harness", threading.current_thread().name, f"{type(exc).__name__}: {exc}")
        return run

    def _write_plan(self, plan: list[PlanItem]) -> None:
        head = f"seed {self.cfg.seed}: {len(plan)} planned faults over {self.cfg.fault_seconds:.0f} s"
        lines = [head, *map(str, plan), "", "apps (index: client id, tenant, kind, token lifetime):"]
        lines += [f"  {a.index}: {a.client_id} {a.tenant} {a.kind} {a.lifetime} s" for a in self.apps + self.spare]
        lines.append("credentials (index: namespace/name, app index, key, sharing group, refreshBeforeExpiry):")
        lines += [f"  {i}: {c.ref} app {c.app.index} {c.key.name} group {c.group} rbe {c.rbe}"
                  for i, c in enumerate(self.creds)]
        (self.logdir / "plan.txt").write_text("\n".join(lines) + "\n")

    def _await_setup(self) -> None:
        deadline = time.time() + self.cfg.setup_ready_within
        while time.time() < deadline:
            if self.checker.all_ready_since(self.t0):
                self.result.setup_ready_seconds = time.time() - self.t0
                return
            time.sleep(0.5)
        missing = self.checker.not_ready()
        self.violation("setup", f"{len(missing)} credentials",
                       f"not Ready {self.cfg.setup_ready_within:.0f} s after creation: " + "; ".join(missing[:5]))

    def _begin(self) -> None:
        """The soak's clock starts: counters and assignments from here."""
        self.t0 = time.time()
        self.result.began = dt.datetime.fromtimestamp(self.t0, dt.UTC).strftime("%H:%M:%S UTC")
        self.checker.mark_soak_start()
        self.base_requests = {a.client_id: self.bed.issuer.token_requests(a.client_id) for a in self.apps + self.spare}
        self.api_base = apiserver_requests(self.bed)
        for cred in self.creds:
            self.assign(cred, cred.app)

    def _execute(self, plan: list[PlanItem]) -> None:
        queue = self._queue
        queue += [(p.at, i, self._action(p), p.kind) for i, p in enumerate(plan)]
        while True:
            with self.lock:
                queue.sort(key=lambda q: (q[0], q[1]))
                if not queue:
                    break
                at, _, action, kind = queue.pop(0)
            wait = at - self.now()
            if wait > 0:
                time.sleep(wait)
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - an action that failed (e.g. during an outage): note it
                self.result.notes.append(f"{kind} at {self.now():.0f} s failed: {type(exc).__name__}: {exc}")
        remaining = self.cfg.fault_seconds - self.now()
        if remaining > 0:
            time.sleep(remaining)

    def later(self, delay: float, action: Callable[[], None], kind: str) -> None:
        with self.lock:
            self._queue.append((self.now() + delay, len(self._queue) + 10**6, action, kind))

    # --- actions -------------------------------------------------------------------------------------------
    def _action(self, p: PlanItem) -> Callable[[], None]:
        def act() -> None:
            getattr(self, f"_do_{p.kind}")(p)
            with self.lock:
                self.result.faults[p.kind] += 1
        return act

    def _fail(self, client_id: str, fault: Fault) -> None:
        with self.lock:
            self.active_faults[client_id] = fault
        self.bed.issuer.fail(client_id, fault)

    def _heal(self, client_id: str, window: _Window) -> None:
        with self.lock:
            self.active_faults.pop(client_id, None)
        self.bed.issuer.heal(client_id)
        window.end = time.time()

    def _app_fault(self, p: PlanItem, fault: Fault) -> None:
        app = self.apps[p.arg("app")]
        self._fail(app.client_id, fault)
        window = self.open_window(p.kind, "tenant" if p.kind in TENANT_WIDE else "app",
                                  app.tenant if p.kind in TENANT_WIDE else app.client_id)
        self.later(p.duration, lambda: self._heal(app.client_id, window), f"heal {p.kind}")

    def _do_throttle_json(self, p: PlanItem) -> None:
        self._app_fault(p, Fault(status=429, retry_after=p.arg("retry_after")))

    def _do_throttle_html(self, p: PlanItem) -> None:
        self._app_fault(p, Fault(html=True, status=429, retry_after=p.arg("retry_after")))

    def _do_server_error(self, p: PlanItem) -> None:
        self._app_fault(p, Fault(status=p.arg("status")))

    def _do_slow(self, p: PlanItem) -> None:
        self._app_fault(p, Fault(delay=p.arg("delay")))

    def _do_drop(self, p: PlanItem) -> None:
        self._app_fault(p, Fault(drop=True))

    def _do_garbage(self, p: PlanItem) -> None:
        self._app_fault(p, Fault(garbage=True))

    def _do_outage(self, p: PlanItem) -> None:
        self.bed.issuer.fail_all(Fault(drop=True) if p.arg("drop") else Fault(status=503))
        window = self.open_window("outage", "all", "issuer")

        def heal() -> None:
            # heal() clears every fault: put back the per-app ones still due (the plan keeps discovery apart)
            with self.lock:
                self.bed.issuer.heal()
                for client_id, fault in self.active_faults.items():
                    self.bed.issuer.fail(client_id, fault)
                if self.hostile is not None:
                    self.hostile.throttle()
            window.end = time.time()
        self.later(p.duration, heal, "heal outage")

    def _do_discovery_html(self, p: PlanItem) -> None:
        tenant = p.arg("tenant")
        before = self.bed.issuer.discovery_requests_for(tenant)
        self.bed.issuer.fail_discovery(tenant, html=True, times=1)
        window = self.open_window("discovery_html", "tenant", tenant)
        for cred_index, app_index in zip(p.arg("creds"), p.arg("apps"), strict=True):
            cred, app = self.creds[cred_index], next(a for a in self.spare if a.index == app_index)
            self._move(cred, app)

        def consumed() -> None:
            # the window lasts until the html answer was served, and a retry's worth after it
            if self.bed.issuer.discovery_requests_for(tenant) > before or self.now() > self.cfg.fault_seconds - 5:
                window.end = time.time() + 2
            else:
                self.later(0.5, consumed, "discovery consumed?")
        self.later(0.5, consumed, "discovery consumed?")

    def _do_apiserver_restart(self, p: PlanItem) -> None:
        with self.lock:
            self.api_counts += apiserver_requests(self.bed) - (self.api_base or Counter())
            self.api_base = Counter()  # a new apiserver counts from zero
        window = self.open_window("apiserver_restart", "apiserver", "kube-apiserver")
        self.restarts.append(time.time())
        self.bed.control_plane.restart_apiserver(downtime=p.arg("downtime"))
        # the leader may have lost its Lease meanwhile: the window lasts until one could have taken it again
        window.end = time.time() + self.cfg.lease_duration + 15

    def _do_leader_kill(self, p: PlanItem) -> None:
        assert self.replicas is not None
        holder = self.checker.lease_holder()
        op = self.replicas.holder(holder)
        if op is None:
            raise RuntimeError(f"no live leader found (Lease holder {holder})")
        self.open_window("leader_kill", "leader", holder or "").end = time.time() + self.cfg.lease_duration + 15
        self.restarts.append(time.time())
        with self.replicas.lock:
            op.kill()
            self.replicas.held.add(op.process.name)
            self.checker.killed(holder or "", time.time())
        self.later(2.0, lambda: self._restart_killed(op), "restart killed leader")

    def _restart_killed(self, op: OperatorProcess) -> None:
        assert self.replicas is not None
        with self.replicas.lock:
            self.replicas.held.discard(op.process.name)
            op.start()
            self.replicas.restarts["leader SIGKILL"] += 1

    def _patch_key(self, key: _Key) -> None:
        self._kube(self.core.patch_namespaced_secret, key.name, key.namespace, {"stringData": key.string_data()})
        self.own_secret_writes += 1

    def _do_rotation(self, p: PlanItem) -> None:
        """good -> bad (a value the app does not know) -> good (the old value or a new registered one)."""
        key = next(k for k in self.keys.values() if k.name == p.arg("key"))
        good_value, good_pair = key.value, key.pair
        if key.kind == "secret":
            key.value = f"wrong~{uuid.uuid4().hex[:16]}"
        else:
            key.pair = self_signed(f"unregistered-{key.name}")
        self._patch_key(key)
        window = self.open_window("rotation_bad", "key", key.ref)

        def restore() -> None:
            if p.arg("new_value"):
                if key.kind == "secret":
                    key.value = f"soak-{key.name}~{uuid.uuid4().hex[:16]}"
                else:
                    key.pair = self_signed(f"soak-{key.name}-rotated")
                for app in list(key.apps):
                    key.register(app)  # Entra first, then the cluster
            else:
                key.value, key.pair = good_value, good_pair
            self._patch_key(key)
            window.end = time.time()
        self.later(p.duration, restore, "rotation back to good")

    def _do_partner_churn(self, p: PlanItem) -> None:
        members = [self.creds[i] for i in self.groups[p.arg("group")]]
        victim = self.creds[p.arg("victim")]
        app, key = members[0].app, members[0].key
        self._fail(app.client_id, Fault(delay=p.arg("delay")))
        window = self.open_window("partner_churn", "app", app.client_id)
        if p.arg("trigger") == "spec":
            self._toggle_roles(victim)
            for m in members:
                if m is not victim:
                    self.later(0.5, functools.partial(self._toggle_roles, m), "partner spec change")
        else:  # a new good value: every partner acquires at once, one request in flight for all of them
            if key.kind == "secret":
                key.value = f"soak-{key.name}~{uuid.uuid4().hex[:16]}"
            else:
                key.pair = self_signed(f"soak-{key.name}-churn")
            for a in list(key.apps):
                key.register(a)
            self._patch_key(key)

        def delete() -> None:
            self._kube(self.custom.delete_namespaced_custom_object, GROUP, VERSION, victim.namespace, PLURAL,
                       victim.name, done=404)
            self.assign(victim, None)

        def recreate() -> None:
            self._kube(self.custom.create_namespaced_custom_object, GROUP, VERSION, victim.namespace, PLURAL,
                       self.manifest(victim), done=409)
            self.assign(victim, victim.app)

        self.later(1.5, delete, "delete partner")
        self.later(3.0, recreate, "recreate partner")
        self.later(p.duration, lambda: self._heal(app.client_id, window), "heal partner churn")

    def _kube(self, call: Callable[..., Any], *args: Any, done: int | None = None) -> None:
        """An API call of the plan, tried again a few times (the apiserver may be slow or just restarted);
        `done`: a status that means an earlier try went through (404 on delete, 409 on create)."""
        for attempt in range(5):
            try:
                call(*args, _request_timeout=15)
                return
            except client.ApiException as exc:
                if exc.status == done and attempt > 0:
                    return
                if attempt == 4 or (exc.status is not None and exc.status < 500 and exc.status != 429):
                    raise
            except Exception:  # connection refused or timed out: try again
                if attempt == 4:
                    raise
            time.sleep(2)

    def _patch_spec(self, cred: _Cred, app: _App, spec: dict[str, Any]) -> None:
        self._kube(self.custom.patch_namespaced_custom_object, GROUP, VERSION, cred.namespace, PLURAL, cred.name,
                   {"spec": spec})
        self.assign(cred, app)

    def _toggle_roles(self, cred: _Cred) -> None:
        cred.require_roles = not cred.require_roles
        self._patch_spec(cred, cred.app, {"requiredRoles": ["Mail.Read"] if cred.require_roles else None})

    def _move(self, cred: _Cred, app: _App) -> None:
        cred.key.register(app)
        self._patch_spec(cred, app, {"tenantId": app.tenant, "clientId": app.client_id})

    def _do_spec_client(self, p: PlanItem) -> None:
        self._move(self.creds[p.arg("cred")], self.apps[p.arg("app")])

    def _do_spec_scopes(self, p: PlanItem) -> None:
        cred = self.creds[p.arg("cred")]
        cred.resource = p.arg("resource")
        self._patch_spec(cred, cred.app, {"scopes": [f"{cred.resource}/.default"]})

    def _do_spec_rbe(self, p: PlanItem) -> None:
        cred = self.creds[p.arg("cred")]
        cred.rbe = f"{cred.app.lifetime - 5}s"
        self._patch_spec(cred, cred.app, {"refreshBeforeExpiry": cred.rbe})

    # --- quiet phase and figures ---------------------------------------------------------------------------
    def _quiet(self) -> None:
        self.bed.issuer.heal()
        if self.hostile is not None:
            self.hostile.throttle()  # the attacker's fault, not the plan's: it stays
        now = time.time()
        with self.lock:
            self.active_faults.clear()
            for w in self.windows:
                if w.end is None:
                    w.end = now
        quiet_start = time.time()
        self.checker.mark_quiet(quiet_start)
        deadline = quiet_start + self.cfg.ready_within
        while time.time() < deadline and self.result.final_ready_seconds is None:
            if self.checker.all_ready_since(quiet_start):
                self.result.final_ready_seconds = time.time() - quiet_start
            time.sleep(0.5)
        waiting = self.checker.not_ready(gc_pending=True)
        self.result.final_gc_waiting = len(waiting)
        if waiting:
            self.result.notes.append(f"after the faults stopped, {len(waiting)} credentials still waited for the "
                                     f"garbage collector: {waiting[0]}")
        if self.result.final_ready_seconds is None:
            missing = self.checker.not_ready()
            for line in missing[:10]:
                self.violation("not-ready-after-faults", line.split(":")[0], line.split(":", 1)[1].strip())
            if len(missing) > 10:
                self.violation("not-ready-after-faults", f"{len(missing) - 10} more", "not Ready either")
        end = self.t0 + self.cfg.minutes * 60
        while time.time() < end:
            time.sleep(min(1.0, max(end - time.time(), 0.0)))

    def _finish(self) -> None:
        if self.checker.gc_waits:
            longest = max(last - first for first, last in self.checker.gc_waits.values())
            self.result.notes.append(
                f"{len(self.checker.gc_waits)} re-created credentials waited (SecretConflict) up to {longest:.0f} s "
                "for the garbage collector to delete the token Secret of their deleted namesake: not counted against "
                "graphcred (" + ", ".join(sorted(self.checker.gc_waits)[:5]) + ")")
        if self.api_base is None:
            return
        with contextlib.suppress(Exception):
            self.api_counts += apiserver_requests(self.bed) - self.api_base
        self.result.apiserver_requests = self.api_counts
        self.result.harness_requests = self.checker.requests
        self.result.skipped_polls = self.checker.skipped
        self.result.polls = self.checker.durations
        self.result.checks = self.checker.checks
        self.result.peak_token_requests_per_second = self.checker.peak_rate
        self.result.lateness = self.checker.lateness
        self.result.late_unexcused = self.checker.late_unexcused
        self.result.overdue = self.checker.overdue(time.time())
        if self.healthz:
            answered = [h for h in self.healthz if h is not None]
            self.result.healthz = (len(self.healthz), sum(1 for h in self.healthz if h is None or h > 2.0),
                                   max(answered, default=0.0))
        if self.hostile is not None:
            self.hostile.finish()
            self.result.hostile = self.hostile.report()
            self.result.hostile_tried = self.hostile.tried
        if self.replicas is not None:
            self.result.replica_restarts = self.replicas.restarts
            self.result.notes += self.replicas.exits
        self.result.leader_changes = self.checker.leader_changes
        self.result.takeovers = self.checker.takeovers
        self._bounds()

    def _bounds(self) -> None:
        """Token requests per app, token Secret writes and status writes against the budgets of docs/soak.md."""
        now = time.time()
        requests_budget: dict[str, float] = {}
        writes_budget = 0.0
        with self.lock:
            closed = [_Assignment(a.cred, a.app, a.key, a.period, a.start, a.end or now) for a in self.assignments]
            windows = [w for w in self.windows if w.scope != "leader"]
        for a in closed:
            refreshes, retries, hits = self._budget(a, windows, now)
            restarts = sum(1 for r in self.restarts if a.start <= r <= (a.end or now))
            # requests: each refresh due, one retry a second while broken, a re-acquisition after each restart
            requests_budget[a.app] = requests_budget.get(a.app, 0.0) + refreshes + retries + 2 * restarts
            # Secret writes: only a new token is written, so failed attempts write nothing: each refresh due, one
            # success after each fault, one after each restart
            writes_budget += refreshes + hits + restarts
        total_requests = 0
        for app in self.apps + self.spare:
            n = self.bed.issuer.token_requests(app.client_id) - self.base_requests.get(app.client_id, 0)
            total_requests += n
            bound = requests_budget.get(app.client_id, 0.0) + 5
            self.result.request_bounds[app.client_id] = (n, bound)
            self.result.checks["request-bound"] += 1
            if n > bound:
                self.violation("request-storm", f"app {app.client_id[:8]}",
                               f"{n} token requests, bound {bound:.0f} (credentials on it: "
                               f"{sum(1 for a in closed if a.app == app.client_id)})")
        self.result.token_requests = total_requests
        counts = self.api_counts
        own = self.own_secret_writes + (self.hostile.own_secret_writes if self.hostile is not None else 0)
        secret_writes = sum(counts[f"secrets {verb}"] for verb in ("PUT", "POST", "PATCH")) - own
        status_writes = counts["graphappcredentials/status PATCH"] + counts["graphappcredentials/status PUT"]
        # a replace that meets a conflict is retried once: twice the writes; each pass patches status once
        secret_bound = 2 * writes_budget + 2 * len(self.creds)
        status_bound = sum(requests_budget.values()) + 5 * len(self.creds)
        if self.hostile is not None:  # the attacker's own objects, budgeted like a victim's (hostile.py)
            hostile_secrets, hostile_status = self.hostile.write_allowance()
            secret_bound += 2 * hostile_secrets
            status_bound += hostile_status
        self.result.secret_writes = (secret_writes, secret_bound)
        self.result.status_writes = (status_writes, status_bound)
        self.result.checks["write-bound"] += 2
        if secret_writes > secret_bound:
            self.violation("secret-write-storm", "apiserver",
                           f"{secret_writes} token Secret writes, bound {secret_bound:.0f}")
        if status_writes > status_bound:
            self.violation("status-write-storm", "apiserver",
                           f"{status_writes} status writes, bound {status_bound:.0f}")

    def _budget(self, a: _Assignment, windows: list[_Window], now: float) -> tuple[float, float, int]:
        """(refreshes due, retries while broken, faults met) of one span of a credential on an app."""
        end = a.end or now
        tenant = next(x.tenant for x in self.apps + self.spare if x.client_id == a.app)
        refreshes = (end - a.start) / a.period + 2
        retries, hits = 0.0, 0
        for w in windows:
            hit = w.scope in ("all", "apiserver") or (w.scope == "app" and w.target == a.app) or (
                w.scope == "tenant" and w.target == tenant) or (w.scope == "key" and w.target == a.key)
            if hit and w.overlaps(a.start, end):
                retries += max(min(w.end or now, end) - max(w.start, a.start), 0.0) / 1.0 + 2
                hits += 1
        return refreshes, retries, hits

    def _monitor_loop(self) -> None:
        """Each replica's memory every second (VmHWM: the peak since it started). Hostile mode: above the chart's
        limit the kubelet would OOM-kill the pod, so the harness does (a violation, and a restart); /healthz is
        probed every 2 s and must answer 200 within 2 s."""
        assert self.replicas is not None
        last_probe = 0.0
        while not self.stopping.wait(1.0):
            for op in self.replicas.ops:
                pid = self.replicas.pid(op)
                memory = vm_peak_rss(pid) if pid is not None else None
                if memory is None:
                    continue
                name = op.process.name
                self.result.rss_peaks[name] = max(self.result.rss_peaks.get(name, 0), memory[0])
                if self.cfg.hostile and max(memory) > self.cfg.memory_limit:
                    self.violation("rss-over-limit", name, f"VmHWM {memory[0] / MIB:.0f} MiB, limit "
                                   f"{self.cfg.memory_limit / MIB:.0f} MiB: OOM-killed", dedup="VmHWM")
                    self.replicas.restart(op, "OOM-killed (over the chart's memory limit)")
            if self.cfg.hostile and time.monotonic() - last_probe >= 2:
                last_probe = time.monotonic()
                for op in self.replicas.ops:
                    self._probe_healthz(op)

    def _probe_healthz(self, op: OperatorProcess) -> None:
        assert self.replicas is not None
        url = self.replicas.url(op)
        if url is None:
            return
        started = time.monotonic()
        try:
            ok = requests.get(f"{url}/healthz", timeout=2).status_code == 200
        except requests.RequestException as exc:
            ok, why = False, type(exc).__name__
        else:
            why = "HTTP 503"
        took = time.monotonic() - started
        self.healthz.append(took if ok else None)
        if not ok or took > 2.0:
            self.violation("healthz", op.process.name, f"/healthz {why if not ok else 'slow'} after {took:.1f} s",
                           dedup="/healthz")

    def _kubelet_loop(self) -> None:
        assert self.replicas is not None
        last_probe = 0.0
        while not self.stopping.wait(2.0):
            self.replicas.supervise()
            self.checker.follow_leader()
            if time.monotonic() - last_probe >= 10:
                last_probe = time.monotonic()
                for op in self.replicas.ops:
                    if self.replicas.probe(op):
                        self.violation("liveness", op.process.name, "/healthz failed 3 probes in a row (10 s "
                                       "apart): the kubelet would restart it", dedup="/healthz")
                        self.replicas.restart(op, "liveness")


# --- the invariant checker ---------------------------------------------------------------------------------------

@dataclass
class _Seen:
    """What the checker remembers of one token Secret (by uid)."""

    max_iat: float = 0.0
    expired_reported: set[str] = field(default_factory=set)
    iat: float = 0.0  # the token it holds now
    due: float | None = None  # when that token is due for refresh (hostile.scheduled_refresh)
    late_reported: bool = False
    polled: float = 0.0  # the last poll that saw it (a Secret of a deleted credential stops being seen)


@dataclass
class _Progress:
    """What the checker remembers of one GraphAppCredential (by uid), to notice a worker that stopped."""

    signature: str = ""
    since: float = 0.0
    pending_generation: int | None = None
    pending_since: float = 0.0
    had_secret: bool = False
    not_ready_since: float | None = None


class _Checker:
    def __init__(self, soak: Soak) -> None:
        self.soak = soak
        self.api = _api_client(soak.bed)
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.coordination = client.CoordinationV1Api(self.api)
        self.checks: Counter[str] = Counter()
        self.durations: list[float] = []
        self._by_name: dict[tuple[str, str], dict[str, Any]] = {}
        self.gc_waits: dict[str, list[float]] = {}  # credential -> [first, last] seen waiting for the GC
        self._seen_uids: set[str] = set()  # every credential uid ever seen live
        self._orphans: dict[str, tuple[float, str]] = {}  # Secret uid -> (first seen orphaned, resourceVersion)
        self._live: set[str] = set()
        self.requests = 0
        self.skipped = 0
        self.issued: set[str] = set()
        self._issued_seen = 0
        self.secrets: dict[str, _Seen] = {}
        self.lateness: list[float] = []  # seconds after its schedule each victim's refresh came
        self.late_unexcused = 0  # tokens refreshed (or not) later than schedule + slack with nothing broken
        self.progress: dict[str, _Progress] = {}
        self._claims: dict[str, dict[str, Any] | None] = {}
        self._ready: dict[str, str] = {}  # "ns/name" -> "" if ready, else why not
        self._ready_at: float = 0.0
        self._lock = threading.Lock()
        self.soak_started = False
        self.quiet_since: float | None = None
        self.peak_rate = 0
        self._last_requests: tuple[float, int] | None = None
        self.holder: str | None = None
        self.leader_changes = 0
        self.takeovers: list[float] = []
        self._killed: tuple[str, float] | None = None
        self._dead_streak = 0
        self.workers_gauge_seen = False

    # --- for the main thread -------------------------------------------------------------------------------
    def mark_soak_start(self) -> None:
        self.soak_started = True

    def mark_quiet(self, since: float) -> None:
        self.quiet_since = since

    def all_ready_since(self, since: float) -> bool:
        """Every credential Ready in a poll after `since` (but for those waiting for the garbage collector)."""
        with self._lock:
            return self._ready_at > since and bool(self._ready) and all(
                v == "" or GC_PENDING in v for v in self._ready.values())

    def not_ready(self, gc_pending: bool = False) -> list[str]:
        """Credentials not Ready in the last poll: "ns/name: why" (`gc_pending`: only those waiting for the GC)."""
        with self._lock:
            return [f"{k}: {v}" for k, v in sorted(self._ready.items()) if v and (GC_PENDING in v) == gc_pending]

    def killed(self, holder: str, at: float) -> None:
        self._killed = (holder, at)

    def lease_holder(self) -> str | None:
        try:
            self.requests += 1
            lease = self.coordination.read_namespaced_lease(LEASE_NAME, self.soak.lease_namespace,
                                                            _request_timeout=10)
        except Exception:  # noqa: BLE001 - unreachable apiserver: no holder known
            return None
        return lease.spec.holder_identity if lease.spec else None

    # --- the loop ------------------------------------------------------------------------------------------
    def loop(self) -> None:
        while not self.soak.stopping.is_set():
            started = time.monotonic()
            if self.poll():
                self.durations.append(time.monotonic() - started)
            self.soak.stopping.wait(max(self.soak.cfg.poll_interval - (time.monotonic() - started), 0.05))

    def _get(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.requests += 1
        resp = call(*args, _preload_content=False, _request_timeout=10, **kwargs)
        return json.loads(resp.data)

    def poll(self) -> bool:
        t0 = time.time()
        try:
            gacs = self._get(self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)["items"]
            secrets = self._get(self.core.list_secret_for_all_namespaces,
                                label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY}")["items"]
        except Exception:  # noqa: BLE001 - the apiserver is restarting (a planned fault): try again
            self.skipped += 1
            return False
        self._refresh_issued()
        self._rate(t0)
        spaces = set(self.soak.namespaces)
        live = {o["metadata"]["uid"]: o for o in gacs
                if o["metadata"]["namespace"] in spaces and not o["metadata"].get("deletionTimestamp")}
        tokens: dict[str, tuple[dict[str, Any], str | None]] = {}  # gac uid -> (secret, token)
        self._by_name = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in secrets
                         if s["metadata"]["namespace"] in spaces}
        self._live = set(live)
        self._seen_uids |= self._live
        self._check_orphans(secrets, spaces, t0)
        for s in secrets:
            owner = controller_uid(s["metadata"])
            if owner is None or owner not in live or s["metadata"]["name"] != _secret_name(live[owner]):
                continue  # a Secret the GC is deleting (its credential is gone), or another's
            tokens[owner] = (s, self._check_secret(s, live[owner], t0))
        ready: dict[str, str] = {}
        for uid, obj in live.items():
            why = self._check_credential(obj, tokens.get(uid), t0)
            if "SecretConflict" in why:
                why += f"; {self.secret_state(obj)}"
            ready[f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"] = why
            self._check_recovery(obj, why, t0)
        for ref in set(self.soak.by_ref) - set(ready):
            ready[ref] = "GraphAppCredential absent"
        with self._lock:
            self._ready, self._ready_at = ready, t0
        return True

    def _check_orphans(self, secrets: list[dict[str, Any]], spaces: set[str], t0: float) -> None:
        """A token Secret whose credential is gone belongs to the garbage collector: nobody may write it any more
        (a worker that outlived its object would; the GC only deletes)."""
        current: set[str] = set()
        for s in secrets:
            meta = s["metadata"]
            owner = controller_uid(meta)
            if meta["namespace"] not in spaces or owner not in self._seen_uids or owner in self._live:
                continue
            current.add(meta["uid"])
            first, version = self._orphans.setdefault(meta["uid"], (t0, meta["resourceVersion"]))
            self.checks["orphan"] += 1
            if meta["resourceVersion"] != version and t0 - first > 5:
                self.soak.violation("zombie-write", f"{meta['namespace']}/{meta['name']}",
                                    f"written {t0 - first:.0f} s after its credential (uid {owner}) was gone",
                                    dedup="written")
                self._orphans[meta["uid"]] = (first, meta["resourceVersion"])
        for uid in set(self._orphans) - current:
            del self._orphans[uid]

    def _refresh_issued(self) -> None:
        tokens = self.soak.bed.issuer.issued_tokens
        new = tokens[self._issued_seen:]
        self._issued_seen += len(new)
        self.issued.update(new)

    def _rate(self, t: float) -> None:
        total = self.soak.bed.issuer.token_requests()
        if self._last_requests is not None and self.soak_started:
            t_prev, n_prev = self._last_requests
            if t - t_prev > 0.5:
                self.peak_rate = max(self.peak_rate, round((total - n_prev) / (t - t_prev)))
        self._last_requests = (t, total)

    def _claims_of(self, token: str) -> dict[str, Any] | None:
        if token not in self._claims:
            self._claims[token] = _claims(token)
        return self._claims[token]

    def _confirm(self, obj: dict[str, Any]) -> bool:
        """Still the same object at the same generation, not being deleted (the LISTs are not atomic)."""
        meta = obj["metadata"]
        try:
            now = self._get(self.custom.get_namespaced_custom_object, GROUP, VERSION, meta["namespace"], PLURAL,
                            meta["name"])
        except Exception:  # noqa: BLE001 - gone or unreachable: not confirmed
            return False
        m = now["metadata"]
        return bool(m["uid"] == meta["uid"] and m.get("generation") == meta.get("generation")
                    and not m.get("deletionTimestamp"))

    def _cred(self, obj: dict[str, Any]) -> _Cred | None:
        return self.soak.by_ref.get(f"{obj['metadata']['namespace']}/{obj['metadata']['name']}")

    def _check_secret(self, s: dict[str, Any], obj: dict[str, Any], t0: float) -> str | None:
        """Blanked, foreign, backwards, expired while reachable. Returns the token (None if blank)."""
        ref = f"{s['metadata']['namespace']}/{s['metadata']['name']}"
        raw = (s.get("data") or {}).get("access_token")
        token = base64.b64decode(raw).decode(errors="replace") if raw else ""
        self.checks["secret-token"] += 1
        if not token:
            if self._confirm(obj):
                self.soak.violation("secret-blanked", ref, "access_token missing or empty")
            return None
        if token not in self.issued:
            self.soak.violation("secret-foreign-token", ref, "holds something the issuer never issued")
            return None
        claims = self._claims_of(token) or {}
        iat, exp = float(claims.get("iat", 0)), float(claims.get("exp", 0))
        seen = self.secrets.setdefault(s["metadata"]["uid"], _Seen())
        if iat < seen.max_iat:
            self.soak.violation("secret-backwards", ref, f"token issued {seen.max_iat - iat:.0f} s before one it "
                                "held earlier", dedup="token issued")
        seen.max_iat = max(seen.max_iat, iat)
        self._lateness(seen, ref, obj, iat, exp, t0)
        if exp < t0 and token[-16:] not in seen.expired_reported and self.soak_started:
            seen.expired_reported.add(token[-16:])
            self._expired(ref, obj, iat, exp)
        return token

    def _lateness(self, seen: _Seen, ref: str, obj: dict[str, Any], iat: float, exp: float, t0: float) -> None:
        """How late after its schedule each victim's token was replaced (by the new token's iat). Hostile mode: a
        refresh (or its absence) later than the schedule plus the slack, with nothing it needs broken and a
        leader able to work all along, is a violation."""
        seen.polled = t0
        if iat > seen.iat and seen.iat:
            due = seen.due
            if due is not None and self.soak_started and due >= self.soak.t0:
                self.lateness.append(max(iat - due, 0.0))
                if not seen.late_reported:
                    self._judge_late(ref, obj, due, iat, "refreshed")
            seen.late_reported = False
        if iat >= seen.iat:
            seen.iat = iat
            spec, status = obj.get("spec") or {}, obj.get("status") or {}
            rbe = spec.get("refreshBeforeExpiry")
            try:
                before = parse_duration(rbe).total_seconds() if rbe else None
            except (ValueError, OverflowError):
                before = None
            seen.due = scheduled_refresh(iat, exp, before, _parse_time(status.get("refreshAt")),
                                         _parse_time(status.get("expiresOn")))
        due = seen.due
        if (due is not None and self.soak_started and due >= self.soak.t0 and not seen.late_reported
                and t0 > due + self.soak.cfg.refresh_slack):
            seen.late_reported = self._judge_late(ref, obj, due, t0, "not refreshed")

    def _judge_late(self, ref: str, obj: dict[str, Any], due: float, at: float, what: str) -> bool:
        """A violation (hostile mode; else counted) if `at` is beyond the slack and no fault or leader gap explains
        it. True: reported (once per token)."""
        late = at - due
        if late <= self.soak.cfg.refresh_slack:
            return False
        self.checks["refresh-lateness"] += 1
        if self.soak.disruption(self._cred(obj), due, at) or self.soak.operator_gap_end(due, at) is not None:
            return False
        self.late_unexcused += 1
        if not self.soak.cfg.hostile:
            return True  # a figure only: the soak without --hostile judges expiry, not lateness
        self.soak.violation("refresh-late", ref, f"due at {due - self.soak.t0:.0f} s, {what} {late:.0f} s later "
                            "with nothing it needs broken", dedup="due at")
        return True

    def overdue(self, now: float) -> list[float]:
        """Seconds past the schedule of the tokens still held at the end, that were due during the soak."""
        last = max((s.polled for s in self.secrets.values()), default=0.0)
        return [now - s.due for s in self.secrets.values() if s.due is not None and s.polled >= last - 0.5
                and self.soak.t0 <= s.due < now - self.soak.cfg.refresh_slack]

    def _expired(self, ref: str, obj: dict[str, Any], iat: float, exp: float) -> None:
        """A token expired in its Secret: fine only if something its credential needs was broken in the second
        half of its lifetime (or it was issued before the soak began and the checker cannot say)."""
        self.checks["expiry"] += 1
        half = iat + (exp - iat) / 2
        cred = self._cred(obj)
        if half < self.soak.t0:
            return  # its second half began during setup: the fault history is incomplete
        window = self.soak.disruption(cred, half, exp)
        if window is None:
            self.soak.violation("expired-while-reachable", ref, f"token (lifetime {exp - iat:.0f} s) expired at "
                                f"{exp - self.soak.t0:.0f} s; nothing it needs was broken from "
                                f"{half - self.soak.t0:.0f} s on", dedup="token")

    def _check_credential(self, obj: dict[str, Any], held: tuple[dict[str, Any], str | None] | None,
                          t0: float) -> str:
        """Honest Ready, progress. Returns "" if Ready with a good token, else why not."""
        meta = obj["metadata"]
        ref = f"{meta['namespace']}/{meta['name']}"
        uid = meta["uid"]
        progress = self.progress.setdefault(uid, _Progress(since=t0))
        token = held[1] if held else None
        if held is not None:
            progress.had_secret = True
        elif progress.had_secret:
            self.checks["secret-token"] += 1
            if self._confirm(obj) and self._secret_gone(obj):
                self.soak.violation("secret-blanked", ref, "its token Secret disappeared (the plan never deletes "
                                    "one; the garbage collector only deletes those of deleted credentials)",
                                    dedup="its token")
                progress.had_secret = False
        self._check_progress(obj, progress, t0)
        if not _ready_for_generation(obj):
            cond = _ready_condition(obj) or {}
            observed = _observed(obj)
            if cond.get("status") == "True" and observed != meta.get("generation"):
                return f"Ready for generation {observed}, object at {meta.get('generation')}"
            return f"Ready={cond.get('status', 'absent')} {cond.get('reason', '')}: {cond.get('message', '')[:160]}"
        self.checks["ready-token"] += 1
        claims = self._claims_of(token) if token else None
        problem = None
        if token is None or claims is None:
            problem = ("ready-no-token", "Ready=True but its token Secret is missing, blank or not issued")
        elif self._ready_outlived(float(claims.get("exp", 0)), t0):
            problem = ("ready-expired", f"Ready=True, token expired {t0 - float(claims['exp']):.0f} s ago")
        elif (why := _mismatch(claims, obj.get("spec") or {})) is not None:
            problem = ("ready-wrong-token", f"Ready=True for generation {meta.get('generation')}, token {why}")
        if problem is not None and self._confirm(obj):
            self.soak.violation(problem[0], ref, problem[1], dedup=problem[1][:20])
            return problem[1]
        if problem is not None:
            return "changed while checked"
        if claims is not None and float(claims.get("exp", 0)) <= t0:
            return "Ready=True, token expired"
        return ""

    def _ready_outlived(self, exp: float, t0: float) -> bool:
        """Ready=True outlived the token by more than the grace, counted from when a leader could write status
        (no replica can while the apiserver is down or the Lease is between holders)."""
        if exp >= t0:
            return False
        able = max(exp, self.soak.operator_gap_end(exp, t0) or exp)
        return t0 - able > self.soak.cfg.ready_expired_grace

    def _check_recovery(self, obj: dict[str, Any], why: str, t0: float) -> None:
        """Not Ready although everything it needs worked for the last `stuck_grace` seconds: the check made after
        the faults stop, made all along (a credential is retried at least every 30 s once it has no valid token)."""
        p = self.progress[obj["metadata"]["uid"]]
        if not why:
            p.not_ready_since = None
            return
        if p.not_ready_since is None or GC_PENDING in why:
            p.not_ready_since = t0  # the clock starts when the garbage collector has done its part
        if GC_PENDING in why:
            ref = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
            self.gc_waits.setdefault(ref, [t0, t0])[1] = t0
        grace = self.soak.cfg.stuck_grace
        if not self.soak_started or t0 - p.not_ready_since <= grace:
            return
        self.checks["recovery"] += 1
        if self.soak.disruption(self._cred(obj), t0 - grace, t0) is None:
            meta = obj["metadata"]
            self.soak.violation("not-ready-while-reachable", f"{meta['namespace']}/{meta['name']}",
                                f"not Ready for {t0 - p.not_ready_since:.0f} s, nothing it needs broken for the last "
                                f"{grace:.0f} s: {why}", dedup="not Ready")

    def secret_state(self, obj: dict[str, Any]) -> str:
        """Who holds the credential's token Secret now (evidence for a SecretConflict that outlives its cause)."""
        meta = obj["metadata"]
        name = _secret_name(obj)
        s = self._by_name.get((meta["namespace"], name))
        if s is None:
            return f"Secret {name} absent"
        owner = controller_uid(s["metadata"])
        if owner == meta["uid"]:
            return f"Secret {name} is its own"
        age = time.time() - (_parse_time(s["metadata"].get("creationTimestamp")) or time.time())
        refs = [r for r in s["metadata"].get("ownerReferences") or [] if r.get("controller")]
        if owner not in self._live and not (refs and refs[0].get("name") == meta["name"]):
            # graphcred adopts a Secret left by a deleted namesake (same name): only another name's is the GC's job
            return f"Secret {name} (created {age:.0f} s ago) is {GC_PENDING} ({owner})"
        return f"Secret {name} (created {age:.0f} s ago) is controlled by another live object ({owner})"

    def _secret_gone(self, obj: dict[str, Any]) -> bool:
        try:
            self.requests += 1
            self.core.read_namespaced_secret(_secret_name(obj), obj["metadata"]["namespace"], _request_timeout=10)
        except client.ApiException as exc:
            return bool(exc.status == 404)
        except Exception:  # noqa: BLE001 - unreachable: cannot tell
            return False
        return False

    def _check_progress(self, obj: dict[str, Any], p: _Progress, t0: float) -> None:
        """A worker that stopped: a due refresh or a new generation does not show in status within the grace."""
        if not self.soak_started:
            return
        meta, status = obj["metadata"], obj.get("status") or {}
        ref = f"{meta['namespace']}/{meta['name']}"
        grace = self.soak.cfg.stuck_grace
        cred = self._cred(obj)
        signature = json.dumps(status, sort_keys=True)
        if signature != p.signature:
            p.signature, p.since = signature, t0
        self.checks["progress"] += 1
        refresh = _parse_time(status.get("refreshAt"))
        if (refresh is not None and t0 > refresh + grace and t0 - p.since > grace
                and self.soak.disruption(cred, t0 - grace, t0) is None):
            self.soak.violation("stuck-worker", ref, f"refresh due at {refresh - self.soak.t0:.0f} s, status "
                                f"unchanged {t0 - p.since:.0f} s later", dedup="refresh due")
        generation, observed = meta.get("generation"), _observed(obj)
        if observed is not None and observed != generation:
            if p.pending_generation != generation:
                p.pending_generation, p.pending_since = generation, t0
            elif t0 - p.pending_since > grace and self.soak.disruption(cred, t0 - grace, t0) is None:
                self.soak.violation("stuck-worker", ref, f"generation {generation} not observed "
                                    f"{t0 - p.pending_since:.0f} s after it appeared", dedup="generation")
        else:
            p.pending_generation = None

    # --- leader, workers -----------------------------------------------------------------------------------
    def follow_leader(self) -> None:
        holder = self.lease_holder()
        if holder and holder != self.holder:
            if self.holder is not None:
                self.leader_changes += 1
            if self._killed is not None and self._killed[0] != holder:
                self.takeovers.append(time.time() - self._killed[1])
                self._killed = None
            self.holder = holder
        replicas = self.soak.replicas
        if replicas is None or not self.soak_started:
            return
        op = replicas.holder(holder)
        url = replicas.url(op) if op is not None else None
        if url is None:
            return
        try:
            text = requests.get(f"{url}/metrics", timeout=5).text
        except requests.RequestException:
            return
        dead = _sample(text, "graphcred_workers", state="dead")
        if dead is None:
            if not self.workers_gauge_seen and "graphcred_workers gauge" not in " ".join(self.soak.result.notes):
                self.soak.result.notes.append("graphcred_workers gauge absent from the leader's /metrics: the dead-"
                                              "worker check relies on status progress only")
            return
        self.workers_gauge_seen = True
        self.checks["workers"] += 1
        self._dead_streak = self._dead_streak + 1 if dead > 0 else 0
        if self._dead_streak >= 2:  # two scrapes 2 s apart: not a worker between its end and its restart
            self.soak.violation("dead-worker", holder or "leader",
                                f"graphcred_workers{{state=\"dead\"}} = {dead:.0f}", dedup="graphcred_workers")


def run_soak(bed: Bed, cfg: SoakConfig, logdir: Path) -> SoakResult:
    """Run the soak on a started bed with the CRD installed (and no other operator running)."""
    return Soak(bed, cfg, logdir).run()


@contextlib.contextmanager
def own_bed(workdir: Path | None = None) -> Iterator[Bed]:
    from .operator_process import install_crd

    with Bed(workdir) as bed:
        install_crd(bed)
        yield bed
