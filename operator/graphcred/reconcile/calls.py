"""The Kubernetes calls of a pass, made in the I/O threads."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from graphcred.reconcile.ports import KubePort

T = TypeVar("T")


class KubeCalls:
    """`Kube`'s blocking calls run in the operator's threads, or on the loop where `on_loop` has a coroutine for
    the method (by name: the calls passes make most, kube/loopcalls.py). Expected answers are handled by `Kube` (None
    on 404, Conflict, Gone); anything else is a KubeError naming the call and its HTTP status, which ends the pass as
    an internal error."""

    def __init__(self, kube: KubePort, run_blocking: Callable[..., Awaitable[Any]] | None = None,
                 on_loop: Mapping[str, Callable[..., Awaitable[Any]]] | None = None) -> None:
        self.kube = kube
        self._run_blocking = run_blocking or asyncio.to_thread
        # the function behind each of `kube`'s methods that has a coroutine: a bound method compares by it
        self._on_loop = {getattr(type(kube), name): call for name, call in (on_loop or {}).items()}

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        result: T = await self._run_blocking(fn, *args)
        return result

    async def __call__(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """`what` names the call where it is made; Kube's errors name it themselves."""
        call = self._on_loop.get(getattr(fn, "__func__", None)) if getattr(fn, "__self__", None) is self.kube \
            else None
        if call is not None:
            result: T = await call(*args)
            return result
        return await self.blocking(fn, *args)
