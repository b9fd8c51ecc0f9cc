"""A total deadline for one exchange with an authority, enforced by shutting its sockets down.

Socket timeouts apply to each read, so an authority that sends one byte every few seconds (in the TLS handshake,
the headers or the body) never trips them. An `Exchange` knows the sockets opened or used on its thread while it
runs; one watchdog thread shuts them down when the deadline passes, and the blocked read returns at once. A
connection shut down this way and returned to the pool is seen as dropped there and replaced (urllib3 checks
each pooled connection before reuse).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)
_local = threading.local()


class Exchange:
    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self.deadline = clock() + seconds
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.expired = False
        self.finished = False

    def remaining(self) -> float:
        return self.deadline - self._clock()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self.expired:
                _shut(sock)
            elif sock not in self._sockets:
                self._sockets.append(sock)

    def expire(self) -> None:
        with self._lock:
            if self.finished or self.expired:
                return
            self.expired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shut(sock)

    def finish(self) -> None:
        with self._lock:
            self.finished = True
            self._sockets = []


def _shut(sock: socket.socket) -> None:
    # the plain socket's shutdown, also for an SSLSocket: unblocks a read in another thread without touching the
    # TLS state that thread is using. Through an https proxy urllib3's SSLTransport wraps the socket: its `socket`.
    # OSError: already closed, nothing blocks on it; TypeError: not a socket after all (never fatal to the watchdog).
    with contextlib.suppress(OSError, TypeError):
        socket.socket.shutdown(getattr(sock, "socket", sock), socket.SHUT_RDWR)


class _Watchdog:
    """One thread for all exchanges: expires each at its deadline unless it finished first."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Exchange]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def arm(self, exchange: Exchange) -> None:
        with self._wake:
            heapq.heappush(self._heap, (exchange.deadline, next(self._order), exchange))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="graphcred-deadlines", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._heap and self._heap[0][2].finished:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._wake.wait()
                    continue
                when, _, exchange = self._heap[0]
                wait = when - time.monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                heapq.heappop(self._heap)
            try:
                exchange.expire()
            except Exception:  # the one watchdog of every exchange must outlive any one of them
                log.exception("the deadline of an exchange could not be enforced")


_WATCHDOG = _Watchdog()


@contextmanager
def exchange(seconds: float) -> Iterator[Exchange]:
    """Run the block as one exchange of at most `seconds` on this thread (nested: the outer one holds)."""
    outer: Exchange | None = getattr(_local, "exchange", None)
    if outer is not None and not outer.finished:
        yield outer
        return
    current = Exchange(seconds)
    _local.exchange = current
    _WATCHDOG.arm(current)
    try:
        yield current
    finally:
        current.finish()
        _local.exchange = None


def current() -> Exchange | None:
    found: Exchange | None = getattr(_local, "exchange", None)
    return found


def watch(sock: socket.socket) -> None:
    """A socket the current exchange uses (no exchange: nothing to watch)."""
    found = current()
    if found is not None:
        found.watch(sock)
