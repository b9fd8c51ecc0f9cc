"""Locate (and on first use, build) the test bed's binaries: etcd, kube-apiserver, kube-controller-manager,
kubectl and helm. They are built from the Go module proxy by `testbed/build-binaries.sh` into a cache outside
the repository; `GRAPHCRED_TESTBED_BIN` points at a ready directory instead."""

from __future__ import annotations

import os
import subprocess
from functools import cache
from pathlib import Path

NAMES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm")


def _build_script() -> Path:
    # testbed/graphcred_testbed/binaries.py -> testbed/build-binaries.sh (the package is installed editable)
    return Path(__file__).resolve().parents[1] / "build-binaries.sh"


@cache
def binary_dir() -> Path:
    configured = os.environ.get("GRAPHCRED_TESTBED_BIN")
    if configured:
        directory = Path(configured)
    else:
        script = _build_script()
        if not script.exists():
            raise RuntimeError(
                f"test bed binaries: {script} not found; set GRAPHCRED_TESTBED_BIN to a directory "
                "holding etcd, kube-apiserver, kube-controller-manager, kubectl and helm"
            )
        # stderr passes through so the (long) first build shows its progress
        out = subprocess.run(["bash", str(script)], check=True, stdout=subprocess.PIPE, text=True)
        directory = Path(out.stdout.strip().splitlines()[-1])
    missing = [n for n in NAMES if not (directory / n).exists()]
    if missing:
        raise RuntimeError(f"test bed binaries missing in {directory}: {', '.join(missing)}")
    return directory


def binary(name: str) -> str:
    return str(binary_dir() / name)
