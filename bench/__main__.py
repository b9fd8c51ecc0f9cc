"""`make bench`: figures, never pass/fail.

  python -m bench bed-start            control-plane start time (3 runs)
  python -m bench latency [--n 20]     create-to-Ready latency, one at a time: client secret vs workload identity
  python -m bench scale [--n 100 --n 1000] [--per-app 1 --per-app 10] [--lifetime S] [--steady S]
                                       N credentials, K per app, against the bare cost of the job and against
                                       the same work done by hand (see bench/scale.py)
  python -m bench restart [--n 10000] [--per-app 1] [--lifetime 3600] [--profile DIR]
                                       N Ready credentials: the operator killed and started again, and a leader
                                       change with two replicas (see bench/restart.py)
  python -m bench calls [--n 1000]     CPU of one token acquisition and of one Kubernetes call, alone (see
                                       bench/calls.py)
  python -m bench memory [--n 2000]    what the operator keeps per credential, at rest and waiting for a
                                       token (the unit rig, tracemalloc; see bench/memory.py)
  python -m bench profile FILE...      summarise py-spy profiles written by --profile
  python -m bench secretwatch [--secrets 50000] [--old FILE]
                                       operator memory and first-list time with N unrelated Secrets
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client

from graphcred.api.keys import GROUP, PLURAL, VERSION
from graphcred_testbed.bed import Bed, wait_for
from graphcred_testbed.issuer import FederatedCredential
from graphcred_testbed.operator_process import OperatorProcess, install_crd


def bed_start(runs: int = 3) -> None:
    starts = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as d:
            bed = Bed(Path(d))
            t0 = time.monotonic()
            bed.start()
            starts.append(time.monotonic() - t0)
            bed.stop()
    print(f"control-plane start (etcd + kube-apiserver + kube-controller-manager + issuer), {runs} runs: "
          f"median {statistics.median(starts):.2f} s, min {min(starts):.2f} s, max {max(starts):.2f} s")


def latency(n: int) -> None:
    """Create-to-Ready, one credential at a time, client secret and workload identity alternating in one run."""
    with tempfile.TemporaryDirectory() as d, Bed(Path(d)) as bed:
        install_crd(bed)
        bed.create_namespace("bench")
        issuer = bed.control_plane.sa_issuer
        with OperatorProcess(bed, Path(d), "--workload-identity", f"--workload-identity-authority={bed.authority_host}",
                             log_level="WARNING"):
            samples: dict[str, list[float]] = {"client secret": [], "workload identity": []}
            for i in range(2 * (n + 1)):
                # an app of its own each: every credential pays for a real token request
                tenant, kind = str(uuid.uuid4()), ("client secret", "workload identity")[i % 2]
                if kind == "client secret":
                    app = bed.issuer.register_app(tenant, secret=f"bench-secret-{i}")
                    bed.core.create_namespaced_secret("bench", client.V1Secret(
                        metadata=client.V1ObjectMeta(name=f"app-{i}"),
                        string_data={"clientSecret": f"bench-secret-{i}"}))
                    credential: dict[str, Any] = {"clientSecret": {"name": f"app-{i}"}}
                else:
                    subject = f"system:serviceaccount:bench:sa-{i}"
                    app = bed.issuer.register_app(tenant, federated=[FederatedCredential(issuer, subject)])
                    bed.core.create_namespaced_service_account("bench", client.V1ServiceAccount(
                        metadata=client.V1ObjectMeta(name=f"sa-{i}", annotations={
                            "azure.workload.identity/client-id": app.client_id})))
                    credential = {"workloadIdentity": {"serviceAccountName": f"sa-{i}"}}
                name = f"lat-{i}"
                t0 = time.monotonic()
                bed.custom.create_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL, {
                    "apiVersion": f"{GROUP}/{VERSION}", "kind": "GraphAppCredential", "metadata": {"name": name},
                    "spec": {"tenantId": tenant, "clientId": app.client_id, "authorityHost": bed.authority_host,
                             "credential": credential}})

                def ready(name: str = name) -> bool:
                    obj = bed.custom.get_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL, name)
                    conds = obj.get("status", {}).get("conditions", [])
                    return bool(conds) and conds[0]["status"] == "True"

                wait_for(ready, timeout=30, interval=0.005, what=f"{name} Ready")
                if i > 1:  # the first of each kind also pays for start-up and discovery
                    samples[kind].append(time.monotonic() - t0)
        for kind, values in samples.items():
            qs = statistics.quantiles(values, n=100)
            print(f"create-to-Ready latency, {kind}, over {len(values)} GraphAppCredentials (each its own app; "
                  "polled every 5 ms): "
                  f"median {statistics.median(values) * 1000:.0f} ms, p90 {qs[89] * 1000:.0f} ms, "
                  f"min {min(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    sub = parser.add_subparsers(dest="what")
    sub.add_parser("bed-start")
    lat = sub.add_parser("latency")
    lat.add_argument("--n", type=int, default=20)
    sc = sub.add_parser("scale")
    sc.add_argument("--n", type=int, action="append", help="credentials (repeat; default 100 and 1000; 10000 fits)")
    sc.add_argument("--per-app", type=int, action="append", metavar="K",
                    help="credentials per app and credential Secret (repeat to compare; default 1: each its own)")
    sc.add_argument("--lifetime", type=int, help="token lifetime in seconds (default: 30 per 1,000 credentials, at "
                    "least 30: short, many refreshes, the same rate at every N)")
    sc.add_argument("--steady", type=float, help="steady-state window in seconds (default: half the lifetime, at "
                    "least 60)")
    sc.add_argument("--out", type=Path, help="also write the table here")
    sc.add_argument("--profile", type=Path, metavar="DIR",
                    help="py-spy profiles of the operator while converging and in steady state, into DIR")
    rs = sub.add_parser("restart")
    rs.add_argument("--n", type=int, action="append", help="credentials (repeat; default 10000)")
    rs.add_argument("--per-app", type=int, action="append", metavar="K", help="credentials per app (default 1)")
    rs.add_argument("--lifetime", type=int, default=3600, help="token lifetime: long, so that every token is valid")
    rs.add_argument("--profile", type=Path, metavar="DIR", help="py-spy profiles of each phase, into DIR")
    ca = sub.add_parser("calls")
    ca.add_argument("--n", type=int, default=1000, help="calls of each kind per round")
    me = sub.add_parser("memory")
    me.add_argument("--n", type=int, default=2000, help="credentials")
    pr = sub.add_parser("profile")
    pr.add_argument("files", type=Path, nargs="+")
    sw = sub.add_parser("secretwatch")
    sw.add_argument("--secrets", type=int, default=50_000, help="unrelated Secrets in the cluster")
    sw.add_argument("--old", type=Path, help="also run the operator with this secretwatch.py, for comparison")
    args = parser.parse_args()
    if args.what == "scale":
        from .scale import main as scale

        if any(k < 1 for k in args.per_app or ()):
            parser.error("--per-app must be at least 1")
        scale(args.n or [100, 1000], args.per_app or [1], args.lifetime, args.steady, args.out, args.profile)
        return
    if args.what == "restart":
        from .restart import main as restart

        if any(k < 1 for k in args.per_app or ()):
            parser.error("--per-app must be at least 1")
        restart(args.n or [10_000], args.per_app or [1], args.lifetime, args.profile)
        return
    if args.what == "calls":
        from .calls import main as calls

        calls(args.n)
        return
    if args.what == "memory":
        from .memory import main as memory

        memory(args.n)
        return
    if args.what == "profile":
        from .profile import summary

        for path in args.files:
            print(summary(path))
        return
    if args.what == "secretwatch":
        from .secretwatch import main as secretwatch

        secretwatch(args.secrets, args.old)
        return
    if args.what in (None, "bed-start"):
        bed_start()
    if args.what in (None, "latency"):
        latency(getattr(args, "n", 20))


if __name__ == "__main__":
    main()
