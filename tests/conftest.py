"""Shared fixtures: the real control plane and issuer (session-scoped), the operator as a real child process,
and a fresh namespace per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from graphcred.testbed.bed import Bed
from graphcred.testbed.operator_process import OperatorProcess, install_crd

from .helpers import Env


@pytest.fixture(scope="session")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    with Bed(tmp_path_factory.mktemp("bed")) as b:
        install_crd(b)
        yield b


@pytest.fixture(scope="session")
def operator_logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("operator")


@pytest.fixture(scope="session")
def operator(bed: Bed, operator_logdir: Path) -> Iterator[OperatorProcess]:
    """One operator for the session, watching all namespaces (tests restart it when they need to)."""
    # JSON logs at DEBUG: the leak scanner reads them; a short token timeout keeps timeout tests quick.
    with OperatorProcess(bed, operator_logdir, "--token-timeout=3", log_format="json") as op:
        yield op


@pytest.fixture
def namespace(bed: Bed) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    bed.create_namespace(name)
    yield name
    bed.delete_namespace(name)


@pytest.fixture
def env(bed: Bed, namespace: str, operator: OperatorProcess) -> Env:
    """The bed, a namespace and a running operator: what an end-to-end test needs."""
    return Env(bed, namespace, operator)
