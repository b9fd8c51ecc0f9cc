"""Locate (and on first use, build) the test bed's binaries: etcd, kube-apiserver, kube-controller-manager,
kubectl and helm. They are built from the Go module proxy by `testbed/build-binaries.sh` into a cache outside
the repository; `GRAPHCRED_TESTBED_BIN` points at a ready directory instead.

`GRAPHCRED_TESTBED_KUBE=compat` selects the compat bed (`make test-compat`): the oldest supported kube-apiserver
minor, the floor of the chart's kubeVersion, with the current etcd, controller manager, kubectl and helm.

A node (graphcred_testbed.node) needs more, built only when one is asked for (`build-binaries.sh node`): kubelet,
kube-scheduler, containerd with its shim and ctr, runc and a static pause binary (`node_binary`)."""

from __future__ import annotations

import os
import subprocess
from functools import cache
from pathlib import Path

NAMES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm")
NODE_NAMES = ("kubelet", "kube-scheduler", "containerd", "containerd-shim-runc-v2", "ctr", "runc", "pause")
FLAVOURS = ("current", "compat")


def _build_script() -> Path:
    # testbed/graphcred_testbed/binaries.py -> testbed/build-binaries.sh (the package is installed editable)
    return Path(__file__).resolve().parents[1] / "build-binaries.sh"


def kube_flavour() -> str:
    """Which Kubernetes the bed runs: "current" (the default) or "compat" (GRAPHCRED_TESTBED_KUBE)."""
    flavour = os.environ.get("GRAPHCRED_TESTBED_KUBE") or "current"
    if flavour not in FLAVOURS:
        raise RuntimeError(f"GRAPHCRED_TESTBED_KUBE={flavour!r}: expected one of {', '.join(FLAVOURS)}")
    return flavour


@cache
def binary_dir() -> Path:
    configured = os.environ.get("GRAPHCRED_TESTBED_BIN")
    if configured and kube_flavour() == "compat":
        # one directory cannot be both beds: the compat tests would quietly run on whatever it holds
        raise RuntimeError("GRAPHCRED_TESTBED_BIN and GRAPHCRED_TESTBED_KUBE=compat together: unset the first "
                           "(the compat bed comes from `testbed/build-binaries.sh compat`)")
    if configured:
        directory = Path(configured)
    else:
        script = _build_script()
        if not script.exists():
            raise RuntimeError(
                f"test bed binaries: {script} not found; set GRAPHCRED_TESTBED_BIN to a directory "
                "holding etcd, kube-apiserver, kube-controller-manager, kubectl and helm"
            )
        directory = _build(kube_flavour())
    return _holding(directory, NAMES, "test bed binaries")


def _build(flavour: str) -> Path:
    """Run build-binaries.sh for `flavour` (cached: only the first run builds); the directory it prints last.
    Its stderr passes through so the (long) first build shows its progress."""
    out = subprocess.run(["bash", str(_build_script()), flavour], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def _holding(directory: Path, names: tuple[str, ...], what: str) -> Path:
    missing = [n for n in names if not (directory / n).exists()]
    if missing:
        raise RuntimeError(f"{what} missing in {directory}: {', '.join(missing)}")
    return directory


def binary(name: str) -> str:
    return str(binary_dir() / name)


@cache
def kube_version() -> str:
    """The bed's kube-apiserver version, e.g. "v1.37.2" (what `--version` prints)."""
    out = subprocess.run([binary("kube-apiserver"), "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split()[-1]


def kube_minor() -> int:
    """The bed's kube-apiserver minor version, e.g. 37: tests of features newer than the compat floor check it."""
    return int(kube_version().lstrip("v").split(".")[1])


@cache
def node_binary_dir() -> Path:
    """The directory holding the node's binaries (and links to the bed's): GRAPHCRED_TESTBED_BIN when set."""
    configured = os.environ.get("GRAPHCRED_TESTBED_BIN")
    return _holding(Path(configured) if configured else _build("node"), NODE_NAMES, "node binaries")


def node_binary(name: str) -> str:
    return str(node_binary_dir() / name)
