"""The soak itself: the world and its objects set up, two replicas started, the plan's faults acted out while the
checker watches, the quiet phase, then the figures and the budgets (token requests, Secret and status writes)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests
from kubernetes import client

from graphcred.api.keys import APP_PLURAL, GROUP, KIND, PLURAL, VERSION

from ..bed import Bed
from ..hostile import MIB, HostileTenant, StandIns, operator_supports_authority_host, vm_peak_rss
from ..issuer import Fault
from ..operator_process import OperatorProcess
from .apiserver import _api_client, apiserver_requests
from .checker import _Checker
from .cluster import _ClusterWorld, build_cluster, cluster_rng, plan_cluster
from .config import SoakConfig
from .faults import _Faults, _Window
from .plan import PlanItem, _Planner
from .replicas import _Replicas
from .result import SoakResult, Violation
from .rotating import _RotationWorld, allowance, build_rotating, plan_rotation, rotation_figures, rotation_rng, upload
from .world import _App, _Assignment, _Cred, _Key, _World


class Soak:
    def __init__(self, bed: Bed, cfg: SoakConfig, logdir: Path) -> None:
        self.bed, self.cfg, self.logdir = bed, cfg, logdir
        self.rng = random.Random(cfg.seed)  # a reproducible schedule, not cryptography
        self.run_id = uuid.uuid4().hex[:6]  # unique names on a shared bed; the plan does not depend on it
        self.namespaces = [f"soak-{self.run_id}-{i}" for i in range(cfg.namespaces)]
        self.lease_namespace = f"soak-{self.run_id}-system"
        self.hostile_namespace = f"soak-{self.run_id}-hostile"  # not a victim: the checker does not judge it
        # cluster apps (cluster.py): their tenants' namespaces; the apps' Secrets live in the Lease's namespace, the
        # operator's own (its cluster resource namespace, as POD_NAMESPACE would make it in a pod)
        self.tenant_namespaces = [f"soak-{self.run_id}-t{i}" for i in range(cfg.cluster_namespaces)] \
            if cfg.cluster_apps > 0 else []
        self.resource_namespace = self.lease_namespace
        self.crng = cluster_rng(cfg)
        self.cluster = _ClusterWorld()
        self.cluster_changes: list[tuple[float, str]] = []  # (wall clock, app client id) of each policy-side change
        # rotating certificates (rotating.py): their credentials in a namespace of their own
        self.rotation_namespaces = [f"soak-{self.run_id}-rot"] if cfg.rotating_apps > 0 else []
        self.rrng = rotation_rng(cfg)
        self.rotating = _RotationWorld()
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
        self.faults = _Faults(self)

    # --- bookkeeping ---------------------------------------------------------------------------------------
    @property
    def all_creds(self) -> list[_Cred]:
        """The namespaced credentials (the plan's indexes), the appRef ones and the rotating ones."""
        return self.creds + self.cluster.creds + self.rotating.creds

    @property
    def all_apps(self) -> list[_App]:
        return self.apps + self.spare + [a.app for a in self.cluster.apps] + [a.app for a in self.rotating.apps]

    def cluster_changed(self, app: _App) -> None:
        """A relabel, policy edit or deletion/re-creation of a cluster app was accepted by the apiserver."""
        with self.lock:
            self.cluster_changes.append((time.time(), app.client_id))

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
        self.cluster = build_cluster(self.cfg, self.crng, self.bed.issuer, self.tenant_namespaces,
                                     self.resource_namespace, f"soak-{self.run_id}")
        for a in self.cluster.apps:
            self.keys[a.key.ref] = a.key
        # their certificate Secrets are graphcred's to create: not in self.keys (the harness never writes them)
        self.rotating = build_rotating(self.cfg, self.rrng, self.bed.issuer, next(iter(self.rotation_namespaces), ""))
        self.by_ref = {c.ref: c for c in self.all_creds}

    def manifest(self, cred: _Cred) -> dict[str, Any]:
        if cred.cluster is not None:
            app_spec: dict[str, Any] = {"appRef": {"name": self.cluster.apps[cred.cluster].name},
                                        "scopes": [f"{cred.resource}/.default"]}
            return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": cred.name},
                    "spec": app_spec}
        ref = {"clientSecret": {"name": cred.key.name}} if cred.key.kind == "secret" else {
            "certificate": {"name": cred.key.name}}
        if cred.rotating is not None:
            ref = self.rotating.apps[cred.rotating].credential()
        spec: dict[str, Any] = {"tenantId": cred.app.tenant, "clientId": cred.app.client_id,
                                "authorityHost": self.bed.authority_host, "credential": ref,
                                "scopes": [f"{cred.resource}/.default"]}
        if cred.rbe:
            spec["refreshBeforeExpiry"] = cred.rbe
        if cred.require_roles:
            spec["requiredRoles"] = ["Mail.Read"]
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": cred.name}, "spec": spec}

    def _spaces(self) -> list[str]:
        return [*self.namespaces, self.lease_namespace, *self.tenant_namespaces, *self.rotation_namespaces] + (
            [self.hostile_namespace] if self.cfg.hostile else [])

    def create_objects(self) -> None:
        for ns in self._spaces():
            labels = self.cluster.labels.get(ns)
            self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns, labels=labels)))
        for key in self.keys.values():
            self.core.create_namespaced_secret(key.namespace, client.V1Secret(
                metadata=client.V1ObjectMeta(name=key.name), string_data=key.string_data(),
                type="Opaque" if key.kind == "secret" else "kubernetes.io/tls"))
        for app in self.cluster.apps:
            self.custom.create_cluster_custom_object(GROUP, VERSION, APP_PLURAL, app.manifest(self.bed.authority_host))
        for cred in self.all_creds:
            self.custom.create_namespaced_custom_object(GROUP, VERSION, cred.namespace, PLURAL, self.manifest(cred))

    def cleanup(self) -> None:
        for app in self.cluster.apps:  # cluster-scoped: not deleted with the namespaces
            with contextlib.suppress(Exception):
                self.custom.delete_cluster_custom_object(GROUP, VERSION, APP_PLURAL, app.name)
        for ns in self._spaces():
            with contextlib.suppress(Exception):
                self.bed.delete_namespace(ns)

    # --- running -------------------------------------------------------------------------------------------
    def run(self) -> SoakResult:
        started = time.monotonic()
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.build_world()
        plan = _Planner(self.cfg, self.rng, self.apps, self.creds, self.groups, self.spare).plan()
        plan = sorted(plan + plan_cluster(self.cfg, self.crng, self.cluster, self.tenant_namespaces)
                      + plan_rotation(self.cfg, self.rrng, self.rotating), key=lambda p: p.at)
        self._write_plan(plan)
        cluster_args = [f"--cluster-resource-namespace={self.resource_namespace}"] if self.cluster.apps else []
        self.replicas = _Replicas(self.bed, self.logdir, self.cfg, self.lease_namespace, *cluster_args,
                                  *self._hostile_setup())
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
            upload(self)  # the rotating certificates' one upload, as a person does it
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
        if self.cluster.apps:
            lines.append("cluster apps (index: name, client id, tenant, token lifetime, allowed Vault, selector):")
            lines += [f"  {a.index}: {a.name} {a.app.client_id} {a.app.tenant} {a.app.lifetime} s vault {a.vault} "
                      f"{a.selector}" for a in self.cluster.apps]
            lines.append("tenant namespaces (labels):")
            lines += [f"  {i}: {ns} {self.cluster.labels[ns]}" for i, ns in enumerate(self.tenant_namespaces)]
            lines.append("appRef credentials (namespace/name, cluster app, resource):")
            lines += [f"  {c.ref} app {c.cluster} {c.resource}" for c in self.cluster.creds]
        if self.rotating.apps:
            lines.append("rotating certificates (index: Secret, client id, object id, validity, renewBefore, "
                         "replication delay, reads itself, credentials):")
            lines += [f"  {a.index}: {a.key.ref} {a.app.client_id} {a.app.app.object_id} {a.validity} "
                      f"{a.renew_before} {a.replication_delay:g} s {a.reads_itself} "
                      + " ".join(c.ref for c in a.creds) for a in self.rotating.apps]
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
        self.base_requests = {a.client_id: self.bed.issuer.token_requests(a.client_id) for a in self.all_apps}
        self.api_base = apiserver_requests(self.bed)
        for cred in self.all_creds:
            self.assign(cred, cred.app)

    def _execute(self, plan: list[PlanItem]) -> None:
        queue = self._queue
        queue += [(p.at, i, self.faults.action(p), p.kind) for i, p in enumerate(plan)]
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

    # --- quiet phase and figures ---------------------------------------------------------------------------
    def _quiet(self) -> None:
        self.bed.issuer.heal()
        self.bed.graph.heal()  # Graph failures injected and not yet answered
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
        if self.rotating.apps:  # once quiet: no key on a rotating app that graphcred does not hold
            self.checker.rotation.final(self._read_secret)

    def _read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            resp = self.core.read_namespaced_secret(name, namespace, _preload_content=False, _request_timeout=10)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        found: dict[str, Any] = json.loads(resp.data)  # type: ignore[arg-type]
        return found

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
        self._cluster_figures()
        self._rotation_figures()

    def _rotation_figures(self) -> None:
        """Rotations completed per certificate Secret (removeKey that removed the key it replaced), Graph failures
        injected (answered), the longest renewal (first addKey -> removeKey)."""
        if not self.rotating.apps:
            return
        calls = self.bed.graph.key_calls()
        lines, failures, longest, completed = rotation_figures(self.rotating, calls)
        with contextlib.suppress(OSError):  # Graph's key log, for "when it fails"
            (self.logdir / "graph-key-calls.txt").write_text("".join(
                f"{c.time - self.t0:7.1f} s  {c.app_id} {c.op} {c.status} {c.outcome} keyId={c.key_id} "
                f"thumbprint={c.thumbprint} proof={c.proof_thumbprint}\n" for c in calls))
        self.result.rotation_lines, self.result.rotations = lines, completed
        self.result.graph_failures = failures
        self.result.longest_renewal = longest

    def _cluster_figures(self) -> None:
        """Revocations timed by the checker; each cluster app's token requests per refresh period (its users with
        the same scopes share one request: ideally one request per scope set and refresh, plus re-acquisitions after
        revocations and faults)."""
        if not self.cluster.apps:
            return
        self.result.revocations = self.checker.cluster.revocations
        self.result.restored_first = self.checker.cluster.restored_first
        seconds = max(time.time() - self.t0, 1.0)
        for app in self.cluster.apps:
            n = self.result.request_bounds.get(app.app.client_id, (0, 0.0))[0]
            users = [c for c in self.cluster.creds if c.cluster == app.index]
            periods = seconds / (app.app.lifetime / 2)
            self.result.cluster_apps.append(
                f"{app.name}: {len(users)} users, {len({c.resource for c in users})} scope sets, token lifetime "
                f"{app.app.lifetime} s: {n} token requests in {periods:.0f} refresh periods = {n / periods:.1f} per "
                "refresh")

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
            # a cluster app's relabel, policy edit or re-creation may withdraw and give back permission: a new token
            changes = sum(1 for t, app in self.cluster_changes if app == a.app and a.start <= t <= (a.end or now))
            # requests: each refresh due, one retry a second while broken, a re-acquisition after each restart
            requests_budget[a.app] = requests_budget.get(a.app, 0.0) + refreshes + retries + 2 * (restarts + changes)
            # Secret writes: only a new token is written, so failed attempts write nothing: each refresh due, one
            # success after each fault, one after each restart
            writes_budget += refreshes + hits + restarts + changes
        # rotating certificates: their renewals' own token requests and writes (rotating.allowance)
        extra = allowance(self.rotating, [c for c in self.bed.graph.key_calls() if c.time >= self.t0], now - self.t0)
        for client_id, (more_requests, more_writes, _) in extra.items():
            requests_budget[client_id] = requests_budget.get(client_id, 0.0) + more_requests
            writes_budget += more_writes
        total_requests = 0
        for app in self.all_apps:
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
        secret_bound = 2 * writes_budget + 2 * len(self.all_creds)
        status_bound = sum(requests_budget.values()) + 5 * len(self.all_creds) + sum(e[2] for e in extra.values())
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
        tenant = next(x.tenant for x in self.all_apps if x.client_id == a.app)
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


def run_soak(bed: Bed, cfg: SoakConfig, logdir: Path) -> SoakResult:
    """Run the soak on a started bed with the CRD installed (and no other operator running)."""
    return Soak(bed, cfg, logdir).run()


@contextlib.contextmanager
def own_bed(workdir: Path | None = None) -> Iterator[Bed]:
    from ..operator_process import install_crd

    with Bed(workdir) as bed:
        install_crd(bed)
        yield bed
