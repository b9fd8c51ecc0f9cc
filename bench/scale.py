"""Scale benchmark: N GraphAppCredentials on the real bed, against the bare cost of the job.

For each N and each K (`--per-app`): a fresh bed; N/K namespaces, each with its own Entra app and client-secret
Secret, and K credentials using it (K=1, the default: every credential its own app, as in most clusters; K=10: ten
credentials share an app, so they share token requests and credential reads). Reports
- convergence: first create until every credential is Ready (its Secret written);
- the bare job in the same run: an asyncio script doing N token requests (msal, a fresh client each) and N Secret
  creates with the same concurrency; and the ratio;
- the same work done by hand, in the same run: an asyncio script doing for each credential what the operator must
  (read the credential Secret, acquire the token, create the token Secret as graphcred renders it, patch the
  GraphAppCredential's status, post an Event) with the same concurrency, on shadow GraphAppCredentials created
  before and removed after it (outside the time measured); and the ratio, the honest limit of the operator's own
  overhead (four apiserver requests per credential are the contract's floor: issue 29);
- token requests and apiserver requests per credential, and the apiserver requests by resource and verb;
- create-to-Ready latency p50/p99 (seen by a watch);
- steady state over several refresh cycles of short-lived tokens: operator CPU seconds, token requests and Secret
  writes per refresh. The tokens' lifetime grows with N (`lifetime_for`: 30 s per 1,000 credentials, at least 30 s),
  so that every N asks the bed for the same refresh rate (about 67 a second at half the lifetime): 10,000 tokens of
  30 s would need 667 refreshes a second, several times what the bed serves (the same-work script does about 100
  credentials a second at 10,000), and the burst would measure a bed that cannot keep up, not the operator's
  overhead (`--lifetime 30` still measures that). The window is at least half a lifetime, so that every credential
  refreshes in it. Counted per refresh, not as totals over the window: after a burst the credentials refresh in
  waves, and a wave in flight at the window's edge has its token requests counted (the issuer counts on arrival)
  but not yet its Secret writes (seconds later under load), which read as extra token requests where there were
  none. So each token request in the window is paired with the Secret writes of its app that follow it (seen by a
  watch, until the app's next token request, or a few seconds past the window): a refresh is a token request
  followed by writes; a token request followed by none is an extra one;
- operator peak RSS.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import json
import os
import re
import socket
import ssl
import statistics
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msal
from kubernetes import client, watch
from kubernetes.watch.watch import iter_resp_lines

from graphcred.acquire.httpsession import PinnedCASession
from graphcred.api.keys import GROUP, MANAGED_BY_LABEL, PLURAL, VERSION
from graphcred.kube.metawatch import METADATA_ONLY_WATCH
from graphcred_testbed.bed import Bed, wait_for
from graphcred_testbed.operator_process import OperatorProcess, install_crd

from .profile import Profile, profile_dir_for, summary

CONCURRENCY = 16
SETTLE = 10.0  # seconds past the steady window for the writes of refreshes in flight at its end
GRAPH = "https://graph.microsoft.com/.default"


@dataclass
class Result:
    n: int
    per_app: int = 1
    converge: float = 0.0
    bare: float = 0.0
    same_work: float = 0.0  # the same work by hand (read, token, Secret, status, Event)
    same_work_cpu: float = 0.0  # that script's own CPU seconds (this process's, while it ran)
    token_requests: int = 0
    api_requests: int = 0
    api_breakdown: dict[str, int] = field(default_factory=dict)  # "resource[/subresource] VERB" -> requests
    latencies: list[float] = field(default_factory=list)
    converge_cpu: float = 0.0  # operator CPU seconds from the first create until all Ready
    steady_window: float = 0.0
    steady_cpu: float = 0.0
    steady_token_requests: int = 0
    steady_unused_requests: int = 0  # token requests no Secret write of their app followed
    steady_secret_writes: int = 0  # seen by a watch
    steady_writes_missed: str = ""  # why the watch of writes stopped early (then the writes counted are too few)
    steady_write_requests: int = 0  # Secret PATCH/PUT requests counted by the apiserver (conflicts included)
    steady_status_patches: int = 0
    lifetime: int = 0
    rss_mib: float = 0.0
    events_lost: dict[str, int] = field(default_factory=dict)  # graphcred_events_lost_total by why, after converging
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average when the run began and when it ended

    def rows(self) -> list[tuple[str, str]]:
        lat = sorted(self.latencies)
        p50 = statistics.median(lat) if lat else float("nan")
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")
        refreshes = self.steady_secret_writes or 1
        return [
            ("credentials", f"{self.n} ({self.per_app} per app)"),
            ("convergence (all Ready)", f"{self.converge:.1f} s"),
            ("bare asyncio job (N tokens + N Secrets)", f"{self.bare:.1f} s"),
            ("ratio operator / bare", f"{self.converge / self.bare:.2f}x"),
            ("same work by hand (read, token, Secret, status, Event)",
             f"{self.same_work:.1f} s ({1000 * self.same_work_cpu / self.n:.1f} ms CPU per credential)"),
            ("ratio operator / same work", f"{self.converge / max(self.same_work, 0.001):.2f}x"),
            ("operator CPU per new credential", f"{1000 * self.converge_cpu / self.n:.1f} ms"),
            ("operator CPU seconds while converging",
             f"{self.converge_cpu:.1f} s ({100 * self.converge_cpu / max(self.converge, 0.1):.0f}% of a core)"),
            ("token requests per credential", f"{self.token_requests / self.n:.2f}"),
            ("apiserver requests per credential (incl. the bench's create)", f"{self.api_requests / self.n:.2f}"),
            ("... of them the operator's (all but the bench's create)", f"{self.api_requests / self.n - 1:.2f}"),
            ("create-to-Ready latency p50 / p99", f"{p50 * 1000:.0f} ms / {p99 * 1000:.0f} ms"),
            ("steady state: window, token lifetime", f"{self.steady_window:.0f} s, {self.lifetime} s"),
            ("steady state: operator CPU seconds",
             f"{self.steady_cpu:.1f} s ({100 * self.steady_cpu / max(self.steady_window, 1):.0f}% of a core)"),
            ("steady state: Secret writes (refreshes)", f"{self.steady_secret_writes}" + (
                f" INCOMPLETE: the watch of writes stopped ({self.steady_writes_missed})"
                if self.steady_writes_missed else "")),
            ("steady state: token requests per refresh of an app (1 token, per_app writes)",
             f"{self.steady_token_requests / max(self.steady_token_requests - self.steady_unused_requests, 1):.2f} "
             f"({self.steady_unused_requests} of {self.steady_token_requests} wrote nothing)"),
            ("steady state: operator CPU per refresh", f"{1000 * self.steady_cpu / refreshes:.1f} ms"),
            ("steady state: Secret write requests per refresh", f"{self.steady_write_requests / refreshes:.2f}"),
            ("steady state: status patches per refresh", f"{self.steady_status_patches / refreshes:.2f}"),
            ("Events posted while converging / lost (by why)",
             f"{self.api_breakdown.get('events POST', 0)} / {sum(self.events_lost.values())} "
             f"{dict(self.events_lost) if self.events_lost else ''}".rstrip()),
            ("operator peak RSS", f"{self.rss_mib:.0f} MiB"),
            ("load average (1 min), start / end", f"{self.load[0]:.1f} / {self.load[1]:.1f}"),
        ]


def samples(text: str, name: str) -> Iterator[tuple[dict[str, str], int]]:
    """The samples of metric `name` in a Prometheus text exposition: (labels, value as a whole number)."""
    for labels, value in re.findall(rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)$", text, re.M):
        yield dict(re.findall(r'(\w+)="([^"]*)"', labels)), int(float(value))


def _apiserver_requests(bed: Bed) -> Counter[tuple[str, str]]:
    """apiserver_request_total summed by (resource[/subresource], verb), from the apiserver's own /metrics."""
    pki = bed.control_plane.dir / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(pki / "admin.crt", pki / "admin.key")
    with urllib.request.urlopen(f"{bed.control_plane.server}/metrics", context=ctx, timeout=30) as resp:
        text = resp.read().decode()
    counts: Counter[tuple[str, str]] = Counter()
    for labels, value in samples(text, "apiserver_request_total"):
        resource = "/".join(part for part in (labels.get("resource", ""), labels.get("subresource", "")) if part)
        counts[(resource, labels.get("verb", ""))] += value
    return counts


