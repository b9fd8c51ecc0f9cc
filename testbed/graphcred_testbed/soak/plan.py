"""The fault plan: the whole schedule drawn up front from the seed (the same plan for the same config)."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..issuer import Issuer
from .config import SoakConfig
from .world import RESOURCES, _App, _Cred, _World

APP_FAULTS = ("throttle_json", "throttle_html", "server_error", "slow", "drop", "garbage")


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

def plan_for(cfg: SoakConfig, issuer: Issuer) -> list[PlanItem]:
    """The fault plan a config (and its seed) gives, without a bed: the same plan for the same config."""
    rng = random.Random(cfg.seed)
    from .cluster import build_cluster, cluster_rng, plan_cluster
    from .rotating import build_rotating, plan_rotation, rotation_rng

    world = _World(cfg, rng, issuer, [f"ns-{i}" for i in range(cfg.namespaces)]).build()
    plan = _Planner(cfg, rng, world.apps, world.creds, world.groups, world.spare).plan()
    tenants = [f"tn-{i}" for i in range(cfg.cluster_namespaces)]
    crng = cluster_rng(cfg)
    cluster = build_cluster(cfg, crng, issuer, tenants, "system", "soak")
    rrng = rotation_rng(cfg)
    rotating = build_rotating(cfg, rrng, issuer, "rot")
    return sorted(plan + plan_cluster(cfg, crng, cluster, tenants) + plan_rotation(cfg, rrng, rotating),
                  key=lambda p: p.at)

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
