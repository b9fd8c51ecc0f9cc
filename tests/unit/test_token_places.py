"""Passes waiting for a token are bounded, fairly by namespace (`TokenPlaces`): in a burst of new credentials, or
behind a slow authority, a pass beyond the bound ends before it waits (a waiting pass held ~20 KiB; a burst of
10,000 made the operator's peak 460 MiB) and its worker waits for a place reserved for it. Passes that need no
token never wait for a place."""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from graphcred.acquire.credentials import Material
from graphcred.acquire.tokens import Token
from graphcred.api.keys import RENEW_ANNOTATION
from graphcred.api.model import AppIdentity
from graphcred.reconcile.slots import TokenPlaces
from tests.unit.fakes import FakeTokens, gac, secret_spec
from tests.unit.harness import Rig, on_threads, run, until
from tests.unit.test_cluster_apps import platform, tenant


def test_at_most_total_wait_no_namespace_more_than_its_share_and_the_rest_queue_in_turn() -> None:
    places = TokenPlaces(total=4, share=2)
    assert [places.take(t, ns) for t, ns in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b"), ("c1", "c"),
                                             ("d1", "d"), ("c2", "c")]] == [True, True, False, True, True, False,
                                                                            False]
    assert places.held == 4 and places.queued() == 3
    places.release("b")
    assert places.admit() == ["d1"]  # a3 came first, but a holds its share
    assert places.take("d1", "d") and places.held == 4  # the reserved place, taken by its pass
    places.release("a")
    assert places.admit() == ["c2"]  # c had room before a had: it is c's turn
    places.release("d")
    assert places.admit() == ["a3"]


def test_a_namespace_at_its_share_does_not_take_freed_places_back_ahead_of_later_namespaces() -> None:
    """Namespaces with room take turns: a freed place of a namespace with a backlog goes to one that came after
    the backlog, not back to that namespace (oldest-first across namespaces made a victim wait for every pass
    that namespace had queued: thousands, at a slow authority's pace)."""
    places = TokenPlaces(total=8, share=4)
    for ns in ("h1", "h2"):
        for i in range(500):
            places.take((ns, i), ns)
    assert places.held == 8 and places.queued() == 992
    assert not places.take("victim", "victim")
    places.release("h1")
    assert places.admit() == ["victim"]
    places.release("h2")
    assert places.admit() == [("h1", 4)]  # h1 had room (and its turn) since the victim's admission
    places.release("h1")
    assert places.admit() == [("h2", 4)]


def test_a_worker_that_is_gone_leaves_nothing_behind() -> None:
    places = TokenPlaces(total=1, share=1)
    assert places.take("a1", "a")
    for i in range(20_000):  # credentials created and deleted while the place is held
        assert not places.take(("b", i), "b")
        places.forget(("b", i))
    assert not places.take("c1", "c")
    places.forget("c1")
    assert places.queued() == 0 and len(places._queues) <= 3  # at most an empty entry per namespace until the next turn
    places.release("a")
    assert places.admit() == [] and places.held == 0 and not places._queues and not places._turns


def test_a_reserved_place_not_needed_goes_to_the_next() -> None:
    places = TokenPlaces(total=1, share=1)
    assert places.take("a1", "a") and not places.take("b1", "b") and not places.take("c1", "c")
    places.release("a")
    assert places.admit() == ["b1"]
    places.forget("b1")  # its pass needed no token after all
    assert places.admit() == ["c1"]
    places.forget("c1")  # deleted before its pass ran
    assert places.admit() == [] and places.held == 0


