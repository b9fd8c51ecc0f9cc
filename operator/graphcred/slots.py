"""Who may send a token request now: fair shares of the token slots, a request budget per namespace, and the
controller's bound on passes in progress as one pass holds it.

Every namespace names its own authority host, and a host can answer one byte every few seconds: with one pool of
slots first come first served, one namespace's slow host held every slot and nobody else got a token. So no
namespace and no tenant-chosen authority host may hold more than `share` slots (a quarter by default); the clouds'
own login hosts are shared by every namespace and nobody can slow them for the others, so they have no cap of
their own. Within those shares waiters go first come first served, and a waiter whose shares are full never holds
up one behind it whose shares are not.

`FairSlots` and `RequestBudget` are pure (the caller passes the time); `SlotGate` is the asyncio wrapper.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import Counter
from collections.abc import AsyncIterator, Collection, Iterator
from dataclasses import dataclass, field

# Requests per namespace: a burst, then a steady rate. Enough for a namespace refreshing a few thousand one-hour
# tokens (a refresh each at half their lifetime); beyond it requests wait their turn, none is dropped.
BUDGET_BURST = 60.0
BUDGET_PER_MINUTE = 240.0


@dataclass(frozen=True)
class Claim:
    """What a token request counts against: its namespace, and its authority host (None: a cloud's own host, which
    has no share of its own)."""

    namespace: str
    host: str | None


def default_share(total: int) -> int:
    return max(1, total // 4)


@dataclass
class FairSlots:
    """`total` slots; no namespace and no (capped) host holds more than `share`. Waiters are tickets (any hashable
    the caller picks) admitted by `admit`, in arrival order among those whose shares have room."""

    total: int
    share: int = 0  # 0: default_share(total)
    _waiting: dict[object, Claim] = field(default_factory=dict)  # insertion order is arrival order
    _holding: dict[object, Claim] = field(default_factory=dict)
    _by_namespace: Counter[str] = field(default_factory=Counter)
    _by_host: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.total < 1:
            raise ValueError("at least one token slot")
        self.share = self.share or default_share(self.total)

    @property
    def held(self) -> int:
        return len(self._holding)

    def waiting(self) -> list[tuple[object, Claim]]:
        return list(self._waiting.items())

    def holding(self, claim: Claim) -> tuple[int, int]:
        """Slots held by the claim's namespace and by its host."""
        return self._by_namespace[claim.namespace], self._by_host[claim.host] if claim.host is not None else 0

    def room_for(self, claim: Claim) -> bool:
        """Would its shares allow one more (slots free or not)?"""
        in_namespace, on_host = self.holding(claim)
        return in_namespace < self.share and (claim.host is None or on_host < self.share)

    def arrive(self, ticket: object, claim: Claim) -> None:
        self._waiting[ticket] = claim

    def leave(self, ticket: object) -> None:
        """A waiter gave up (cancelled) before it was admitted."""
        self._waiting.pop(ticket, None)

    def release(self, ticket: object) -> None:
        claim = self._holding.pop(ticket, None)
        if claim is None:
            return
        self._by_namespace[claim.namespace] -= 1
        if not self._by_namespace[claim.namespace]:
            del self._by_namespace[claim.namespace]
        if claim.host is not None:
            self._by_host[claim.host] -= 1
            if not self._by_host[claim.host]:
                del self._by_host[claim.host]

    def admit(self) -> list[object]:
        """Give free slots to waiters, oldest first, skipping those whose namespace or host holds its share.
        Returns the tickets admitted now (they hold a slot until `release`)."""
        admitted: list[object] = []
        for ticket, claim in list(self._waiting.items()):
            if self.held >= self.total:
                break
            if not self.room_for(claim):
                continue
            del self._waiting[ticket]
            self._holding[ticket] = claim
            self._by_namespace[claim.namespace] += 1
            if claim.host is not None:
                self._by_host[claim.host] += 1
            admitted.append(ticket)
        return admitted


