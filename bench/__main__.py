"""`make bench`: figures, never pass/fail.

  python -m bench bed-start            control-plane start time (3 runs)
  python -m bench latency [--n 20]     create-to-Ready latency of GraphAppCredentials, one at a time
  python -m bench scale [--n 100 --n 1000] [--lifetime 30] [--steady 60]
                                       N credentials against the bare cost of the job (see bench/scale.py)
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

from kubernetes import client

from graphcred.model import GROUP, PLURAL, VERSION
from graphcred_testbed.bed import Bed, wait_for
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
    with tempfile.TemporaryDirectory() as d, Bed(Path(d)) as bed:
        install_crd(bed)
        bed.create_namespace("bench")
        with OperatorProcess(bed, Path(d), log_level="WARNING"):
            samples = []
            for i in range(n + 1):
                # an app and Secret of its own each: every credential pays for a real token request
                tenant = str(uuid.uuid4())
                app = bed.issuer.register_app(tenant, secret=f"bench-secret-{i}")
                bed.core.create_namespaced_secret("bench", client.V1Secret(
                    metadata=client.V1ObjectMeta(name=f"app-{i}"),
                    string_data={"clientSecret": f"bench-secret-{i}"}))
                name = f"lat-{i}"
                t0 = time.monotonic()
                bed.custom.create_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL, {
                    "apiVersion": f"{GROUP}/{VERSION}", "kind": "GraphAppCredential", "metadata": {"name": name},
                    "spec": {"tenantId": tenant, "clientId": app.client_id, "authorityHost": bed.authority_host,
                             "credential": {"clientSecret": {"name": f"app-{i}"}}}})

                def ready(name: str = name) -> bool:
                    obj = bed.custom.get_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL, name)
                    conds = obj.get("status", {}).get("conditions", [])
                    return bool(conds) and conds[0]["status"] == "True"

                wait_for(ready, timeout=30, interval=0.005, what=f"{name} Ready")
                if i > 0:  # the first one also pays for the operator's start-up and discovery
                    samples.append(time.monotonic() - t0)
        qs = statistics.quantiles(samples, n=100)
        print(f"create-to-Ready latency over {n} GraphAppCredentials (each its own app and client secret, "
              "polled every 5 ms): "
              f"median {statistics.median(samples) * 1000:.0f} ms, p90 {qs[89] * 1000:.0f} ms, "
              f"min {min(samples) * 1000:.0f} ms, max {max(samples) * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    sub = parser.add_subparsers(dest="what")
    sub.add_parser("bed-start")
    lat = sub.add_parser("latency")
    lat.add_argument("--n", type=int, default=20)
    sc = sub.add_parser("scale")
    sc.add_argument("--n", type=int, action="append", help="credentials (repeat; default 100 and 1000; 10000 fits)")
    sc.add_argument("--lifetime", type=int, default=30, help="token lifetime in seconds (short: many refreshes)")
    sc.add_argument("--steady", type=float, default=60.0, help="steady-state window in seconds")
    sc.add_argument("--out", type=Path, help="also write the table here")
    sw = sub.add_parser("secretwatch")
    sw.add_argument("--secrets", type=int, default=50_000, help="unrelated Secrets in the cluster")
    sw.add_argument("--old", type=Path, help="also run the operator with this secretwatch.py, for comparison")
    args = parser.parse_args()
    if args.what == "scale":
        from .scale import main as scale

        scale(args.n or [100, 1000], args.lifetime, args.steady, args.out)
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