def _proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS MiB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = 100.0
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    status = Path(f"/proc/{pid}/status").read_text()
    hwm = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    return cpu, hwm / 1024


def _setup(bed: Bed, n: int, per_app: int, lifetime: int) -> list[tuple[str, str, str, str]]:
    """Namespaces, apps and credential Secrets, one of each per `per_app` credentials. Returns (namespace, tenant,
    client id, secret) per namespace, once the controller-manager has finished its work on the new namespaces
    (their default ServiceAccounts), so that none of it falls into what is measured."""
    def space(i: int) -> tuple[str, str, str, str]:
        ns = f"bench-{i}"
        bed.create_namespace(ns)
        tenant = str(uuid.uuid4())
        secret = f"bench-secret-{uuid.uuid4().hex}"
        app = bed.issuer.register_app(tenant, secret=secret, lifetime=lifetime)
        bed.core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name="app"),
                                                              string_data={"clientSecret": secret}))
        return ns, tenant, app.client_id, secret

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        spaces = list(pool.map(space, range((n + per_app - 1) // per_app)))

    def accounts_made() -> bool:
        listed = bed.core.list_service_account_for_all_namespaces(field_selector="metadata.name=default")
        return sum(1 for sa in listed.items if sa.metadata.namespace.startswith("bench-")) >= len(spaces)

    wait_for(accounts_made, timeout=600, interval=1.0, what="the default ServiceAccount in every bench namespace")
    return spaces


def _token(bed: Bed, session: PinnedCASession, tenant: str, client_id: str, secret: str) -> dict[str, Any]:
    """msal's answer to one client-credentials request, from a fresh client (no cache), as the operator asks."""
    app = msal.ConfidentialClientApplication(client_id, client_credential=secret,
                                             authority=f"{bed.authority_host}/{tenant}", instance_discovery=False,
                                             http_client=session, token_cache=msal.TokenCache())
    return dict(app.acquire_token_for_client([GRAPH]))


async def _bare(bed: Bed, spaces: list[tuple[str, str, str, str]], n: int, per_app: int) -> float:
    """The job without an operator: N token requests and N Secret creates, CONCURRENCY at a time."""
    session = PinnedCASession(str(bed.issuer_ca_file), authority_hosts=[bed.authority_host])
    pool = ThreadPoolExecutor(CONCURRENCY)
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(CONCURRENCY)

    def token(tenant: str, client_id: str, secret: str) -> str:
        return str(_token(bed, session, tenant, client_id, secret)["access_token"])

    def write(ns: str, name: str, tok: str) -> None:
        bed.core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name=name),
                                                              string_data={"access_token": tok}))

    async def one(i: int) -> None:
        ns, tenant, client_id, secret = spaces[i // per_app]
        async with slots:
            tok = await loop.run_in_executor(pool, token, tenant, client_id, secret)
            await loop.run_in_executor(pool, write, ns, f"bare-{i}", tok)

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    pool.shutdown()
    return time.monotonic() - t0


def _same_work(bed: Bed, spaces: list[tuple[str, str, str, str]], n: int, per_app: int) -> tuple[float, float]:
    """What the operator must do for each new credential, by hand, CONCURRENCY at a time: read the credential
    Secret, acquire the token (msal, a fresh client), create the token Secret (graphcred's keys, label and owner),
    merge-patch the status (a Ready condition and the token's fields), post an Event. On shadow GraphAppCredentials
    (`sw-I`) made before and deleted with their Secrets after, outside the time measured; no operator runs then.
    Returns (seconds, this process's CPU seconds while it ran)."""
    custom = bed.custom
    uids: dict[int, str] = {}

    def shadow(i: int) -> None:
        ns, tenant, client_id, _ = spaces[i // per_app]
        made = custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "GraphAppCredential",
            "metadata": {"name": f"sw-{i}", "labels": {"bench": "same-work"}},
            "spec": {"tenantId": tenant, "clientId": client_id, "authorityHost": bed.authority_host,
                     "credential": {"clientSecret": {"name": "app"}}}})
        uids[i] = made["metadata"]["uid"]

    with ThreadPoolExecutor(CONCURRENCY) as setup:
        list(setup.map(shadow, range(n)))
    session = PinnedCASession(str(bed.issuer_ca_file), authority_hosts=[bed.authority_host])
    pool = ThreadPoolExecutor(CONCURRENCY)
    core = bed.core

    def one(i: int) -> None:
        ns, tenant, client_id, _ = spaces[i // per_app]
        name = f"sw-{i}"
        secret = core.read_namespaced_secret("app", ns)
        answer = _token(bed, session, tenant, client_id, base64.b64decode(secret.data["clientSecret"]).decode())
        token, expires_in = str(answer["access_token"]), int(answer["expires_in"])
        now = time.time()
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + expires_in))
        issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        core.create_namespaced_secret(ns, client.V1Secret(
            metadata=client.V1ObjectMeta(name=f"{name}-token", labels={MANAGED_BY_LABEL: "bench-same-work"},
                                         owner_references=[client.V1OwnerReference(
                                             api_version=f"{GROUP}/{VERSION}", kind="GraphAppCredential",
                                             name=name, uid=uids[i], controller=True)]),
            string_data={"access_token": token, "token_type": "Bearer", "expires_on": expires,
                         "authorization": f"Bearer {token}"}))
        custom.patch_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, name, {"status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "TokenIssued",
                            "message": f"token in Secret {name}-token valid until {expires}",
                            "lastTransitionTime": issued, "observedGeneration": 1}],
            "observedGeneration": 1, "secretName": f"{name}-token", "expiresOn": expires, "lastRefreshTime": issued,
            "refreshAt": expires, "consecutiveFailures": 0}})
        core.create_namespaced_event(ns, client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{name}."),
            involved_object=client.V1ObjectReference(api_version=f"{GROUP}/{VERSION}", kind="GraphAppCredential",
                                                     name=name, namespace=ns, uid=uids[i]),
            reason="TokenIssued", message=f"token in Secret {name}-token valid until {expires}", type="Normal",
            source=client.V1EventSource(component="bench-same-work"), first_timestamp=None))

    async def run() -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(CONCURRENCY)

        async def each(i: int) -> None:
            async with slots:
                await loop.run_in_executor(pool, one, i)

        await asyncio.gather(*(each(i) for i in range(n)))

    cpu0, t0 = time.process_time(), time.monotonic()
    asyncio.run(run())
    elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
    pool.shutdown()

    def clean(space: tuple[str, str, str, str]) -> None:
        ns = space[0]
        custom.delete_collection_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, label_selector="bench=same-work")
        core.delete_collection_namespaced_secret(ns, label_selector=f"{MANAGED_BY_LABEL}=bench-same-work")

    with ThreadPoolExecutor(CONCURRENCY) as setup:
        list(setup.map(clean, spaces))

    def gone() -> bool:
        left = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, label_selector="bench=same-work", limit=1)
        return not left["items"]

    wait_for(gone, timeout=600, interval=1.0, what="the shadow credentials deleted")
    return elapsed, cpu


