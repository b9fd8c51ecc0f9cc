"""The token slots and the controller's places for passes, for asyncio: `SlotGate` admits by the pure rules of
`admission` (fair shares per namespace and authority host, a request budget per namespace); `PassSlot` is one
pass's place in progress, from which a pass waiting for a token steps aside into one of the places for passes
waiting for a token (`TokenPlaceGate`: bounded, fair by namespace).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Collection, Iterator
from typing import Protocol, cast

from graphcred.reconcile.admission import Claim, FairSlots, RequestBudget, TokenPlaces

__all__ = ["Claim", "FairSlots", "PassSlot", "RequestBudget", "SlotGate", "TokenPlaceGate", "TokenPlaces",
           "TurnedAway", "current_pass", "running_as", "stepped_aside"]


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
    async def slot(self, namespace: str, host: str, who: str | None = None) -> AsyncIterator[None]:
        """`who`: the credential asking (its name), so that a namespace's budget grows with its credentials."""
        loop = asyncio.get_running_loop()
        wait = self.budget.reserve(namespace, loop.time(), who)
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


class TurnedAway(Exception):
    """A pass about to wait for a token found no place (`TokenPlaces`): it ends there, as if it had not begun, and
    reports nothing; its worker's wake-up is set when a place is reserved for it, and the next pass takes it."""


class Wakeable(Protocol):
    def set(self) -> None: ...


class TokenPlaceGate:
    """`TokenPlaces` for asyncio. The tickets are the workers' wake-ups, set when a place is reserved for them."""

    def __init__(self, total: int, share: int) -> None:
        self.places = TokenPlaces(total, share)

    def take(self, ticket: Wakeable, namespace: str) -> bool:
        return self.places.take(ticket, namespace)

    def release(self, namespace: str) -> None:
        self.places.release(namespace)
        self._admit()

    def forget(self, ticket: Wakeable) -> None:
        self.places.forget(ticket)
        self._admit()

    def _admit(self) -> None:
        for ticket in self.places.admit():
            cast(Wakeable, ticket).set()


class PassSlot:
    """One pass's place among the controller's passes in progress. A pass waiting for a token steps `aside`: it
    holds no place in progress while it waits, so passes that need no token (a template change, a token still valid,
    a failure to report) are not held up behind requests to a slow authority. It takes one of the places for passes
    waiting for a token instead (`waits`, bounded, fair by namespace; `ticket` and `namespace` are its worker's), or
    is `TurnedAway` when there is none."""

    def __init__(self, places: asyncio.Semaphore, waits: TokenPlaceGate | None = None,
                 ticket: Wakeable | None = None, namespace: str = "") -> None:
        self._places = places
        self._waits = waits if ticket is not None else None
        self._ticket = ticket
        self._namespace = namespace
        self.held = False
        self.turned_away = False

    async def __aenter__(self) -> PassSlot:
        await self._places.acquire()
        self.held = True
        return self

    async def __aexit__(self, *_: object) -> None:
        self._give_up()
        if self._waits is not None and self._ticket is not None and not self.turned_away:
            # a pass that ended without waiting for a place (it took one, or needed none): the worker waits for one
            # no longer (a place reserved for it goes to the next; a turn it queued for earlier is given up)
            self._waits.forget(self._ticket)

    def _give_up(self) -> None:
        if self.held:
            self.held = False
            self._places.release()

    @contextlib.asynccontextmanager
    async def aside(self) -> AsyncIterator[None]:
        waits = self._waits
        if waits is not None and self._ticket is not None and not waits.take(self._ticket, self._namespace):
            self.turned_away = True
            raise TurnedAway
        self._give_up()
        try:
            yield
        finally:
            if waits is not None:
                waits.release(self._namespace)
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
