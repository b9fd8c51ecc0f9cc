"""Who may send a token request now: fair shares of the token slots and a request budget per namespace. Pure: the
caller passes the time; `slots` is the asyncio side.

Every namespace names its own authority host, and a host can answer one byte every few seconds: with one pool of
slots first come first served, one namespace's slow host held every slot and nobody else got a token. So no
namespace and no tenant-chosen authority host may hold more than `share` slots (a quarter by default); the clouds'
own login hosts are shared by every namespace and nobody can slow them for the others, so they have no cap of
their own. Within those shares waiters go first come first served, and a waiter whose shares are full never holds
up one behind it whose shares are not.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from dataclasses import dataclass, field

# Requests per namespace: a burst, then a steady rate, each raised by one per credential of the namespace seen in
# the last hour (SEEN_FOR): a namespace of 10,000 credentials converges and refreshes as fast as one of ten, while
# a few credentials renewed or re-specified in a loop are paced. Beyond it requests wait their turn, none is dropped
# (docs/design/2026-12-06-sharing-breakers-fair-slots.md).
BUDGET_BURST = 60.0
BUDGET_PER_MINUTE = 240.0
SEEN_FOR = 3600.0  # a credential counts this long after its last request (one-hour tokens refresh every 30 min)
PRUNE_FROM = 1024  # namespaces known to a budget before it forgets the idle ones


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
        # no copy of the waiters: with thousands waiting (a burst), each freed slot copied them all
        for ticket, claim in self._waiting.items():
            if self.held >= self.total:
                break
            if not self.room_for(claim):
                continue
            self._holding[ticket] = claim
            self._by_namespace[claim.namespace] += 1
            if claim.host is not None:
                self._by_host[claim.host] += 1
            admitted.append(ticket)
        for ticket in admitted:
            del self._waiting[ticket]
        return admitted


@dataclass
class RequestBudget:
    """A token bucket per namespace: `burst` requests at once, then `per_minute`, each raised by one per credential
    (`who`) of the namespace seen in the last SEEN_FOR seconds; a credential seen for the first time brings its own
    request with it. `reserve` takes one and says how long to wait for it (the debt is the queue: later callers wait
    longer); nothing is ever refused."""

    burst: float = BUDGET_BURST
    per_minute: float = BUDGET_PER_MINUTE
    _level: dict[str, tuple[float, float]] = field(default_factory=dict)  # namespace -> (tokens, as of)
    _seen: dict[str, dict[str, float]] = field(default_factory=dict)  # namespace -> credential -> last request
    # prune when this many namespaces are known, then at twice what the prune left: with more namespaces active at
    # once than a fixed limit, pruning at each request made every request walk them all (10,000 namespaces: 10^8
    # steps to converge)
    _prune_at: int = PRUNE_FROM

    def reserve(self, namespace: str, now: float, who: str | None = None) -> float:
        seen = self._seen.setdefault(namespace, {})
        first = who is not None and who not in seen
        if who is not None:
            seen[who] = now
            if first and len(seen) & (len(seen) - 1) == 0:  # at each power of two: forget the long gone
                for name in [n for n, t in seen.items() if now - t > SEEN_FOR]:
                    del seen[name]
        burst = self.burst + len(seen)
        rate = (self.per_minute + len(seen)) / 60.0
        tokens, since = self._level.get(namespace, (burst, now))
        tokens = min(burst, tokens + (now - since) * rate + (1.0 if first else 0.0)) - 1.0
        self._level[namespace] = (tokens, now)
        if len(self._level) > self._prune_at:
            self._prune(now)
            self._prune_at = max(PRUNE_FROM, 2 * len(self._level))
        return 0.0 if tokens >= 0 else -tokens / rate

    def _prune(self, now: float) -> None:
        """Namespaces whose bucket has refilled and whose credentials are long gone are as good as new: forget
        them (bounded memory)."""
        rate = self.per_minute / 60.0
        for namespace in [n for n, (t, s) in self._level.items() if t + (now - s) * rate >= self.burst]:
            seen = self._seen.get(namespace, {})
            if all(now - t > SEEN_FOR for t in seen.values()):
                del self._level[namespace]
                self._seen.pop(namespace, None)


@dataclass
class _Namespace:
    waiting: deque[tuple[int, object]] = field(default_factory=deque)  # (arrival, ticket), oldest first
    held: int = 0
    listed: bool = False  # has an entry in `BegunPasses._ready`


@dataclass
class BegunPasses:
    """Passes begun at once, in a burst or behind slow authorities: at most `total`, no namespace more than `share`.
    Waiters are tickets admitted by `admit`, oldest first among the namespaces with room.

    A pass waiting for a token holds its parsed spec, its read and its coroutines (about 20 KiB); in a burst of
    10,000 new credentials nearly all of them waited at once (bench scale: 270 MiB). Beyond `total`, a pass waits
    before it begins, at the cost of a ticket. Waiters queue per namespace and the namespaces with room are kept in
    arrival order of their oldest waiter, so that admitting one looks at a few entries, not at every waiter of a
    namespace holding its share (a tenant's 50,000 credentials would make each admission walk them all)."""

    total: int
    share: int
    held: int = 0
    _namespaces: dict[str, _Namespace] = field(default_factory=dict)
    _ready: list[tuple[int, str]] = field(default_factory=list)  # heap: (arrival of its oldest waiter, namespace)
    _gone: set[object] = field(default_factory=set)  # tickets that left while waiting (skipped when reached)
    _arrivals: int = 0

    def __post_init__(self) -> None:
        if self.total < 1 or self.share < 1:
            raise ValueError("at least one pass, and one per namespace")

    def arrive(self, ticket: object, namespace: str) -> None:
        self._arrivals += 1
        queue = self._namespaces.setdefault(namespace, _Namespace())
        queue.waiting.append((self._arrivals, ticket))
        self._list(namespace, queue)

    def leave(self, ticket: object) -> None:
        """A waiter gave up (cancelled) before it was admitted."""
        self._gone.add(ticket)

    def release(self, namespace: str) -> None:
        queue = self._namespaces[namespace]
        queue.held -= 1
        self.held -= 1
        self._list(namespace, queue)

    def admit(self) -> list[object]:
        """Begin waiting passes while there is room: the oldest waiter of the namespace whose oldest waiter came
        first, among the namespaces below their share. Returns the tickets admitted now (each held until
        `release` of its namespace)."""
        admitted: list[object] = []
        while self.held < self.total and self._ready:
            arrival, namespace = heapq.heappop(self._ready)
            queue = self._namespaces[namespace]
            queue.listed = False
            while queue.waiting and queue.waiting[0][1] in self._gone:
                self._gone.discard(queue.waiting.popleft()[1])
            if not queue.waiting or queue.held >= self.share:
                self._list(namespace, queue)  # forgets an idle namespace
                continue
            if queue.waiting[0][0] != arrival:  # its oldest waiter left: it queues as its next waiter now
                self._list(namespace, queue)
                continue
            admitted.append(queue.waiting.popleft()[1])
            queue.held += 1
            self.held += 1
            self._list(namespace, queue)
        return admitted

    def waiting(self) -> int:
        return sum(len(q.waiting) for q in self._namespaces.values()) - len(self._gone)

    def _list(self, namespace: str, queue: _Namespace) -> None:
        if queue.waiting and queue.held < self.share:
            if not queue.listed:
                heapq.heappush(self._ready, (queue.waiting[0][0], namespace))
                queue.listed = True
        elif not queue.waiting and not queue.held and not queue.listed:
            del self._namespaces[namespace]
