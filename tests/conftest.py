"""Shared fixtures: the real control plane (session-scoped), a fresh namespace per test, the token issuer."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from graphcred.testbed.bed import Bed


@pytest.fixture(scope="session")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    with Bed(tmp_path_factory.mktemp("bed")) as b:
        yield b


@pytest.fixture
def namespace(bed: Bed) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    bed.create_namespace(name)
    yield name
    bed.delete_namespace(name)


@pytest.fixture(scope="session")
def ca_bundle(bed: Bed) -> Path:
    return bed.issuer_ca_file
