"""`python -m bench secretwatch --secrets 50000 [--old FILE]`: the operator's memory with many unrelated Secrets.

A fresh bed; N Secrets spread over N/1000 namespaces, each with ~1 KiB of data and the
`kubectl.kubernetes.io/last-applied-configuration` annotation `kubectl apply` leaves (which repeats the data),
created with 4 threads. Then `graphcred run` as a child process, watching all namespaces. Reported per run: the
time its first Secret list took and its peak RSS (VmHWM) once that list completed; first a baseline run before
the Secrets exist. `--old FILE` also runs the same operator with the metadata watch module taken from FILE (e.g.
`git show REV:operator/graphcred/kube/metawatch.py > /tmp/old_metawatch.py`), for comparison. What these figures
decided: docs/design/2026-12-06-metadata-only-watches.md.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import tempfile
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kubernetes import client, config

from graphcred.kube.metawatch import KnownObjects
from graphcred_testbed.bed import Bed, wait_for
from graphcred_testbed.operator_process import OperatorProcess, install_crd

THREADS = 4  # the machine is shared
PER_NAMESPACE = 1000
SETTLE = 10.0
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
LISTED = re.compile(r"secret watch: listed (\S+) Secrets in (\S+) page\(s\) in ([\d.]+) s")

# Runs `graphcred run` with the metadata watch module from a file; logs the first list's time as the new one does.
OLD_LAUNCHER = """
import importlib.util, logging, sys, time
import graphcred
path = sys.argv.pop(1)
spec = importlib.util.spec_from_file_location("graphcred.kube.metawatch", path)
module = importlib.util.module_from_spec(spec)
sys.modules["graphcred.kube.metawatch"] = module
spec.loader.exec_module(module)
watch = getattr(module, "MetadataWatch", None) or module.SecretMetadataWatch  # its name before ServiceAccounts
relist = watch._relist
def timed(self):
    t0 = time.monotonic()
    version = relist(self)
    logging.getLogger("graphcred.kube.metawatch").info(
        "secret watch: listed ? Secrets in 1 page(s) in %.1f s", time.monotonic() - t0)
    return version
watch._relist = timed
from graphcred.app.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def _secret(namespace: str, name: str) -> client.V1Secret:
    value = base64.b64encode(os.urandom(700)).decode()  # ~1 KiB once encoded, as a certificate or key would be
    applied = {"apiVersion": "v1", "data": {"password": value}, "kind": "Secret",
               "metadata": {"annotations": {}, "name": name, "namespace": namespace}, "type": "Opaque"}
    return client.V1Secret(metadata=client.V1ObjectMeta(name=name, annotations={LAST_APPLIED: json.dumps(applied)}),
                           data={"password": value}, type="Opaque")


def create_secrets(bed: Bed, n: int) -> float:
    """N unrelated Secrets, THREADS at a time (a client each). Returns the seconds it took."""
    spaces = [f"unrelated-{i}" for i in range((n + PER_NAMESPACE - 1) // PER_NAMESPACE)]
    for ns in spaces:
        bed.create_namespace(ns)
    local = threading.local()
    done = [0]
    lock = threading.Lock()
    t0 = time.monotonic()

    def create(i: int) -> None:
        if not hasattr(local, "core"):
            local.core = client.CoreV1Api(config.new_client_from_config(str(bed.kubeconfig)))  # type: ignore[no-untyped-call]
        ns = spaces[i // PER_NAMESPACE]
        local.core.create_namespaced_secret(ns, _secret(ns, f"unrelated-{i}"))
        with lock:
            done[0] += 1
            if done[0] % 5000 == 0:
                print(f"  {done[0]} Secrets created ({time.monotonic() - t0:.0f} s)", flush=True)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(create, range(n)))
    return time.monotonic() - t0


def _status_kib(pid: int, field: str) -> int:
    match = re.search(rf"{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    assert match, field
    return int(match.group(1))


def measure(bed: Bed, logdir: Path, name: str, old: Path | None = None) -> tuple[float, float, float]:
    """Runs the operator until its first Secret list completed, and SETTLE seconds more (the event loop works
    through the list's callbacks): (list seconds, peak RSS MiB at the list's end, peak RSS MiB after SETTLE)."""
    op = OperatorProcess(bed, logdir, name=name, log_level="INFO")
    if old is not None:  # same arguments, old module
        op.process.argv = [sys.executable, "-c", OLD_LAUNCHER, str(old), *op.process.argv[3:]]
    with op:
        found = wait_for(lambda: LISTED.search(op.logs(this_run=True)), timeout=900, interval=0.2,
                         what=f"{name}: the first Secret list")
        pid = op.process.popen.pid  # type: ignore[union-attr]
        peak = _status_kib(pid, "VmHWM")
        time.sleep(SETTLE)  # a window to measure over, not a wait for a condition
        later = _status_kib(pid, "VmHWM")
    return float(found.group(3)), peak / 1024, later / 1024


def known_record_mib(n: int) -> float:
    """What the watch's record of known Secrets costs for N Secrets named like the bench's (tracemalloc)."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    known = KnownObjects()
    for i in range(n):
        known.put(f"unrelated-{i // PER_NAMESPACE}", f"unrelated-{i}", str(1_000_000 + 3 * i))
    size = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return size / 2**20


def _row(seconds: float, peak: float, later: float) -> str:
    return f"{seconds:.1f} s; {peak:.0f} MiB when it ended, {later:.0f} MiB {SETTLE:.0f} s later"


def main(secrets: int, old: Path | None) -> None:
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as d, Bed(Path(d)) as bed:
        install_crd(bed)
        t, peak, rss = measure(bed, Path(d), "graphcred-baseline")
        rows.append(("baseline (no unrelated Secrets): first list, peak RSS", _row(t, peak, rss)))
        print(f"bench: creating {secrets} Secrets with {THREADS} threads ...", flush=True)
        took = create_secrets(bed, secrets)
        rows.append((f"creating {secrets} Secrets ({THREADS} threads)", f"{took:.0f} s"))
        runs = [("this tree", None)] + ([(f"old module ({old})", old)] if old else [])
        for label, module in runs:
            t, peak, rss = measure(bed, Path(d), f"graphcred-{'old' if module else 'new'}", module)
            rows.append((f"{label}: first list, peak RSS", _row(t, peak, rss)))
    rows.append((f"record of known Secrets for {secrets} (tracemalloc, in-process)",
                 f"{known_record_mib(secrets):.1f} MiB"))
    print("| metric | value |\n|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")
