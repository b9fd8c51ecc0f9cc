"""The node tests' bed: a control plane with a real node (containerd, runc, kubelet, kube-scheduler), one per test
module (a start takes about 10 s; a module may stop its node). Selected with `pytest -m node` (`make test` runs
them beside the main suite)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from graphcred_testbed.bed import Bed
from graphcred_testbed.node import KUBELET_SYSCTLS

ROOT = Path(__file__).resolve().parents[2]


def pod_ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def host_sysctls() -> dict[str, str]:
    return {key: (Path("/proc/sys") / key).read_text() for key in KUBELET_SYSCTLS}


def host_network() -> str:
    """The host network namespace's interfaces, addresses and routes: the node may add nothing to them (all its
    traffic stays on 127.0.0.1 or inside the namespace it makes)."""
    return "\n".join(subprocess.run(["ip", "-o", *args], capture_output=True, text=True, check=True).stdout
                     for args in (["link", "show"], ["addr", "show"], ["route", "show", "table", "all"]))


@pytest.fixture(scope="module")
def host_network_before() -> str:
    return host_network()


@pytest.fixture(scope="module")
def host_sysctls_before() -> dict[str, str]:
    return host_sysctls()


@pytest.fixture(scope="session")
def image_archive() -> Path:
    """The image built from the Dockerfile, once a session (testbed/build-image.sh; cached: `make test` builds it
    beforehand)."""
    out = subprocess.run(["bash", str(ROOT / "testbed" / "build-image.sh")], check=True, stdout=subprocess.PIPE,
                         text=True)
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def node_bed(tmp_path_factory: pytest.TempPathFactory, host_sysctls_before: dict[str, str],
             host_network_before: str) -> Iterator[Bed]:
    with Bed(tmp_path_factory.mktemp("node-bed"), node=True) as bed:
        yield bed
