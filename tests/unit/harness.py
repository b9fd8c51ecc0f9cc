"""One operator process over the in-memory fakes of `fakes` (`Rig`): the real Controller, Reconciler and
SharedTokens with a fake cluster, token endpoint and clock; and the helpers that drive it (`run`, `until`,
`is_ready`, `closed`). Unit tests build their operator here, never in a test module of their own."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from graphcred.acquire.sharing import SharedTokens
from graphcred.consumers.reports import ConsumerReports
from graphcred.reconcile.controller import Controller
from graphcred.reconcile.ports import EventSink
from graphcred.reconcile.reconciler import Reconciler
from graphcred.reconcile.slots import RequestBudget
from graphcred.reconcile.snapshot import Snapshot
from graphcred.telemetry.metrics import Metrics

from .fakes import Clock, FakeKubeWithServiceAccounts, FakeTokens, federated_spec, gac

NS = "ns"
TENANT = str(uuid.uuid4())


class Rig:
    """One operator process: its own token client, metrics, reconciler and controller, over `kube` and `clock`.

    `kube`: the cluster (a new one holds the client secret ns/cred); `clock`: the fake time of the cluster and the
    token endpoint; `tokens`: a token endpoint of the test's own (on `clock`), else one issuing tokens of `lifetime`
    seconds; `seed`: the reconciler's jitter; `emit`: where the reconciler's Events go instead of `events`. The
    rest is the operator's configuration, as the Reconciler (`token_concurrency`, `budget`, `workload_identity`,
    `authority_hosts`, `run_blocking`) and the Controller (`max_active`, `max_waiting`, `renews`) take it."""

    def __init__(self, lifetime: float = 3600.0, *, token_concurrency: int = 16,
                 kube: FakeKubeWithServiceAccounts | None = None, clock: Clock | None = None, seed: int = 0,
                 workload_identity: bool = False, authority_hosts: Collection[str] = (),
                 tokens: FakeTokens | None = None, emit: EventSink | None = None,
                 budget: RequestBudget | None = None, run_blocking: Callable[..., Awaitable[Any]] | None = None,
                 max_active: int | None = None, max_waiting: int = 1024, renews: RequestBudget | None = None) -> None:
        self.clock = clock or Clock()
        self.kube = kube or FakeKubeWithServiceAccounts()
        self.tokens = tokens or FakeTokens(self.clock, lifetime=lifetime)
        self.events: list[tuple[str, str, str]] = []  # (object name, type, reason) of every Event
        self.emitted: list[tuple[str, str, str, str]] = []  # the same with the message
        self.metrics = Metrics()
        self.reconciler = Reconciler(
            self.kube, self.tokens, emit or self.emit,
            clock=self.clock, rng=random.Random(seed), metrics=self.metrics, shared=SharedTokens(clock=self.clock),
            token_concurrency=token_concurrency, budget=budget, workload_identity=workload_identity,
            authority_hosts=authority_hosts, run_blocking=run_blocking)
        self.controller = (Controller(self.reconciler, max_waiting=max_waiting, renews=renews) if max_active is None
                           else Controller(self.reconciler, max_active, max_waiting=max_waiting, renews=renews))
        self.metrics.track(self.controller)  # as the wiring does: the per-credential series come from it
        self._consumers: ConsumerReports | None = None
        # what a successor is configured with: the same deployment, restarted
        self._lifetime, self._token_concurrency, self._authority_hosts = lifetime, token_concurrency, authority_hosts
        if kube is None:
            self.kube.put_client_secret(NS, "cred", "s3cret")

    def successor(self, seed: int = 1) -> Rig:
        """The next process (a restart, a new leader): same cluster, clock and configuration, nothing else shared."""
        return Rig(self._lifetime, kube=self.kube, clock=self.clock, seed=seed,
                   token_concurrency=self._token_concurrency, workload_identity=self.reconciler.workload_identity,
                   authority_hosts=self._authority_hosts)

    def with_consumer_reports(self, *, watching: bool) -> ConsumerReports:
        """The consumer reports of --watch-consumers (`watching`), wired as the operator wires them; call it in the
        running loop."""
        self._consumers = ConsumerReports(self.controller, self.kube, self.emit,
                                          self.metrics, self.reconciler._blocking, watching=watching)
        self.controller.listen(self._consumers)
        self._consumers.start()
        return self._consumers

    @property
    def consumers(self) -> ConsumerReports:
        assert self._consumers is not None, "no consumer reports: call with_consumer_reports first"
        return self._consumers

    def emit(self, obj: dict[str, Any], type: str, reason: str, message: str) -> None:  # noqa: A002
        self.events.append((obj["metadata"]["name"], type, reason))
        self.emitted.append((obj["metadata"]["name"], type, reason, message))

    def add(self, body: dict[str, Any]) -> dict[str, Any]:
        """`body` created in the cluster and seen by the controller."""
        self.kube.objects.add((NS, body["metadata"]["name"]))
        self.controller.observe(body)
        return body

    def listed(self, body: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
        """`body` as a process listing it now sees it: with the status stored so far (and `annotations`)."""
        name = body["metadata"]["name"]
        metadata = {**body["metadata"], "annotations": annotations} if annotations else body["metadata"]
        return {**body, "metadata": metadata, "status": self.kube.statuses[(NS, name)]}

    def snapshot(self, name: str, spec: dict[str, Any], *, uid: str | None = None) -> Snapshot:
        """Credential `name` created in the cluster (no controller sees it), as a pass of the reconciler takes it:
        with the status stored so far."""
        self.kube.objects.add((NS, name))
        return Snapshot.of(gac(name, spec, uid=uid or f"uid-{name}", status=self.kube.statuses.get((NS, name))))

    def consenting(self, service_account: str = "reader") -> tuple[str, dict[str, Any]]:
        """A new app's client id, a ServiceAccount annotated for it, and a spec federating that ServiceAccount."""
        client = str(uuid.uuid4())
        self.kube.put_service_account(NS, service_account, client_id=client)
        return client, federated_spec(TENANT, client, service_account)

    def ready(self, name: str) -> dict[str, Any] | None:
        """The Ready condition of `name`, if there is one yet."""
        return self.kube.ready(NS, name)

    def condition(self, name: str) -> dict[str, Any]:
        """The Ready condition of `name`, which must be there."""
        cond = self.kube.ready(NS, name)
        assert cond is not None, f"{name}: no Ready condition"
        return cond

    def status(self, name: str) -> dict[str, Any]:
        return self.kube.statuses.get((NS, name), {})

    def workers(self) -> tuple[int, int]:
        return self.controller.worker_counts()


async def until(probe: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """The first true value of `probe`, polled in the running loop."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = probe()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def on_threads(threads: ThreadPoolExecutor) -> Callable[..., Awaitable[Any]]:
    """A `run_blocking` on `threads`: more I/O threads than asyncio's default executor's few, as the operator has,
    so that the token requests a test holds do not hold every thread the Kubernetes calls need."""
    async def blocking(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(threads, fn, *args)

    return blocking


def run(scenario: Callable[[], Awaitable[None]], timeout: float = 30) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=timeout))


@contextmanager
def closed(gate: Any) -> Iterator[None]:
    """`gate` (a threading.Event such as FakeTokens.gate) closed for the block."""
    gate.clear()
    try:
        yield
    finally:
        gate.set()


def is_ready(rig: Rig, name: str, generation: int = 1) -> bool:
    cond = rig.ready(name)
    return bool(cond and cond["status"] == "True" and cond["observedGeneration"] == generation)