class _SecretWrites:
    """Watches the token Secrets (graphcred's label; metadata only) and notes when each was written: (namespace,
    time). The apiserver ends the watches of slow readers: the stream is resumed from the last resourceVersion seen
    (the kubernetes client's Watch, undeserialized, resumes from the first one and counts every write again, and
    fails on an ERROR event with a KeyError). A watch that cannot go on (410 Gone, a failed request) notes why in
    `failure`: the writes after it are not seen."""

    def __init__(self, bed: Bed) -> None:
        self.bed = bed
        self.writes: list[tuple[str, float]] = []
        self.failure: str | None = None
        self._stop = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._selector = f"{MANAGED_BY_LABEL}=graphcred"

    def start(self) -> None:
        listed = self.bed.core.list_secret_for_all_namespaces(label_selector=self._selector, limit=1)
        self._version = listed.metadata.resource_version
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._follow()
        except Exception as exc:  # noted for the table (its type and HTTP status, never a body)
            if not self._stop.is_set():
                status = getattr(exc, "status", None)
                self.failure = str(exc) if isinstance(exc, RuntimeError) else f"{type(exc).__name__} {status or ''}"
                self.failure = self.failure.rstrip()

    def _follow(self) -> None:
        self._response = response = self.bed.core.list_secret_for_all_namespaces(
            label_selector=self._selector, watch=True, resource_version=self._version, allow_watch_bookmarks=True,
            _preload_content=False, _headers={"Accept": METADATA_ONLY_WATCH})
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if self._stop.is_set():
                    return
                if not line:
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    raise RuntimeError(f"ERROR event {obj.get('code')} {obj.get('reason') or ''}".rstrip())
                self._version = obj["metadata"]["resourceVersion"]
                if event["type"] == "MODIFIED":
                    self.writes.append((obj["metadata"]["namespace"], time.monotonic()))
        finally:
            self._response = None
            response.release_conn()

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):  # best effort: the stream also ends at its next event
                response.shutdown()
        self._thread.join(timeout=5)