@dataclass
class RequestBudget:
    """A token bucket per namespace: `burst` requests at once, then `per_minute`. `reserve` takes one and says how
    long to wait for it (the debt is the queue: later callers wait longer); nothing is ever refused."""

    burst: float = BUDGET_BURST
    per_minute: float = BUDGET_PER_MINUTE
    _level: dict[str, tuple[float, float]] = field(default_factory=dict)  # namespace -> (tokens, as of)

    def reserve(self, namespace: str, now: float) -> float:
        rate = self.per_minute / 60.0
        tokens, since = self._level.get(namespace, (self.burst, now))
        tokens = min(self.burst, tokens + (now - since) * rate) - 1.0
        self._level[namespace] = (tokens, now)
        if len(self._level) > 1024:
            self._prune(now)
        return 0.0 if tokens >= 0 else -tokens / rate

    def _prune(self, now: float) -> None:
        """Namespaces whose bucket has refilled are as good as new: forget them (bounded memory)."""
        rate = self.per_minute / 60.0
        for namespace in [n for n, (t, s) in self._level.items() if t + (now - s) * rate >= self.burst]:
            del self._level[namespace]


class SlotGate:
    """The token slots for asyncio: `async with gate.slot(namespace, host)`. Hosts in `exempt` (the clouds' own)
    count against the namespace's share only."""

    def __init__(self, total: int, share: int = 0, *, exempt: Collection[str] = (),
                 budget: RequestBudget | None = None) -> None:
        self.fair = FairSlots(total, share)
        self.budget = budget if budget is not None else RequestBudget()
        self._exempt = frozenset(h.rstrip("/").lower() for h in exempt)
        self._futures: dict[object, asyncio.Future[None]] = {}

    def claim(self, namespace: str, host: str) -> Claim:
        host = host.rstrip("/").lower()
        return Claim(namespace, None if host in self._exempt else host)

    @contextlib.asynccontextmanager
    async def slot(self, namespace: str, host: str) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        wait = self.budget.reserve(namespace, loop.time())
        if wait > 0:
            await asyncio.sleep(wait)
        ticket, future = object(), loop.create_future()
        self._futures[ticket] = future
        self.fair.arrive(ticket, self.claim(namespace, host))
        self._admit()
        try:
            await future
        except BaseException:
            self._futures.pop(ticket, None)
            self.fair.leave(ticket)
            self.fair.release(ticket)  # admitted as it was cancelled: the slot goes to the next
            self._admit()
            raise
        try:
            yield
        finally:
            self.fair.release(ticket)
            self._admit()

    def _admit(self) -> None:
        for ticket in self.fair.admit():
            future = self._futures.pop(ticket)
            if not future.done():
                future.set_result(None)


class PassSlot:
    """One pass's place among the controller's passes in progress. A pass waiting for a token steps `aside`: it
    holds no place while it waits, so passes that need no token (a template change, a token still valid, a
    failure to report) are not held up behind requests to a slow authority."""

    def __init__(self, places: asyncio.Semaphore) -> None:
        self._places = places
        self.held = False

    async def __aenter__(self) -> PassSlot:
        await self._places.acquire()
        self.held = True
        return self

    async def __aexit__(self, *_: object) -> None:
        self._give_up()

    def _give_up(self) -> None:
        if self.held:
            self.held = False
            self._places.release()

    @contextlib.asynccontextmanager
    async def aside(self) -> AsyncIterator[None]:
        self._give_up()
        try:
            yield
        finally:
            await self._places.acquire()  # if cancelled here, `held` stays False and nothing is released twice
            self.held = True


# The PassSlot of the pass running in this task (set by the controller; None for a pass run directly).
current_pass: contextvars.ContextVar[PassSlot | None] = contextvars.ContextVar("graphcred_pass", default=None)


@contextlib.contextmanager
def running_as(slot: PassSlot) -> Iterator[None]:
    reset = current_pass.set(slot)
    try:
        yield
    finally:
        current_pass.reset(reset)


@contextlib.asynccontextmanager
async def stepped_aside() -> AsyncIterator[None]:
    """While waiting for a token: not counted among the passes in progress (if the controller runs this pass)."""
    slot = current_pass.get()
    if slot is None:
        yield
        return
    async with slot.aside():
        yield
