"""Scale benchmark: N GraphAppCredentials on the real bed, against the bare cost of the job.

For each N: a fresh bed; N/10 namespaces, each with its own Entra app and client-secret Secret, and ten
credentials using it. Reports
- convergence: first create until every credential is Ready (its Secret written);
- the bare job in the same run: an asyncio script doing N token requests (msal, a fresh client each) and N Secret
  creates with the same concurrency; and the ratio;
- token requests and apiserver requests per credential;
- create-to-Ready latency p50/p99 (seen by a watch);
- steady state over several refresh cycles of short-lived tokens: operator CPU seconds, token requests and Secret
  writes per refresh;
- operator peak RSS.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import statistics
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import msal
from kubernetes import client, watch

from graphcred.httpsession import PinnedCASession
from graphcred.model import GROUP, PLURAL, VERSION
from graphcred_testbed.bed import Bed, wait_for
from graphcred_testbed.operator_process import OperatorProcess, install_crd

PER_NAMESPACE = 10
CONCURRENCY = 16
GRAPH = "https://graph.microsoft.com/.default"


@dataclass
class Result:
    n: int
    converge: float = 0.0
    bare: float = 0.0
    token_requests: int = 0
    api_requests: int = 0
    latencies: list[float] = field(default_factory=list)
    steady_window: float = 0.0
    steady_cpu: float = 0.0
    steady_token_requests: int = 0
    steady_secret_writes: int = 0
    steady_status_patches: int = 0
    lifetime: int = 0
    rss_mib: float = 0.0

    def rows(self) -> list[tuple[str, str]]:
        lat = sorted(self.latencies)
        p50 = statistics.median(lat) if lat else float("nan")
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")
        refreshes = self.steady_secret_writes or 1
        return [
            ("credentials", f"{self.n}"),
            ("convergence (all Ready)", f"{self.converge:.1f} s"),
            ("bare asyncio job (N tokens + N Secrets)", f"{self.bare:.1f} s"),
            ("ratio operator / bare", f"{self.converge / self.bare:.2f}x"),
            ("token requests per credential", f"{self.token_requests / self.n:.2f}"),
            ("apiserver requests per credential (incl. the bench's create)", f"{self.api_requests / self.n:.2f}"),
            ("create-to-Ready latency p50 / p99", f"{p50 * 1000:.0f} ms / {p99 * 1000:.0f} ms"),
            ("steady state: window, token lifetime", f"{self.steady_window:.0f} s, {self.lifetime} s"),
            ("steady state: operator CPU seconds",
             f"{self.steady_cpu:.1f} s ({100 * self.steady_cpu / max(self.steady_window, 1):.0f}% of a core)"),
            ("steady state: Secret writes (refreshes)", f"{self.steady_secret_writes}"),
            ("steady state: token requests per refresh", f"{self.steady_token_requests / refreshes:.2f}"),
            ("steady state: status patches per refresh", f"{self.steady_status_patches / refreshes:.2f}"),
            ("operator peak RSS", f"{self.rss_mib:.0f} MiB"),
        ]


def _apiserver_requests(bed: Bed) -> Counter[tuple[str, str]]:
    """apiserver_request_total summed by (resource, verb), from the apiserver's own /metrics."""
    pki = bed.control_plane.dir / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(pki / "admin.crt", pki / "admin.key")
    with urllib.request.urlopen(f"{bed.control_plane.server}/metrics", context=ctx, timeout=30) as resp:
        text = resp.read().decode()
    counts: Counter[tuple[str, str]] = Counter()
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            counts[(labels.get("resource", ""), labels.get("verb", ""))] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def _proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS MiB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = 100.0
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    status = Path(f"/proc/{pid}/status").read_text()
    hwm = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    return cpu, hwm / 1024


def _setup(bed: Bed, n: int, lifetime: int) -> list[tuple[str, str, str, str]]:
    """Namespaces, apps and credential Secrets. Returns (namespace, tenant, client id, secret) per namespace."""
    spaces = []
    for i in range((n + PER_NAMESPACE - 1) // PER_NAMESPACE):
        ns = f"bench-{i}"
        bed.create_namespace(ns)
        tenant = str(uuid.uuid4())
        secret = f"bench-secret-{uuid.uuid4().hex}"
        app = bed.issuer.register_app(tenant, secret=secret, lifetime=lifetime)
        bed.core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name="app"),
                                                              string_data={"clientSecret": secret}))
        spaces.append((ns, tenant, app.client_id, secret))
    return spaces


