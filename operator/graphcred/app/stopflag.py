"""A stop flag for kopf that any thread can raise (the Lease renewer's, on losing leadership)."""

from __future__ import annotations

import asyncio
import contextlib
import threading


class StopFlag:
    """Asks kopf to stop, from any thread (the Lease renewer's). kopf awaits a threading.Event flag with a
    default-executor thread that returns only when the flag is set: stopped by SIGTERM instead, the process then
    hung at exit (asyncio.run joins that thread) until the kubelet's SIGKILL, without releasing the Lease. An
    asyncio.Event is awaited on the loop itself."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requested = False
        self._bound: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def bind(self) -> asyncio.Event:
        """The flag for kopf; call in the running loop."""
        event = asyncio.Event()
        with self._lock:
            self._bound = (asyncio.get_running_loop(), event)
            if self._requested:
                event.set()
        return event

    def set(self) -> None:
        with self._lock:
            self._requested = True
            bound = self._bound
        if bound is not None:
            loop, event = bound
            with contextlib.suppress(RuntimeError):  # the loop has already closed: nothing left to stop
                loop.call_soon_threadsafe(event.set)
