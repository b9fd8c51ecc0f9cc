"""`python -m graphcred_testbed demo`: the whole story on a local bed, no Azure account, no cluster.

Starts the real control plane and the Entra-protocol issuer, installs the CRD, runs `graphcred run`, registers the
example app from `examples/` in the issuer, applies the example manifests (pointed at the local issuer), and
prints `kubectl get gac` and the token's decoded claims. `--hold` keeps everything up until Ctrl-C.

`python -m graphcred_testbed soak --minutes 20 --seed 1` (`make soak`): the fault soak of soak.py on a bed of its
own; prints the figures and exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from graphcred.jwt import b64url_decode

from .bed import Bed, wait_for
from .operator_process import OperatorProcess, install_crd
from .volume import SecretVolume

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _example_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / "client-secret.yaml").read_text()) if d]


def demo(hold: bool) -> int:
    print("graphcred demo: starting the test bed (the first run builds Kubernetes from source: minutes)",
          flush=True)
    with Bed() as bed:
        install_crd(bed)
        version = json.loads(bed.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
        print(f"control plane: Kubernetes {version} at {bed.control_plane.server} "
              f"(up in {bed.control_plane.startup_seconds:.1f} s); token issuer at {bed.authority_host}")
        docs = _example_docs()
        secret_doc = next(d for d in docs if d["kind"] == "Secret")
        gac = next(d for d in docs if d["kind"] == "GraphAppCredential")
        spec = gac["spec"]
        bed.issuer.add_tenant(spec["tenantId"], "contoso-demo.onmicrosoft.com")
        bed.issuer.register_app(spec["tenantId"], spec["clientId"], secret=secret_doc["stringData"]["clientSecret"],
                                # exactly what the example declares: the demo must not grant what a user would lack
                                roles={"https://graph.microsoft.com": list(spec["requiredRoles"])}, lifetime=120)
        print(f"registered the example app {spec['clientId']} in the issuer (tokens live 120 s to show refreshes)")
        with OperatorProcess(bed, bed.control_plane.dir, log_level="INFO") as op:
            bed.create_namespace("demo")
            spec["authorityHost"] = bed.authority_host  # the only change: talk to the local issuer
            manifest = yaml.safe_dump_all(docs)
            print("$ kubectl apply -n demo -f examples/client-secret.yaml   # authorityHost set to the local issuer")
            print(bed.kubectl("apply", "-n", "demo", "-f", "-", input=manifest).stdout, end="")
            t0 = time.monotonic()

            def ready() -> bool:
                out = bed.kubectl("get", "gac", "mail-reader", "-n", "demo", "-o",
                                  "jsonpath={.status.conditions[0].status}", check=False).stdout
                return bool(out == "True")

            wait_for(ready, timeout=60, what="mail-reader to become Ready")
            print(f"Ready after {time.monotonic() - t0:.2f} s\n$ kubectl get gac -n demo")
            print(bed.kubectl("get", "gac", "-n", "demo").stdout)
            data = json.loads(bed.kubectl("get", "secret", "mail-reader-token", "-n", "demo", "-o",
                                          "json").stdout)["data"]
            token = base64.b64decode(data["access_token"]).decode()
            header, claims = (json.loads(b64url_decode(p)) for p in token.split(".")[:2])
            print("$ kubectl get secret mail-reader-token -n demo   # keys:", ", ".join(sorted(data)))
            print("decoded access_token header:", json.dumps(header))
            print("decoded access_token claims:", json.dumps(claims, indent=2))
            print(f"\nexpires_on: {base64.b64decode(data['expires_on']).decode()}; the operator refreshes at "
                  "half-life.")
            _consume(bed, data)
            if hold:
                print(f"\nexport KUBECONFIG={bed.kubeconfig}\nbed and operator are up "
                      f"(operator log: {op.logfile}); Ctrl-C to stop", flush=True)
                signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
                with contextlib.suppress(KeyboardInterrupt):
                    signal.pause()
    print("demo stopped; nothing left running")
    return 0


def _consume(bed: Bed, data: dict[str, str]) -> None:
    """The last mile: examples/consumer/graph_daemon.py (the pod of examples/pod.yaml) reads the token Secret
    mounted as the kubelet mounts it and lists users through the bed's Graph API with the Graph SDK."""
    with tempfile.TemporaryDirectory(prefix="graphcred-demo-") as tmp:
        volume = SecretVolume(Path(tmp) / "token")
        volume.write({key: base64.b64decode(value) for key, value in data.items()})
        print("\n$ python examples/consumer/graph_daemon.py --count 1   # the pod of examples/pod.yaml, with the "
              "Secret mounted kubelet-style and the bed's Graph API for graph.microsoft.com", flush=True)
        env = {**os.environ, "GRAPHCRED_TOKEN_DIR": str(volume.directory), "GRAPH_BASE_URL": bed.graph.base_url,
               "GRAPH_CA_BUNDLE": str(bed.issuer_ca_file)}
        run = subprocess.run([sys.executable, str(EXAMPLES / "consumer" / "graph_daemon.py"), "--count", "1"],
                             env=env, capture_output=True, text=True, timeout=120, check=False)
        print(run.stdout + run.stderr, end="", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m graphcred_testbed")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run graphcred on a local bed and show a token Secret")
    d.add_argument("--hold", action="store_true", help="keep the bed and operator up until Ctrl-C")
    s = sub.add_parser("soak", help="the fault soak: many credentials, two replicas, seeded faults, invariants")
    s.add_argument("--minutes", type=float, default=20.0, help="length after setup (faults, then quiet)")
    s.add_argument("--seed", type=int, default=1, help="seed of the fault schedule")
    s.add_argument("--credentials", type=int, default=200)
    s.add_argument("--apps", type=int, default=40)
    s.add_argument("--quiet", type=float, default=90.0, help="seconds without faults at the end")
    s.add_argument("--log-level", default="INFO", help="the replicas' log level")
    s.add_argument("--hostile", action="store_true",
                   help="add a hostile namespace that keeps trying the security review's attacks (docs/soak.md)")
    s.add_argument("--hostile-attacks", metavar="KIND,...",
                   help="with --hostile: only these attacks (default: all; see docs/soak.md for the kinds)")
    s.add_argument("--logdir", type=Path, help="where logs and the plan go (default: a new temporary directory)")
    args = parser.parse_args(argv)
    if args.command == "soak":
        return soak(args)
    return demo(args.hold)


