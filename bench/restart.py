"""Restart benchmark: N Ready credentials, then the operator killed and started again, and a leader change.

On a fresh bed: N credentials (K per app, as `bench scale`), tokens long-lived (an hour: all still valid when the
operator comes back), one operator until every credential is Ready. Then:
- restart: SIGKILL (a crash, an OOM kill, a node lost) and the same operator started again;
- leader change: two replicas electing a leader; the leader stopped with SIGTERM (a rollout: it releases the Lease
  at once), then the new leader killed with SIGKILL (its Lease must expire first).
For each: seconds from the signal until the operator that carries on has scheduled every credential again (its
`graphcred_credentials` metric counts N and none Pending: a first pass has run for each), token requests made
(the goal: none, every token is valid), apiserver requests by resource and verb, and that operator's peak RSS.
"""

from __future__ import annotations

import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client

from graphcred.api.keys import GROUP, PLURAL, VERSION
from graphcred_testbed.bed import Bed, wait_for
from graphcred_testbed.operator_process import OperatorProcess, install_crd

from .profile import Profile, profile_dir_for, summary
from .scale import CONCURRENCY, _apiserver_requests, _free_port, _proc_stats, _setup, samples

LEASE_NAMESPACE = "graphcred-system"
LEASE = "graphcred-leader"
PENDING = ("Unknown", "Pending")


@dataclass
class Phase:
    what: str
    scheduled: float = 0.0  # seconds from the signal until every credential had its first pass
    token_requests: int = 0
    api: Counter[tuple[str, str]] = field(default_factory=Counter)
    rss_mib: float = 0.0


