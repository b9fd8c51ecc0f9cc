"""Shared fixtures: the real control plane and issuer (session-scoped), the operator as a real child process,
and a fresh namespace per test."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from graphcred.api.keys import GROUP, PLURAL, VERSION
from graphcred_testbed.bed import Bed
from graphcred_testbed.operator_process import OperatorProcess, install_crd

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


@dataclass
class LeakCorpus:
    """What the leak scanner reads at the end: every event and status the operator wrote, every secret used."""

    texts: list[str] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)

    def collect(self, env: Env) -> None:
        """What `env`'s test left: its secret values, and the Events and objects (with their status) in its
        namespace. Called before the namespace (and its Events) is deleted."""
        self.secrets.update(env._values.values())
        for event in env.bed.core.list_namespaced_event(env.namespace).items:
            self.texts.append(f"event {event.reason}: {event.message}")
        for obj in env.bed.custom.list_namespaced_custom_object(GROUP, VERSION, env.namespace, PLURAL)["items"]:
            self.texts.append(json.dumps(obj))


@pytest.fixture(scope="session")
def leak_corpus() -> LeakCorpus:
    return LeakCorpus()


@pytest.fixture
def env(bed: Bed, namespace: str, operator: OperatorProcess, leak_corpus: LeakCorpus) -> Iterator[Env]:
    """The bed, a namespace and a running operator: what an end-to-end test needs."""
    e = Env(bed, namespace, operator)
    yield e
    leak_corpus.collect(e)
