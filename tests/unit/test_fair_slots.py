"""Fair token slots (slots.FairSlots, RequestBudget, SlotGate): the admission rules as pure logic under seeded random
arrivals and departures, and the asyncio wrapper's cancellation edges."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from graphcred.acquire.credentials import Material
from graphcred.acquire.tokens import Token
from graphcred.api.model import AppIdentity
from graphcred.reconcile.slots import Claim, FairSlots, RequestBudget, SlotGate

from .fakes import Clock, FakeTokens, gac, secret_spec
from .harness import Rig, run, until


def _check(fair: FairSlots, admitted: list[object], arrival: dict[object, int], step: int) -> None:
    held = fair.held
    assert held <= fair.total, (step, held)
    by_namespace: dict[str, int] = {}
    by_host: dict[str, int] = {}
    for claim in fair._holding.values():
        by_namespace[claim.namespace] = by_namespace.get(claim.namespace, 0) + 1
        if claim.host is not None:
            by_host[claim.host] = by_host.get(claim.host, 0) + 1
    assert max(by_namespace.values(), default=0) <= fair.share, (step, by_namespace)
    assert max(by_host.values(), default=0) <= fair.share, (step, by_host)
    waiting = fair.waiting()
    if held < fair.total:  # a free slot: nobody whose shares have room is left waiting
        assert not [t for t, c in waiting if fair.room_for(c)], step
    if admitted:  # first come first served among those with room: nobody older was passed over while it had room
        newest = max(arrival[t] for t in admitted)
        passed_over = [t for t, c in waiting if arrival[t] < newest and fair.room_for(c)]
        assert not passed_over, step


@pytest.mark.parametrize("seed", range(25))
def test_random_arrivals_and_departures_keep_shares_fifo_and_no_idle_slot(seed: int) -> None:
    rng = random.Random(seed)
    total = rng.choice([1, 2, 3, 4, 8, 16, 33])
    fair = FairSlots(total)
    namespaces = [f"ns{i}" for i in range(rng.randint(1, 12))]
    hosts: list[str | None] = [None, *(f"https://h{i}" for i in range(rng.randint(1, 8)))]
    arrival: dict[object, int] = {}
    holding: list[object] = []
    for step in range(1500):
        if rng.random() < 0.55 or not holding:
            ticket = object()
            arrival[ticket] = step
            fair.arrive(ticket, Claim(rng.choice(namespaces), rng.choice(hosts)))
        elif rng.random() < 0.1 and fair.waiting():
            fair.leave(rng.choice(fair.waiting())[0])  # a waiter cancelled
        else:
            fair.release(holding.pop(rng.randrange(len(holding))))
        admitted = fair.admit()
        holding.extend(admitted)
        _check(fair, admitted, arrival, step)
    # No starvation: once arrivals stop and holders finish, every waiter gets a slot.
    for step in range(100_000):
        if not holding:
            break
        fair.release(holding.pop(rng.randrange(len(holding))))
        admitted = fair.admit()
        holding.extend(admitted)
        _check(fair, admitted, arrival, step)
    assert not fair.waiting() and fair.held == 0


def test_a_namespace_on_a_hanging_host_takes_a_quarter_and_others_go_at_once() -> None:
    fair = FairSlots(16)
    hostile = [object() for _ in range(16)]
    for i, ticket in enumerate(hostile):
        fair.arrive(ticket, Claim("tenant-a", f"https://tarpit-{i}.example"))  # a host each: the namespace caps
    assert len(fair.admit()) == 4
    victim = object()
    fair.arrive(victim, Claim("tenant-b", None))
    assert fair.admit() == [victim]
    same_host = [object() for _ in range(8)]
    for i, ticket in enumerate(same_host):  # one host, many namespaces: the host caps
        fair.arrive(ticket, Claim(f"ns-{i}", "https://slow.example"))
    assert len(fair.admit()) == 4


def test_the_clouds_and_admin_allowed_hosts_count_against_the_namespace_only() -> None:
    gate = SlotGate(16, exempt=["https://login.microsoftonline.com", "https://login.corp.example:8443/"])
    assert gate.claim("a", "https://LOGIN.microsoftonline.com/") == Claim("a", None)
    assert gate.claim("a", "https://login.corp.example:8443") == Claim("a", None)
    assert gate.claim("a", "https://tarpit.example") == Claim("a", "https://tarpit.example")


def test_a_freed_slot_looks_at_the_waiters_in_turn_not_at_all_of_them() -> None:
    """admit() copied every waiter at each freed slot: a burst of 10,000 passes waiting for 8 slots walked 10,000
    entries per token request, 10^8 over the burst."""

    class Counted(dict[object, Claim]):
        looked = 0

        def items(self) -> Any:
            for item in super().items():
                Counted.looked += 1
                yield item

    fair = FairSlots(total=8)
    fair._waiting = Counted()
    for i in range(3000):
        fair.arrive(i, Claim(f"ns-{i}", None))
    order: list[object] = list(fair.admit())
    while order:
        fair.release(order[0])
        order = order[1:] + fair.admit()
        assert fair.held <= 8
    assert not fair.waiting() and fair.held == 0
    assert Counted.looked <= 3 * 3000, Counted.looked  # the ones admitted, and the one that finds the slots full


def test_the_request_budget_lets_a_burst_through_then_paces_it() -> None:
    budget = RequestBudget(burst=10, per_minute=60)
    waits = [budget.reserve("a", 100.0) for _ in range(40)]
    assert waits[:10] == [0.0] * 10
    assert waits[10] == pytest.approx(1.0) and waits[39] == pytest.approx(30.0)  # one a second after the burst
    assert budget.reserve("b", 100.0) == 0.0  # namespaces do not share a budget
    assert budget.reserve("a", 200.0) == 0.0  # 100 s later it has refilled


def test_a_namespace_of_many_credentials_is_not_held_to_the_budget_of_a_few() -> None:
    """The budget was 60 at once then 240 a minute per namespace whatever its size: 2,000 new credentials of one
    namespace waited up to 8 minutes for their first token, and 10,000 one-hour tokens (a refresh every 30 min,
    5.6 a second) could never all be refreshed in time."""
    budget = RequestBudget()
    firsts = [budget.reserve("big", 100.0, f"c{i}") for i in range(2000)]
    assert max(firsts) == 0.0, "each new credential brings its own request"
    # steady state: 10,000 credentials refreshing every 30 minutes, evenly spread
    budget = RequestBudget()
    waits = [budget.reserve("big", 0.0, f"c{i}") for i in range(10_000)]
    for step in range(20_000):  # an hour: two refreshes each
        now = 1.0 + step * 0.18
        waits.append(budget.reserve("big", now, f"c{step % 10_000}"))
    assert max(waits) < 1.0, f"refreshes fall behind: waited {max(waits):.0f} s"


def test_many_active_namespaces_cost_each_request_no_walk_over_them_all() -> None:
    """Past 1,024 namespaces every request pruned: a walk over all of them, none prunable while active, so a burst
    of 10,000 namespaces took 10^8 steps (seconds of the operator's CPU, measured with `bench scale --n 10000`)."""
    budget = RequestBudget()
    walks = 0
    prune = budget._prune

    def counted(now: float) -> None:
        nonlocal walks
        walks += 1
        prune(now)

    budget._prune = counted  # type: ignore[method-assign]
    for i in range(10_000):
        assert budget.reserve(f"ns-{i}", 100.0 + i * 0.001, f"c{i}") == 0.0
    assert walks <= 5, walks  # at 1,025, then each time the namespaces known have doubled
    # idle namespaces are still forgotten: an hour later, the next walk forgets the 10,000
    for i in range(10_000, 30_000):
        budget.reserve(f"ns-{i}", 10_000.0, f"c{i}")
    assert len(budget._level) < 30_000


def test_a_few_credentials_asking_in_a_loop_are_paced_however_often_they_ask() -> None:
    budget = RequestBudget(burst=10, per_minute=60)
    waits = [budget.reserve("a", 100.0, f"c{i % 3}") for i in range(100)]
    assert waits[:13] == [0.0] * 13  # the burst, plus one for each of the three credentials
    assert waits[99] == pytest.approx(87 / (63 / 60))  # then 60 a minute plus one per credential


def test_a_waiter_cancelled_as_it_was_admitted_gives_its_slot_to_the_next() -> None:
    async def scenario() -> None:
        gate = SlotGate(1)
        entered = asyncio.Event()
        release = asyncio.Event()

        async def hold() -> None:
            async with gate.slot("a", "https://h"):
                entered.set()
                await release.wait()

        async def wait_then_run(done: list[str], name: str) -> None:
            async with gate.slot(name, "https://h2"):
                done.append(name)

        first = asyncio.create_task(hold())
        await entered.wait()
        done: list[str] = []
        doomed = asyncio.create_task(wait_then_run(done, "b"))
        later = asyncio.create_task(wait_then_run(done, "c"))
        await asyncio.sleep(0)
        release.set()
        await asyncio.sleep(0)
        doomed.cancel()  # admitted (its future set) but cancelled before it ran
        await asyncio.wait_for(asyncio.gather(first, later, doomed, return_exceptions=True), 5)
        assert done == ["c"] and gate.fair.held == 0 and not gate.fair.waiting()

    asyncio.run(scenario())


# --- with the real Controller and Reconciler ------------------------------------------------------------------
class Tarpit(FakeTokens):
    """Requests to hosts named tarpit-* hang until `release` (as an authority dripping a byte every few seconds
    would); the rest are answered at once. Notes when each credential's request was sent."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.release = threading.Event()
        self.hanging = 0
        self.sent: dict[str, float] = {}

    def acquire(self, spec: AppIdentity, scopes: Sequence[str], material: Material) -> Token:
        self.sent.setdefault(spec.client_id, time.monotonic())
        if "tarpit-" in spec.authority_base():
            with self._lock:
                self.hanging += 1
            self.release.wait(timeout=30)
        return super().acquire(spec, scopes, material)


class Operator:
    def __init__(self, *, max_active: int = 64) -> None:
        clock = Clock()
        self.tokens = Tarpit(clock)
        self.threads = ThreadPoolExecutor(64)  # as many I/O threads as the slots could ever want: slots decide
        loop = asyncio.get_running_loop()

        async def blocking(fn: Any, *args: Any) -> Any:
            return await loop.run_in_executor(self.threads, fn, *args)

        rig = Rig(clock=clock, tokens=self.tokens, run_blocking=blocking, max_active=max_active,
                  # the admin allowed them: no other host is contacted at all (--authority-host)
                  authority_hosts=[f"https://tarpit-{i}.example" for i in range(32)])
        self.kube, self.controller = rig.kube, rig.controller

    def add(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        self.kube.objects.add((namespace, name))
        self.controller.observe(gac(name, spec, namespace=namespace))

    def hostile(self, count: int) -> None:
        """tenant-a: `count` credentials, each on a tarpit host of its own and an Entra tenant of its own."""
        self.kube.put_client_secret("tenant-a", "cred", "a")
        for i in range(count):
            self.add("tenant-a", f"tarpit{i}", secret_spec(f"t{i}.example", str(uuid.uuid4()),
                                                            authorityHost=f"https://tarpit-{i}.example"))

    async def stop(self) -> None:
        self.tokens.release.set()
        await self.controller.stop()
        self.threads.shutdown(wait=True)


def test_a_victims_request_goes_out_while_another_namespaces_16_credentials_hang() -> None:
    """Security review 2 (bed scenario H): 16 credentials of tenant-a on a tarpit authority held all 16 token
    slots, and tenant-b's new credential sent no request for as long as they hung (75 s on the bed)."""
    async def scenario() -> None:
        op = Operator()
        try:
            op.hostile(16)
            await until(lambda: op.tokens.hanging >= 4, what="tenant-a's requests hanging")
            await asyncio.sleep(0.3)  # the rest of tenant-a's passes reach the slots (16 of them before the fix)
            op.kube.put_client_secret("tenant-b", "cred", "b")
            victim = str(uuid.uuid4())
            created = time.monotonic()
            op.add("tenant-b", "victim", secret_spec(str(uuid.uuid4()), victim))
            await until(lambda: victim in op.tokens.sent, timeout=10, what="the victim's token request")
            print(f"victim's token request {1000 * (op.tokens.sent[victim] - created):.0f} ms after it was "
                  f"created; tenant-a requests hanging: {op.tokens.hanging}")
            await until(lambda: (op.kube.ready("tenant-b", "victim") or {}).get("status") == "True",
                        what="the victim Ready")
            assert op.tokens.hanging == 4, "tenant-a holds more than its share of the slots"
        finally:
            await op.stop()

    run(scenario, timeout=60)


def test_a_pass_that_needs_no_token_is_not_held_up_by_passes_waiting_for_one() -> None:
    """Passes waiting for a token slot held the controller's places for passes in progress (64): a tenant with
    enough hanging credentials stopped every other pass, even those that need no token at all."""
    async def scenario() -> None:
        op = Operator(max_active=8)
        try:
            op.hostile(12)  # 4 in the slots (its share), 8 waiting for one
            await until(lambda: op.tokens.hanging >= 4, what="tenant-a's requests hanging")
            await asyncio.sleep(0.3)  # the others queue for a slot
            op.add("tenant-b", "no-secret", secret_spec(str(uuid.uuid4()), str(uuid.uuid4()), "missing"))
            cond = await until(lambda: op.kube.ready("tenant-b", "no-secret"), timeout=10,
                               what="tenant-b's pass reporting its missing Secret")
            assert cond["reason"] == "CredentialNotFound", cond
        finally:
            await op.stop()

    run(scenario, timeout=60)