class Operator:
    """An operator process on a port of its own (its /metrics read directly, not found in its log)."""

    def __init__(self, bed: Bed, logdir: Path, name: str, *args: str) -> None:
        self.port = _free_port()
        self.proc = OperatorProcess(bed, logdir, *args, f"--metrics-port={self.port}", name=name, log_level="INFO")

    @property
    def pid(self) -> int:
        popen = self.proc.process.popen
        assert popen is not None
        return popen.pid

    def credentials(self) -> Counter[tuple[str, str]] | None:
        """graphcred_credentials by (ready, reason) (("Unknown", "Pending"): no pass yet in this process); None if
        it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        counts: Counter[tuple[str, str]] = Counter()
        for labels, value in samples(text, "graphcred_credentials"):
            counts[(labels.get("ready", ""), labels.get("reason", ""))] += value
        return counts


def _wait_scheduled(op: Operator, n: int, since: float, timeout: float = 1800.0) -> float:
    """Seconds from `since` until the operator has scheduled every credential: its log has a "resuming" line for
    each (every token here is valid), or its /metrics count none Pending. /metrics is read every 5 s only: at
    10,000 credentials a scrape costs the operator a good part of a second, and scraping twice a second took a
    third of its time (py-spy) and slowed what is measured."""
    last_scrape = time.monotonic()

    def scheduled() -> bool:
        nonlocal last_scrape
        if op.proc.logs(this_run=True).count("resuming ") >= n:
            return True
        if time.monotonic() - last_scrape < 5.0:
            return False
        last_scrape = time.monotonic()
        counts = op.credentials()
        return counts is not None and sum(counts.values()) >= n and counts[PENDING] == 0

    wait_for(scheduled, timeout=timeout, interval=0.5, what=f"{n} credentials scheduled by the operator")
    return time.monotonic() - since


def _create(bed: Bed, spaces: list[tuple[str, str, str, str]], n: int, per_app: int) -> None:
    def create(i: int) -> None:
        ns, tenant, client_id, _ = spaces[i // per_app]
        bed.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "GraphAppCredential", "metadata": {"name": f"c{i}"},
            "spec": {"tenantId": tenant, "clientId": client_id, "authorityHost": bed.authority_host,
                     "credential": {"clientSecret": {"name": "app"}}}})

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(create, range(n)))


def _all_ready(op: Operator, n: int) -> bool:
    counts = op.credentials()
    return counts is not None and sum(c for (ready, _), c in counts.items() if ready == "True") >= n


def _phase(what: str, bed: Bed, n: int, signal_it: Callable[[], None], carrying_on: Callable[[], Operator],
           profile: Path | None) -> Phase:
    """Count from just before `signal_it()` until `carrying_on()` (the operator that carries on, started by then
    or by signal_it) has scheduled every credential."""
    phase = Phase(what)
    tokens0, api0 = bed.issuer.token_requests(), _apiserver_requests(bed)
    t0 = time.monotonic()
    signal_it()
    op = carrying_on()
    prof = Profile(op.pid, profile) if profile else None
    phase.scheduled = _wait_scheduled(op, n, t0)
    if prof is not None:
        prof.stop()
    time.sleep(2.0)  # requests of the last passes, counted by the apiserver as they end
    phase.token_requests = bed.issuer.token_requests() - tokens0
    phase.api = _apiserver_requests(bed) - api0
    phase.rss_mib = _proc_stats(op.pid)[1]
    return phase


def run(n: int, per_app: int, lifetime: int, profile_dir: Path | None) -> list[Phase]:
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory() as d, Bed(Path(d)) as bed:
        logdir = Path(d)
        install_crd(bed)
        bed.create_namespace(LEASE_NAMESPACE)
        spaces = _setup(bed, n, per_app, lifetime)
        first = Operator(bed, logdir, "op")
        first.proc.start()
        t0 = time.monotonic()
        _create(bed, spaces, n, per_app)
        wait_for(lambda: _all_ready(first, n), timeout=1800, interval=1.0, what=f"{n} credentials Ready")
        print(f"bench: {n} credentials Ready in {time.monotonic() - t0:.0f} s", flush=True)

        def restarted() -> Operator:
            first.proc.start()
            return first

        phases.append(_phase("restart (SIGKILL, started again)", bed, n, first.proc.kill, restarted,
                             profile_dir / "restart.raw" if profile_dir else None))
        first.proc.stop()

        election = ("--leader-election", f"--leader-election-namespace={LEASE_NAMESPACE}")
        replicas = [Operator(bed, logdir, f"replica-{i}", *election) for i in range(2)]
        try:
            for r in replicas:
                r.proc.start()

            def leader() -> Operator:
                holder = client.CoordinationV1Api(bed.api).read_namespaced_lease(LEASE, LEASE_NAMESPACE)
                identity = holder.spec.holder_identity or ""
                return next(r for r in replicas if str(r.pid) in identity)

            def holder_scheduled() -> bool:
                try:
                    op = leader()
                except (client.ApiException, StopIteration):
                    return False
                counts = op.credentials()
                return counts is not None and sum(counts.values()) == n and counts[PENDING] == 0

            wait_for(holder_scheduled, timeout=1800, interval=1.0, what="a leader with every credential scheduled")
            old = leader()
            new = next(r for r in replicas if r is not old)
            phases.append(_phase("leader change (leader SIGTERM: Lease released)", bed, n, old.proc.stop,
                                 lambda: new, profile_dir / "leader-sigterm.raw" if profile_dir else None))
            old.proc.start()  # a standby again
            wait_for(lambda: old.credentials() is not None, timeout=60, what="the restarted replica serving")
            phases.append(_phase("leader change (leader SIGKILL: Lease expires)", bed, n, new.proc.kill,
                                 lambda: old, profile_dir / "leader-sigkill.raw" if profile_dir else None))
        finally:
            for r in replicas:
                r.proc.stop()
    return phases


def main(ns: list[int], per_app: list[int], lifetime: int, profile_dir: Path | None) -> None:
    for n in ns:
        for k in per_app:
            print(f"bench: restart, N={n}, {k} per app ...", flush=True)
            where = profile_dir_for(profile_dir, "restart", n, k)
            phases = run(n, k, lifetime, where)
            print(f"\n| N={n}, {k} per app | " + " | ".join(p.what for p in phases) + " |")
            print("|---|" + "---|" * len(phases))
            rows = [
                ("every credential scheduled again (from the signal)", [f"{p.scheduled:.1f} s" for p in phases]),
                ("token requests", [str(p.token_requests) for p in phases]),
                ("apiserver requests (per credential)",
                 [f"{sum(p.api.values())} ({sum(p.api.values()) / n:.2f})" for p in phases]),
                ("peak RSS of the operator carrying on", [f"{p.rss_mib:.0f} MiB" for p in phases]),
            ]
            for label, cells in rows:
                print(f"| {label} | " + " | ".join(cells) + " |")
            keys = sorted({key for p in phases for key in p.api})
            for resource, verb in keys:
                if all(p.api.get((resource, verb), 0) / n < 0.0005 for p in phases):
                    continue  # the control plane's own watches and the like: none per credential
                cells = [f"{p.api.get((resource, verb), 0) / n:.3f}" for p in phases]
                print(f"| apiserver {resource} {verb} per credential | " + " | ".join(cells) + " |")
            if where:
                for p in sorted(where.glob("*.raw")):
                    print(summary(p))