@pytest.mark.parametrize("seed", range(20))
def test_invariants_hold_over_a_long_random_run(seed: int) -> None:
    """Takes, releases, reservations unused, workers gone, in any order: never more than `total` places, never more
    than `share` per namespace; after each admission nobody queues who could have a place; each namespace's
    tickets are admitted in their order; nothing is kept for a namespace without tickets."""
    rng = random.Random(seed)
    total, share = rng.randint(1, 6), rng.randint(1, 3)
    places = TokenPlaces(total, share)
    queued: dict[int, str] = {}  # ticket -> namespace, in order
    reserved: dict[int, str] = {}
    taken: list[str] = []  # namespaces of the places taken
    order: dict[str, list[int]] = {}
    next_ticket = 0
    for _ in range(3000):
        step = rng.random()
        if step < 0.4:
            namespace = f"ns-{rng.randint(0, 4)}"
            if places.take(next_ticket, namespace):
                taken.append(namespace)
            else:
                queued[next_ticket] = namespace
            next_ticket += 1
        elif step < 0.5 and queued:
            gone = rng.choice(list(queued))
            places.forget(gone)
            del queued[gone]
        elif step < 0.6 and reserved:
            unused = rng.choice(list(reserved))
            places.forget(unused)
            del reserved[unused]
        elif step < 0.75 and reserved:
            ticket = rng.choice(list(reserved))
            assert places.take(ticket, reserved[ticket])
            taken.append(reserved.pop(ticket))
        elif taken:
            places.release(taken.pop(rng.randrange(len(taken))))
        for admitted in places.admit():
            assert isinstance(admitted, int)
            reserved[admitted] = namespace = queued.pop(admitted)
            order.setdefault(namespace, []).append(admitted)
        holding = [*taken, *reserved.values()]
        per_namespace = {ns: holding.count(ns) for ns in set(holding)}
        assert len(holding) == places.held <= total
        assert all(count <= share for count in per_namespace.values())
        if len(holding) < total:
            assert all(per_namespace.get(ns, 0) >= share for ns in queued.values()), "a queued ticket could wait"
        assert places.queued() == len(queued)
        # an emptied namespace may wait for its turn to be forgotten, but is listed once at most
        assert set(places._queues) <= set(queued.values()) | set(holding) | set(places._turns)
        assert len(places._turns) == len(set(places._turns))
    assert all(tickets == sorted(tickets) for tickets in order.values())


class _SlowTenant(FakeTokens):
    """A token endpoint that holds the requests of one tenant (a slow authority) until `release`."""

    def __init__(self, clock: Any, tenant: str) -> None:
        super().__init__(clock)
        self.slow_tenant = tenant
        self.release = threading.Event()

    def acquire(self, spec: AppIdentity, scopes: Sequence[str], material: Material) -> Token:
        if spec.tenant_id == self.slow_tenant:
            self.release.wait(timeout=20)
        return super().acquire(spec, scopes, material)


@contextlib.asynccontextmanager
async def _slow_rig(**options: Any) -> AsyncIterator[tuple[Rig, _SlowTenant, str]]:
    """A rig whose token requests to one tenant hang (in threads of their own: many may hang at once) until the
    test releases them or ends; the rig is stopped as it ends."""
    pool = ThreadPoolExecutor(128)
    rig = Rig(run_blocking=on_threads(pool), **options)
    slow = str(uuid.uuid4())
    rig.tokens = tokens = _SlowTenant(rig.clock, slow)
    rig.reconciler.acquirer.tokens = tokens
    try:
        yield rig, tokens, slow
    finally:
        tokens.release.set()
        await rig.controller.stop()
        pool.shutdown(wait=False)


def _credential(rig: Rig, namespace: str, name: str, tenant_id: str, **extra: Any) -> dict[str, Any]:
    rig.kube.put_client_secret(namespace, f"{name}-secret", "s3cret")
    rig.kube.objects.add((namespace, name))
    body = gac(name, secret_spec(tenant_id, str(uuid.uuid4()), secret=f"{name}-secret", **extra),
               namespace=namespace)
    rig.controller.observe(body)
    return body


def _waiting_for_a_token(rig: Rig) -> int:
    """Passes waiting for a token slot or holding one (the token endpoint holds every request)."""
    slots = rig.reconciler.acquirer.slots
    return len(slots._futures) + slots.fair.held


def test_a_burst_of_new_credentials_waits_for_a_token_a_bounded_number_at_a_time() -> None:
    """Before the bound, every pass of a burst read its credential, parsed its spec and waited for a token at
    once (40 here, 10,000 in `bench scale`)."""
    async def scenario() -> None:
        rig = Rig(max_waiting=8, token_concurrency=4)
        rig.tokens.gate.clear()  # every token request is held
        tenant_id = str(uuid.uuid4())
        try:
            for i in range(40):
                _credential(rig, f"ns-{i % 5}", f"c{i}", tenant_id)
            await until(lambda: rig.controller.passes_waiting()[1] == 32, what="the burst beyond the bound queued")
            assert _waiting_for_a_token(rig) <= 8
        finally:
            rig.tokens.gate.set()
        await until(lambda: all((rig.kube.ready(f"ns-{i % 5}", f"c{i}") or {}).get("status") == "True"
                                for i in range(40)), timeout=20, what="every credential Ready")
        assert rig.controller.passes_waiting() == (0, 0)
        assert rig.tokens.requests == 40  # a pass turned away asked for nothing
        await rig.controller.stop()

    run(scenario)