def soak(args: argparse.Namespace) -> int:
    from .hostile import ATTACKS
    from .soak import SoakConfig, own_bed, run_soak

    chosen = args.hostile_attacks
    attacks = tuple(a.strip() for a in chosen.split(",") if a.strip()) if chosen else ATTACKS
    cfg = SoakConfig(minutes=args.minutes, seed=args.seed, credentials=args.credentials, apps=args.apps,
                     quiet_seconds=args.quiet, log_level=args.log_level, hostile=args.hostile, hostile_attacks=attacks)
    unknown = set(cfg.hostile_attacks) - set(ATTACKS)
    if unknown or not cfg.hostile_attacks:
        print(f"--hostile-attacks: unknown {', '.join(sorted(unknown)) or '(none given)'}; choose from "
              + ", ".join(ATTACKS), file=sys.stderr)
        return 2
    logdir = args.logdir or Path(tempfile.mkdtemp(prefix="graphcred-soak-"))
    print(f"graphcred soak: {cfg.minutes:g} min, seed {cfg.seed}, {cfg.credentials} credentials"
          f"{', a hostile tenant' if cfg.hostile else ''}; logs in {logdir}", flush=True)
    with own_bed() as bed:
        result = run_soak(bed, cfg, logdir)
    print(result.report())
    return 1 if result.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
