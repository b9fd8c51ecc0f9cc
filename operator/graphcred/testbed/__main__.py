"""`python -m graphcred.testbed demo`: bring the bed up and print how to reach it.

`--hold` keeps it up until Ctrl-C; without it the bed is shown and torn down, so the command also works
unattended.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import uuid

from .bed import Bed


def demo(hold: bool) -> int:
    print("graphcred demo: starting the test bed (first run builds Kubernetes from source: minutes)", flush=True)
    with Bed() as bed:
        tenant = str(uuid.uuid4())
        app = bed.issuer.register_app(tenant, secret="demo-secret",
                                      roles={"https://graph.microsoft.com": ["Mail.Read"]})
        version = json.loads(bed.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
        print(f"control plane: Kubernetes {version} at {bed.control_plane.server} "
              f"(up in {bed.control_plane.startup_seconds:.1f} s)")
        print(f"  export KUBECONFIG={bed.kubeconfig}")
        print(f"token issuer (Entra v2.0 protocol): {bed.authority_host}")
        print(f"  CA bundle: {bed.issuer_ca_file}")
        print(f"  example app: tenant {tenant}, client {app.client_id}, roles Mail.Read on Graph")
        print(bed.kubectl("get", "namespaces").stdout)
        if hold:
            print("bed is up; Ctrl-C to stop", flush=True)
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    print("bed stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m graphcred.testbed")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="start the bed and print how to reach it")
    d.add_argument("--hold", action="store_true", help="keep the bed up until Ctrl-C")
    args = parser.parse_args(argv)
    return demo(args.hold)


if __name__ == "__main__":
    raise SystemExit(main())
