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
class _Queue:
    waiting: dict[object, None] = field(default_factory=dict)  # tickets in arrival order (removal in O(1))
    held: int = 0
    listed: bool = False  # in `TokenPlaces._turns`


@dataclass
class TokenPlaces:
    """Places for passes waiting for a token (or getting one): at most `total` at once, no namespace more than
    `share`. A pass about to wait `take`s one; when there is none, its worker's ticket queues in its namespace, and
    `admit` reserves places for queued tickets as they free: the namespaces with room in turn (round robin), each
    namespace's tickets oldest first.

    A pass waiting for a token holds its parsed spec, its read and its coroutines (about 20 KiB); in a burst of
    10,000 new credentials nearly all of them waited at once (bench scale: 270 MiB). A queued ticket is a few
    hundred bytes. Passes that need no token never take a place, so nothing here holds them up. Round robin, not
    oldest-first across namespaces: a namespace at its share that frees a place would otherwise take it back ahead
    of everyone who came after its backlog."""

    total: int
    share: int
    held: int = 0
    _queues: dict[str, _Queue] = field(default_factory=dict)
    _turns: deque[str] = field(default_factory=deque)  # namespaces with a queued ticket and room, in turn
    _reserved: dict[object, str] = field(default_factory=dict)  # admitted tickets, not yet taken -> namespace
    _queued: dict[object, str] = field(default_factory=dict)  # queued tickets -> namespace

    def __post_init__(self) -> None:
        if self.total < 1 or self.share < 1:
            raise ValueError("at least one place, and one per namespace")

    def take(self, ticket: object, namespace: str) -> bool:
        """A pass is about to wait for a token. True: it holds a place now (one reserved for its ticket, or a free
        one); False: its ticket is queued (or stays queued, keeping its turn), to be `admit`ted."""
        if self._reserved.pop(ticket, None) is not None:
            return True
        queue = self._queues.setdefault(namespace, _Queue())
        if ticket not in queue.waiting and self.held < self.total and queue.held < self.share:
            # room, so nobody waits who could have it (`admit` runs at each release)
            queue.held += 1
            self.held += 1
            return True
        queue.waiting.setdefault(ticket)
        self._queued[ticket] = namespace
        self._list(namespace, queue)
        return False

    def release(self, namespace: str) -> None:
        """A place given back: its pass waits for a token no longer."""
        queue = self._queues[namespace]
        queue.held -= 1
        self.held -= 1
        self._list(namespace, queue)

    def forget(self, ticket: object) -> None:
        """The ticket's worker is gone, or its pass ended without waiting for a place: its place reserved or its
        turn in the queue goes to the next."""
        namespace = self._reserved.pop(ticket, None)
        if namespace is not None:
            self.release(namespace)
            return
        namespace = self._queued.pop(ticket, None)
        if namespace is not None:
            queue = self._queues[namespace]
            del queue.waiting[ticket]
            self._list(namespace, queue)

    def admit(self) -> list[object]:
        """Reserve free places for queued tickets, a namespace with room at a time. Returns those tickets: each
        holds its place until its pass `take`s it and `release`s it, or `forget`s it."""
        admitted: list[object] = []
        while self.held < self.total and self._turns:
            namespace = self._turns.popleft()
            queue = self._queues[namespace]
            queue.listed = False
            if queue.waiting and queue.held < self.share:
                ticket = next(iter(queue.waiting))
                del queue.waiting[ticket]
                del self._queued[ticket]
                queue.held += 1
                self.held += 1
                self._reserved[ticket] = namespace
                admitted.append(ticket)
            self._list(namespace, queue)  # to the back of the turns, if it still has a ticket and room
        return admitted

    def queued(self) -> int:
        return len(self._queued)

    def _list(self, namespace: str, queue: _Queue) -> None:
        if queue.waiting and queue.held < self.share:
            if not queue.listed:
                self._turns.append(namespace)
                queue.listed = True
        elif not queue.waiting and not queue.held and not queue.listed:
            del self._queues[namespace]
