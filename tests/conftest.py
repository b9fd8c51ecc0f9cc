"""Shared fixtures: the real control plane and issuer (session-scoped), the operator as a real child process,
and a fresh namespace per test. When a session (or, under pytest-xdist, a worker) that used the bed's operator ends,
every operator log, Event and status it wrote is scanned for tokens, client secrets, ServiceAccount tokens and
private keys: a leak fails the session's last test at teardown, whatever ran and in whatever order."""

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

from .helpers import Env, find_leaks


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked `long` first (a stable sort: the order is otherwise the files'), so that on several
    pytest-xdist workers they start at once and the others' tests fill the time around them."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.fixture(scope="session")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    with Bed(tmp_path_factory.mktemp("bed")) as b:
        install_crd(b)
        yield b


@pytest.fixture(scope="session")
def operator_logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("operator")


@pytest.fixture(scope="session")
def operator(bed: Bed, operator_logdir: Path, leak_corpus: LeakCorpus) -> Iterator[OperatorProcess]:
    """One operator for the session, watching all namespaces (tests restart it when they need to). It needs the
    leak corpus, so that the scan at the session's end covers every session that ran an operator."""
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
    """What the leak scanner reads at the end: every event and status the operator wrote, every secret used, and
    the operators' logs (every `*.log` in `logdir`: the session operator's and those tests start beside it)."""

    logdir: Path
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

    def logs(self) -> list[str]:
        return [log.read_text(errors="replace") for log in sorted(self.logdir.glob("*.log"))]

    def assert_nothing_leaked(self, bed: Bed) -> None:
        """No token the issuer handed out, no client secret, no ServiceAccount token presented to it and no private
        key in anything collected or logged (the values are named by a prefix only)."""
        issuer = bed.issuer
        leaks = find_leaks("\n".join(self.texts + self.logs()), tokens=issuer.issued_tokens,
                           secrets=self.secrets | set(issuer.registered_secrets()),
                           assertions=issuer.presented_assertions)
        assert not leaks.tokens, f"tokens found in logs/events/status: {leaks.tokens[:3]}"
        assert not leaks.secrets, f"client secrets found in logs/events/status: {leaks.secrets[:3]}"
        assert not leaks.assertions, f"ServiceAccount tokens found in logs/events/status: {leaks.assertions[:3]}"
        assert not leaks.private_key, "a private key found in logs/events/status"


@pytest.fixture(scope="session")
def leak_corpus(bed: Bed, operator_logdir: Path) -> Iterator[LeakCorpus]:
    """The session's leak corpus; scanned when the session ends (a finaliser, so after every test that ran and
    after the session operator, which depends on it, has stopped and written its last line)."""
    corpus = LeakCorpus(operator_logdir)
    yield corpus
    corpus.assert_nothing_leaked(bed)


@pytest.fixture
def env(bed: Bed, namespace: str, operator: OperatorProcess, leak_corpus: LeakCorpus) -> Iterator[Env]:
    """The bed, a namespace and a running operator: what an end-to-end test needs."""
    e = Env(bed, namespace, operator)
    restarts = bed.control_plane.apiserver_restarts
    if operator.watching_after != restarts:
        # an earlier test restarted the apiserver: the session operator's watches reconnect with a backoff (up to
        # 30 s), and a test expecting a reaction to a change within seconds would meet the gap
        e.wait_watching()
        operator.watching_after = restarts
    yield e
    leak_corpus.collect(e)