def _unused_requests(requests: list[tuple[str, float]], writes: list[tuple[str, float]], app_of: dict[str, str],
                     window: tuple[float, float]) -> tuple[int, int]:
    """(token requests in the window, how many of them no write of their app's Secrets followed before the app's
    next token request). `requests` and `writes` run past the window's end: the refreshes in flight there."""
    by_app: dict[str, list[float]] = defaultdict(list)
    for client_id, at in requests:
        by_app[client_id].append(at)
    written: dict[str, list[float]] = defaultdict(list)
    for namespace, at in writes:
        written[app_of[namespace]].append(at)
    counted = unused = 0
    for client_id, times in by_app.items():
        times.sort()
        stamps = sorted(written[client_id])
        for i, at in enumerate(times):
            if not window[0] <= at <= window[1]:
                continue
            counted += 1
            following = bisect.bisect_right(stamps, at)
            until = times[i + 1] if i + 1 < len(times) else float("inf")
            if following == len(stamps) or stamps[following] >= until:
                unused += 1
    return counted, unused


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _events_lost(port: int) -> dict[str, int]:
    """The operator's graphcred_events_lost_total by why."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    # each why is exposed at 0 from the start
    return {labels["why"]: n for labels, n in samples(text, "graphcred_events_lost_total") if n}


def _secret_writes(counts: Counter[tuple[str, str]]) -> int:
    return counts[("secrets", "PATCH")] + counts[("secrets", "PUT")]  # a refresh patches; PUT: older operators


def _events_posted(bed: Bed, before: Counter[tuple[str, str]], n: int, quiet: float = 15.0,
                   deadline: float = 300.0) -> Counter[tuple[str, str]]:
    """Event requests since `before`, once N Events were created or none came for `quiet` seconds (some may be
    dropped by the operator's bounded queue)."""
    def events() -> Counter[tuple[str, str]]:
        return Counter({key: count for key, count in (_apiserver_requests(bed) - before).items() if key[0] == "events"})

    end, last, counts, since = time.monotonic() + deadline, -1, events(), time.monotonic()
    while counts[("events", "POST")] < n and time.monotonic() < end and time.monotonic() - since < quiet:
        time.sleep(0.5)
        counts = events()
        if counts[("events", "POST")] != last:
            last, since = counts[("events", "POST")], time.monotonic()
    return counts


def run_one(n: int, per_app: int, lifetime: int, steady: float, profile_dir: Path | None = None) -> Result:
    result = Result(n=n, per_app=per_app, lifetime=lifetime)
    result.load = (os.getloadavg()[0], 0.0)
    with tempfile.TemporaryDirectory() as d, Bed(Path(d)) as bed:
        install_crd(bed)
        spaces = _setup(bed, n, per_app, lifetime)
        result.bare = asyncio.run(_bare(bed, spaces, n, per_app))
        result.same_work, result.same_work_cpu = _same_work(bed, spaces, n, per_app)
        before_tokens = bed.issuer.token_requests()
        port = _free_port()
        with OperatorProcess(bed, Path(d), f"--metrics-port={port}", log_level="WARNING") as op:
            wait_for(lambda: "Initial authentication" in op.logs() or op.process.alive(), timeout=30)
            time.sleep(2)  # let it finish starting: the bench measures work, not interpreter start-up
            api_before = _apiserver_requests(bed)
            created: dict[str, float] = {}
            ready: dict[str, float] = {}
            done = threading.Event()

            def watcher() -> None:
                # From the list's resourceVersion, no timeout_seconds: a stream the apiserver ends (it closes the
                # watches of slow readers, or cuts one short: "Response ended prematurely") is resumed where it
                # was, not left ended with credentials unseen (which held the bench for its 30-minute deadline).
                version = bed.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["metadata"]["resourceVersion"]
                while not done.is_set():
                    w = watch.Watch()
                    try:
                        for event in w.stream(bed.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                                              resource_version=version):
                            obj = event["object"]
                            version = obj["metadata"].get("resourceVersion") or version
                            key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
                            conds = (obj.get("status") or {}).get("conditions") or []
                            if key not in ready and conds and conds[0]["status"] == "True":
                                ready[key] = time.monotonic()
                                if len(ready) >= n:
                                    w.stop()
                                    done.set()
                    except Exception as exc:  # resumed from the last version seen
                        print(f"bench: the Ready watch ended ({type(exc).__name__}); resuming", flush=True)
                        time.sleep(0.2)

            t = threading.Thread(target=watcher, daemon=True)
            t.start()
            time.sleep(0.5)

            def create(i: int) -> None:
                ns, tenant, client_id, _ = spaces[i // per_app]
                name = f"c{i}"
                created[f"{ns}/{name}"] = time.monotonic()
                bed.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, {
                    "apiVersion": f"{GROUP}/{VERSION}", "kind": "GraphAppCredential", "metadata": {"name": name},
                    "spec": {"tenantId": tenant, "clientId": client_id, "authorityHost": bed.authority_host,
                             "credential": {"clientSecret": {"name": "app"}}}})

            pid = op.process.popen.pid  # type: ignore[union-attr]
            prof = Profile(pid, profile_dir / "converge.raw") if profile_dir else None
            cpu_start, _ = _proc_stats(pid)
            t0 = time.monotonic()
            with ThreadPoolExecutor(CONCURRENCY) as pool:
                list(pool.map(create, range(n)))
            done.wait(1800)
            result.converge_cpu = _proc_stats(pid)[0] - cpu_start
            if prof is not None:
                prof.stop()
            result.converge = max(ready.values()) - t0
            result.latencies = [ready[k] - created[k] for k in created if k in ready]
            result.token_requests = bed.issuer.token_requests() - before_tokens
            api_after = _apiserver_requests(bed)
            during = api_after - api_before
            # Events are posted from a queue behind the passes: count them once every new credential's is out
            posted = _events_posted(bed, api_before, n)
            result.events_lost = _events_lost(port)
            during = Counter({key: count for key, count in during.items() if key[0] != "events"}) + posted
            result.api_requests = sum(during.values())
            result.api_breakdown = {f"{resource} {verb}": count for (resource, verb), count in sorted(during.items())}
            # steady state: several refresh cycles with the operator alone
            writes = _SecretWrites(bed)
            writes.start()
            bed.issuer.record_token_requests()
            cpu0, _ = _proc_stats(pid)
            api0, start = _apiserver_requests(bed), time.monotonic()
            prof = Profile(pid, profile_dir / "steady.raw") if profile_dir else None
            time.sleep(steady)
            if prof is not None:
                prof.stop()
            cpu1, rss = _proc_stats(pid)
            api1, end = _apiserver_requests(bed), time.monotonic()
            time.sleep(SETTLE)  # the refreshes in flight at the end: their writes show their token requests were used
            writes.stop()
            result.steady_writes_missed = writes.failure or ""
            result.steady_window = end - start
            result.steady_cpu = cpu1 - cpu0
            result.steady_token_requests, result.steady_unused_requests = _unused_requests(
                bed.issuer.token_request_log(), list(writes.writes), {ns: app for ns, _, app, _ in spaces},
                (start, end))
            result.steady_secret_writes = sum(1 for _, at in writes.writes if start <= at <= end)
            result.steady_write_requests = _secret_writes(api1) - _secret_writes(api0)
            result.steady_status_patches = api1[("graphappcredentials/status", "PATCH")] - \
                api0[("graphappcredentials/status", "PATCH")]
            result.rss_mib = rss
    result.load = (result.load[0], os.getloadavg()[0])
    return result


def _breakdown(results: list[Result], header: list[str]) -> list[str]:
    """apiserver requests per credential while converging, by resource and verb (the bench's own create is
    `graphappcredentials POST`; its watch `graphappcredentials WATCH`)."""
    keys = sorted({key for r in results for key in r.api_breakdown})
    table = ["| " + " | ".join(["apiserver requests per credential", *header[1:]]) + " |",
             "|" + "---|" * len(header)]
    for key in keys:
        if all(r.api_breakdown.get(key, 0) / r.n < 0.0005 for r in results):
            continue  # the control plane's own watches and the like: none per credential
        table.append("| " + " | ".join([key, *[f"{r.api_breakdown.get(key, 0) / r.n:.3f}" for r in results]]) + " |")
    return table


def lifetime_for(n: int) -> int:
    """The default token lifetime for N credentials: the same refresh rate at every N (module docstring)."""
    return max(30, 30 * n // 1000)


def main(ns: list[int], per_app: list[int], lifetime: int | None, steady: float | None, out: Path | None,
         profile_dir: Path | None = None) -> None:
    results = []
    profiles: list[Path] = []
    for n in ns:
        for k in per_app:
            life = lifetime if lifetime is not None else lifetime_for(n)
            window = steady if steady is not None else max(60.0, life / 2)
            print(f"bench: N={n}, {k} per app, tokens of {life} s, steady window {window:.0f} s ...", flush=True)
            where = profile_dir_for(profile_dir, "scale", n, k)
            results.append(run_one(n, k, life, window, where))
            profiles += sorted(where.glob("*.raw")) if where else []
    header = ["metric", *[f"N={r.n}, {r.per_app} per app" for r in results]]
    rows = [r.rows() for r in results]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, (label, _) in enumerate(rows[0]):
        table.append("| " + " | ".join([label, *[r[i][1] for r in rows]]) + " |")
    text = "\n".join([*table, "", *_breakdown(results, header)])
    print(text)
    for path in profiles:
        print(summary(path))
    if out:
        out.write_text(text + "\n" + json.dumps([r.__dict__ | {"latencies": None} for r in results]) + "\n")