async def _bare(bed: Bed, spaces: list[tuple[str, str, str, str]], n: int) -> float:
    """The job without an operator: N token requests and N Secret creates, CONCURRENCY at a time."""
    session = PinnedCASession(str(bed.issuer_ca_file))
    pool = ThreadPoolExecutor(CONCURRENCY)
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(CONCURRENCY)

    def token(tenant: str, client_id: str, secret: str) -> str:
        app = msal.ConfidentialClientApplication(client_id, client_credential=secret,
                                                 authority=f"{bed.authority_host}/{tenant}",
                                                 instance_discovery=False, http_client=session,
                                                 token_cache=msal.TokenCache())
        return str(app.acquire_token_for_client([GRAPH])["access_token"])

    def write(ns: str, name: str, tok: str) -> None:
        bed.core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name=name),
                                                              string_data={"access_token": tok}))

    async def one(i: int) -> None:
        ns, tenant, client_id, secret = spaces[i // PER_NAMESPACE]
        async with slots:
            tok = await loop.run_in_executor(pool, token, tenant, client_id, secret)
            await loop.run_in_executor(pool, write, ns, f"bare-{i}", tok)

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    pool.shutdown()
    return time.monotonic() - t0


def run_one(n: int, lifetime: int, steady: float) -> Result:
    result = Result(n=n, lifetime=lifetime)
    with tempfile.TemporaryDirectory() as d, Bed(Path(d)) as bed:
        install_crd(bed)
        spaces = _setup(bed, n, lifetime)
        result.bare = asyncio.run(_bare(bed, spaces, n))
        before_tokens = bed.issuer.token_requests()
        with OperatorProcess(bed, Path(d), log_level="WARNING") as op:
            wait_for(lambda: "Initial authentication" in op.logs() or op.process.alive(), timeout=30)
            time.sleep(2)  # let it finish starting: the bench measures work, not interpreter start-up
            api_before = _apiserver_requests(bed)
            created: dict[str, float] = {}
            ready: dict[str, float] = {}
            done = threading.Event()

            def watcher() -> None:
                w = watch.Watch()
                for event in w.stream(bed.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                                      timeout_seconds=600):
                    obj = event["object"]
                    key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
                    conds = (obj.get("status") or {}).get("conditions") or []
                    if key not in ready and conds and conds[0]["status"] == "True":
                        ready[key] = time.monotonic()
                        if len(ready) >= n:
                            w.stop()
                            done.set()

            t = threading.Thread(target=watcher, daemon=True)
            t.start()
            time.sleep(0.5)

            def create(i: int) -> None:
                ns, tenant, client_id, _ = spaces[i // PER_NAMESPACE]
                name = f"c{i}"
                created[f"{ns}/{name}"] = time.monotonic()
                bed.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, {
                    "apiVersion": f"{GROUP}/{VERSION}", "kind": "GraphAppCredential", "metadata": {"name": name},
                    "spec": {"tenantId": tenant, "clientId": client_id, "authorityHost": bed.authority_host,
                             "credential": {"clientSecret": {"name": "app"}}}})

            t0 = time.monotonic()
            with ThreadPoolExecutor(CONCURRENCY) as pool:
                list(pool.map(create, range(n)))
            done.wait(900)
            result.converge = max(ready.values()) - t0
            result.latencies = [ready[k] - created[k] for k in created if k in ready]
            result.token_requests = bed.issuer.token_requests() - before_tokens
            api_after = _apiserver_requests(bed)
            result.api_requests = sum((api_after - api_before).values()) - 0
            # steady state: several refresh cycles with the operator alone
            pid = op.process.popen.pid  # type: ignore[union-attr]
            cpu0, _ = _proc_stats(pid)
            tok0, api0 = bed.issuer.token_requests(), _apiserver_requests(bed)
            time.sleep(steady)
            cpu1, rss = _proc_stats(pid)
            api1 = _apiserver_requests(bed)
            result.steady_window = steady
            result.steady_cpu = cpu1 - cpu0
            result.steady_token_requests = bed.issuer.token_requests() - tok0
            result.steady_secret_writes = api1[("secrets", "PUT")] - api0[("secrets", "PUT")]
            result.steady_status_patches = api1[("graphappcredentials", "PATCH")] - \
                api0[("graphappcredentials", "PATCH")]
            result.rss_mib = rss
    return result


def main(ns: list[int], lifetime: int, steady: float, out: Path | None) -> None:
    results = []
    for n in ns:
        print(f"bench: N={n} ...", flush=True)
        results.append(run_one(n, lifetime, steady))
    header = ["metric", *[f"N={r.n}" for r in results]]
    rows = [r.rows() for r in results]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, (label, _) in enumerate(rows[0]):
        table.append("| " + " | ".join([label, *[r[i][1] for r in rows]]) + " |")
    text = "\n".join(table)
    print(text)
    if out:
        out.write_text(text + "\n" + json.dumps([r.__dict__ | {"latencies": None} for r in results]) + "\n")
