"""What a soak found: the violations and the figures it prints (SoakResult.report)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..hostile import MIB, lateness_line, percentile
from .config import SoakConfig


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
    revocations: list[float] = field(default_factory=list)  # cluster apps: change -> token Secret gone (seconds)
    restored_first: int = 0  # permission given back before the token Secret was deleted
    cluster_apps: list[str] = field(default_factory=list)  # per cluster app: token requests per refresh
    rotation_lines: list[str] = field(default_factory=list)  # per rotating certificate Secret: rotations, renewals
    graph_failures: Counter[str] = field(default_factory=Counter)  # Graph key calls answered an injected failure
    rotations: Counter[str] = field(default_factory=Counter)  # certificate Secret -> rotations completed
    longest_renewal: float = 0.0  # seconds from a rotation's first addKey to its removeKey

    def report(self) -> str:
        c = self.config
        lines = [
            f"graphcred soak: seed {c.seed}, {c.minutes:g} min (faults {c.fault_seconds:.0f} s, quiet "
            f"{c.quiet_seconds:.0f} s), {c.credentials} credentials over {c.apps} apps in {c.tenants} tenants, "
            f"{c.namespaces} namespaces, 2 replicas; "
            + (f"{c.cluster_credentials} appRef credentials over {c.cluster_apps} cluster apps in "
               f"{c.cluster_namespaces} namespaces; " if c.cluster_apps > 0 else "")
            + (f"{c.rotating_apps} apps with rotating certificates; " if c.rotating_apps > 0 else "")
            + f"duration {self.duration:.0f} s (setup {self.setup_seconds:.0f} s)",
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
        if self.cluster_apps:
            r = self.revocations
            lines.append(f"cluster apps: revocations seen {len(r)} (permission withdrawn -> token Secret gone): "
                         f"p50 {percentile(r, 50):.1f} s, p99 {percentile(r, 99):.1f} s, max {max(r, default=0.0):.1f} "
                         f"s (grace {c.revoke_grace:g} s); given back before the Secret was deleted: "
                         f"{self.restored_first}")
            lines += [f"  {line}" for line in self.cluster_apps]
        if self.rotation_lines:
            failures = self.graph_failures
            lines.append(f"rotating certificates: Graph failures injected (answered) {sum(failures.values())} "
                         f"({_counts(failures)}); longest renewal (first addKey -> removeKey) "
                         f"{self.longest_renewal:.1f} s")
            lines += [f"  {line}" for line in self.rotation_lines]
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
