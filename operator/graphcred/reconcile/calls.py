"""The Kubernetes calls of a pass, made in the I/O threads."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from graphcred.reconcile.ports import KubePort

T = TypeVar("T")


class KubeCalls:
    """`Kube`'s blocking calls run in the operator's threads. Expected answers are handled by `Kube` (None on 404,
    Conflict, Gone); anything else is a KubeError naming the call and its HTTP status, which ends the pass as an
    internal error."""

    def __init__(self, kube: KubePort, run_blocking: Callable[..., Awaitable[Any]] | None = None) -> None:
        self.kube = kube
        self._run_blocking = run_blocking or asyncio.to_thread

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        result: T = await self._run_blocking(fn, *args)
        return result

    async def __call__(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """`what` names the call where it is made; Kube's errors name it themselves."""
        return await self.blocking(fn, *args)
