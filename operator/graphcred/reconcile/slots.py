"""The token slots and the controller's places for passes, for asyncio: `SlotGate` admits by the pure rules of
`admission` (fair shares per namespace and authority host, a request budget per namespace); `PassGate` bounds the
passes begun (fair shares per namespace); `PassSlot` is one pass's place, from which a pass waiting for a token
steps aside.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Collection, Iterator
from typing import cast

from graphcred.reconcile.admission import BegunPasses, Claim, FairSlots, RequestBudget

__all__ = ["BegunPasses", "Claim", "FairSlots", "PassGate", "PassSlot", "RequestBudget", "SlotGate", "current_pass",
           "running_as", "stepped_aside"]


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


class PassGate:
    """`BegunPasses` for asyncio: `await gate.begin(namespace)` before a pass, `gate.end(namespace)` after it."""

    def __init__(self, total: int, share: int) -> None:
        self.passes = BegunPasses(total, share)
        self._waiting: dict[asyncio.Future[None], str] = {}  # the waiters' futures are their tickets

    async def begin(self, namespace: str) -> None:
        future = asyncio.get_running_loop().create_future()
        self._waiting[future] = namespace
        self.passes.arrive(future, namespace)
        self._admit()
        try:
            await future
        except BaseException:
            if self._waiting.pop(future, None) is not None:
                self.passes.leave(future)
            elif not future.cancelled():
                self.end(namespace)  # admitted as it was cancelled: the place goes to the next
            raise  # (a cancelled future that was admitted was given back by _admit)

    def end(self, namespace: str) -> None:
        self.passes.release(namespace)
        self._admit()

    def _admit(self) -> None:
        admitted = self.passes.admit()
        while admitted:
            for ticket in admitted:
                future = cast("asyncio.Future[None]", ticket)
                namespace = self._waiting.pop(future)
                if future.done():  # cancelled meanwhile: nobody to begin
                    self.passes.release(namespace)
                else:
                    future.set_result(None)
            admitted = self.passes.admit()


class PassSlot:
    """One pass's place among the controller's passes: begun (`gate`: a bounded number at once, fairly by
    namespace) and in progress (`places`). A pass waiting for a token steps `aside`: it holds no place in progress
    while it waits, so passes that need no token (a template change, a token still valid, a failure to report) are
    not held up behind requests to a slow authority; it stays begun."""

    def __init__(self, places: asyncio.Semaphore, gate: PassGate | None = None, namespace: str = "") -> None:
        self._places = places
        self._gate = gate
        self._namespace = namespace
        self.held = False

    async def __aenter__(self) -> PassSlot:
        if self._gate is not None:
            await self._gate.begin(self._namespace)
        try:
            await self._places.acquire()
        except BaseException:
            if self._gate is not None:
                self._gate.end(self._namespace)
            raise
        self.held = True
        return self

    async def __aexit__(self, *_: object) -> None:
        self._give_up()
        if self._gate is not None:
            self._gate.end(self._namespace)

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
