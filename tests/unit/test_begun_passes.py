"""Passes begun at once are bounded, fairly by namespace: in a burst of new credentials, or behind a tenant's slow
authority, the passes beyond the bound wait before they read or parse anything (a waiting pass held ~20 KiB; a
burst of 10,000 made the operator's peak 460 MiB)."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from graphcred.acquire.credentials import Material
from graphcred.acquire.tokens import Token
from graphcred.api.model import AppIdentity
from graphcred.reconcile.slots import BegunPasses, PassGate
from tests.unit.fakes import FakeTokens, gac, secret_spec
from tests.unit.harness import NS, Rig, run, until


def test_at_most_total_begin_and_no_namespace_more_than_its_share_oldest_first() -> None:
    passes = BegunPasses(total=4, share=2)
    for ticket, namespace in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b"), ("c1", "c"), ("d1", "d")]:
        passes.arrive(ticket, namespace)
    assert passes.admit() == ["a1", "a2", "b1", "c1"]  # a3 beyond a's share; d1 beyond the total
    assert passes.admit() == [] and passes.held == 4 and passes.waiting() == 2
    passes.release("b")
    assert passes.admit() == ["d1"]  # a3 came first, but a holds its share
    passes.release("a")
    assert passes.admit() == ["a3"]


def test_a_waiter_that_left_is_skipped_and_idle_namespaces_are_forgotten() -> None:
    passes = BegunPasses(total=1, share=1)
    passes.arrive("a1", "a")
    assert passes.admit() == ["a1"]
    passes.arrive("b1", "b")
    passes.arrive("b2", "b")
    passes.arrive("c1", "c")
    passes.leave("b1")
    passes.release("a")
    assert passes.admit() == ["b2"]
    passes.leave("c1")
    passes.release("b")
    assert passes.admit() == []
    assert passes.held == 0 and passes.waiting() == 0
    assert not passes._namespaces and not passes._gone  # nothing kept for namespaces with no passes


def test_a_namespace_holding_its_share_is_not_walked_at_each_admission() -> None:
    """20,000 waiters of one namespace at its share, and a thousand other namespaces' passes begun and ended one
    by one: each admission looks at a few namespaces, not at the 20,000 (a tenant's credentials would otherwise
    make every other tenant's pass cost a walk of them all)."""

    class Counted(dict[str, Any]):
        looked = 0

        def __getitem__(self, key: str) -> Any:
            Counted.looked += 1
            return super().__getitem__(key)

    passes = BegunPasses(total=8, share=4)
    passes._namespaces = Counted()
    for i in range(20_000):
        passes.arrive(("big", i), "big")
    assert len(passes.admit()) == 4
    for i in range(1000):
        passes.arrive(("small", i), f"ns-{i}")
        admitted = passes.admit()
        assert admitted == [("small", i)], admitted
        passes.release(f"ns-{i}")
    assert Counted.looked <= 4 * 1000 + 20, Counted.looked
    assert passes.waiting() == 20_000 - 4


@pytest.mark.parametrize("seed", range(20))
def test_invariants_hold_over_a_long_random_run(seed: int) -> None:
    """Arrivals, departures, ends and admissions in any order: never more than `total` begun, never more than
    `share` per namespace, and after each admission nobody waits who could begin (the passes are not idle while
    someone waits), and a namespace's passes begin in their arrival order."""
    rng = random.Random(seed)
    total, share = rng.randint(1, 6), rng.randint(1, 3)
    passes = BegunPasses(total, share)
    waiting: dict[int, str] = {}  # ticket -> namespace, in arrival order
    held: dict[int, str] = {}
    order: dict[str, list[int]] = {}
    for ticket in range(3000):
        step = rng.random()
        if step < 0.45:
            namespace = f"ns-{rng.randint(0, 4)}"
            passes.arrive(ticket, namespace)
            waiting[ticket] = namespace
        elif step < 0.55 and waiting:
            gone = rng.choice(list(waiting))
            passes.leave(gone)
            del waiting[gone]
        elif held:
            done = rng.choice(list(held))
            passes.release(held.pop(done))
        for admitted in passes.admit():
            assert isinstance(admitted, int)
            namespace = waiting.pop(admitted)
            held[admitted] = namespace
            order.setdefault(namespace, []).append(admitted)
        per_namespace = {ns: sum(1 for n in held.values() if n == ns) for ns in set(held.values())}
        assert len(held) == passes.held <= total
        assert all(count <= share for count in per_namespace.values())
        if len(held) < total:
            assert all(per_namespace.get(ns, 0) >= share for ns in waiting.values()), "a waiter could begin"
    assert all(tickets == sorted(tickets) for tickets in order.values())
    assert passes.waiting() == len(waiting)


def test_a_pass_cancelled_while_waiting_or_as_it_is_admitted_gives_its_place_back() -> None:
    async def scenario() -> None:
        gate = PassGate(total=1, share=1)
        await gate.begin("a")
        waiting = asyncio.create_task(gate.begin("b"))
        await asyncio.sleep(0)
        waiting.cancel()  # while waiting
        await asyncio.gather(waiting, return_exceptions=True)
        admitted = asyncio.create_task(gate.begin("c"))
        await asyncio.sleep(0)
        gate.end("a")  # admits c ...
        admitted.cancel()  # ... which is cancelled before it runs again
        await asyncio.gather(admitted, return_exceptions=True)
        assert gate.passes.held == 0 and gate.passes.waiting() == 0
        await asyncio.wait_for(gate.begin("d"), 1)  # the place is free
        assert gate.passes.held == 1

    run(scenario)


class _SlowTenant(FakeTokens):
    """A token endpoint that holds the requests of one tenant (a tenant's slow authority) until `release`."""

    def __init__(self, rig_clock: Any, tenant: str) -> None:
        super().__init__(rig_clock)
        self.slow_tenant = tenant
        self.release = threading.Event()

    def acquire(self, spec: AppIdentity, scopes: Sequence[str], material: Material) -> Token:
        if spec.tenant_id == self.slow_tenant:
            self.release.wait(timeout=20)
        return super().acquire(spec, scopes, material)


def _credential(rig: Rig, namespace: str, name: str, tenant: str) -> None:
    rig.kube.put_client_secret(namespace, f"{name}-secret", "s3cret")
    rig.kube.objects.add((namespace, name))
    rig.controller.observe(gac(name, secret_spec(tenant, str(uuid.uuid4()), secret=f"{name}-secret"),
                               namespace=namespace))


def test_a_burst_of_new_credentials_begins_a_bounded_number_of_passes() -> None:
    """Before the bound, every pass of a burst read its credential and waited for a token at once."""
    async def scenario() -> None:
        rig = Rig(max_active=4, max_begun=8)
        rig.tokens.gate.clear()  # every token request is held
        tenant = str(uuid.uuid4())
        try:
            for i in range(40):
                _credential(rig, f"ns-{i % 5}", f"c{i}", tenant)
            await until(lambda: rig.tokens.requests >= 4, what="token requests")
            await asyncio.sleep(0.2)  # what more would begin, would begin now
            assert len(rig.reconciler.credential_reads) <= 8, "passes beyond the bound read their credential"
        finally:
            rig.tokens.gate.set()
        await until(lambda: all((rig.kube.ready(f"ns-{i % 5}", f"c{i}") or {}).get("status") == "True"
                                for i in range(40)), timeout=20, what="every credential Ready")
        assert rig.controller._begun.passes.held == 0
        await rig.controller.stop()

    run(scenario)


def test_a_tenant_s_slow_authority_does_not_hold_up_another_namespace() -> None:
    """A namespace with many credentials on an authority that never answers holds at most its share of the begun
    passes; another namespace's new credential still gets its token."""
    async def scenario() -> None:
        rig = Rig(max_active=4, max_begun=8, token_concurrency=16)
        slow = str(uuid.uuid4())
        rig.tokens = tokens = _SlowTenant(rig.clock, slow)
        rig.reconciler.acquirer.tokens = tokens
        try:
            for i in range(30):
                _credential(rig, "slow", f"s{i}", slow)
            await until(lambda: rig.controller._begun.passes.held >= 4, what="the slow namespace's passes")
            _credential(rig, NS, "mine", str(uuid.uuid4()))
            await until(lambda: (rig.kube.ready(NS, "mine") or {}).get("status") == "True", timeout=10,
                        what="the other namespace's credential Ready")
            assert rig.controller._begun.passes.held <= 4 + 1
        finally:
            tokens.release.set()
        await rig.controller.stop()

    run(scenario)


def test_the_bound_is_counted_per_pass_not_per_credential() -> None:
    """A credential's refresh after its pass ended begins again (its place was given back)."""
    async def scenario() -> None:
        rig = Rig(lifetime=3600.0, max_active=1, max_begun=1)
        tenant = str(uuid.uuid4())
        for i in range(3):
            _credential(rig, NS, f"c{i}", tenant)
        await until(lambda: all((rig.kube.ready(NS, f"c{i}") or {}).get("status") == "True" for i in range(3)),
                    what="every credential Ready one after the other")
        assert rig.controller._begun.passes.held == 0
        await rig.controller.stop()

    run(scenario)