def test_passes_that_need_no_token_are_not_held_up_by_namespaces_at_a_slow_authority() -> None:
    """Namespaces whose credentials' authority never answers fill every place for passes waiting for a token; a
    Ready credential's template change elsewhere is rendered at once (no token needed)."""
    async def scenario() -> None:
        async with _slow_rig(max_waiting=4, token_concurrency=4) as (rig, _, slow):
            victim = _credential(rig, "victim", "v", str(uuid.uuid4()))
            await until(lambda: (rig.kube.ready("victim", "v") or {}).get("status") == "True", what="victim Ready")
            for namespace in ("h1", "h2", "h3", "h4"):
                for i in range(6):
                    _credential(rig, namespace, f"s{i}", slow)
            await until(lambda: rig.controller.passes_waiting() == (4, 20), what="every place taken")
            changed = {**victim, "metadata": {**victim["metadata"], "generation": 2},
                       "spec": {**victim["spec"], "secretTemplate": {"data": {"X": "Bearer {{ .accessToken }}"}}}}
            rig.controller.observe(changed)
            await until(lambda: any("X" in (secret.get("data") or {})
                                    for (namespace, _), secret in rig.kube.secrets.items() if namespace == "victim"),
                        what="the victim's Secret rendered again")

    run(scenario)


def test_a_revocation_is_not_held_up_by_the_namespace_s_own_waiting_passes() -> None:
    """team-b's user has 70 credentials at an authority that never answers; the admin withdraws team-b's
    permission for the platform's ClusterGraphApp: its token Secret for that app is deleted at once."""
    async def scenario() -> None:
        async with _slow_rig(max_waiting=16) as (rig, _, slow):
            platform(rig)
            tenant(rig, "team-b", {"graph": "yes"})
            await until(lambda: ("team-b", "mail-token") in rig.kube.secrets, what="team-b's token Secret")
            for i in range(70):
                _credential(rig, "team-b", f"s{i}", slow)
            await until(lambda: rig.controller.passes_waiting()[1] > 0, what="team-b's passes queued")
            rig.controller.namespace_event(rig.kube.put_namespace("team-b", {"graph": "no"}))
            await until(lambda: ("team-b", "mail-token") not in rig.kube.secrets,
                        what="team-b's Secret deleted after the relabel")

    run(scenario)


def test_a_queued_credential_gets_its_token_once_a_place_frees_and_a_deleted_one_gives_its_turn_up() -> None:
    async def scenario() -> None:
        async with _slow_rig(max_waiting=4, token_concurrency=4) as (rig, tokens, slow):
            for i in range(4):
                _credential(rig, f"h{i}", "s", slow)
            await until(lambda: rig.controller.passes_waiting() == (4, 0), what="every place taken")
            _credential(rig, "gone", "g", str(uuid.uuid4()))
            _credential(rig, "mine", "m", str(uuid.uuid4()))
            await until(lambda: rig.controller.passes_waiting() == (4, 2), what="two more queued")
            rig.controller.forget("gone", "g")
            assert rig.controller.passes_waiting() == (4, 1)
            started = time.monotonic()
            tokens.release.set()  # the slow authority answers: places free
            await until(lambda: (rig.kube.ready("mine", "m") or {}).get("status") == "True",
                        what="the queued credential Ready")
            assert time.monotonic() - started < 5
            await until(lambda: rig.controller.passes_waiting() == (0, 0), what="every place given back")

    run(scenario)


def test_a_renew_request_whose_pass_is_turned_away_is_served_by_the_pass_that_gets_the_place() -> None:
    """The pass took the request and then found no place: the request was dropped with it, and `graphcred renew`
    waited for good (the same annotation value is never served twice)."""
    async def scenario() -> None:
        async with _slow_rig(max_waiting=1, token_concurrency=1) as (rig, tokens, slow):
            mine = _credential(rig, "mine", "m", str(uuid.uuid4()))
            await until(lambda: (rig.kube.ready("mine", "m") or {}).get("status") == "True", what="Ready")
            first = rig.kube.statuses[("mine", "m")]["lastRefreshTime"]
            _credential(rig, "hog", "h", slow)  # holds the only place
            await until(lambda: rig.controller.passes_waiting() == (1, 0), what="the place taken")
            stored = {**mine, "status": rig.kube.statuses[("mine", "m")]}
            rig.controller.observe({**stored, "metadata": {**mine["metadata"],
                                                           "annotations": {RENEW_ANNOTATION: "r1"}}})
            await until(lambda: rig.controller.passes_waiting() == (1, 1), what="the renewing pass turned away")
            rig.clock.advance(1)
            tokens.release.set()
            await until(lambda: rig.kube.statuses[("mine", "m")].get("lastRenewRequest") == "r1", timeout=10,
                        what="the renew request served")
            assert rig.kube.statuses[("mine", "m")]["lastRefreshTime"] != first

    run(scenario)
