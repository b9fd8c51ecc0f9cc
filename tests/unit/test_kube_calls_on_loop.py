"""KubeCalls sends a pass's call to the coroutine made for it on the loop (`LoopKube`'s, by the method's name), and
every other call to the threads: the methods of another object of the same class too."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from graphcred.reconcile.calls import KubeCalls


class Calls:
    def read_secret(self, namespace: str, name: str) -> str:
        return f"thread {threading.get_ident()}"

    def read_service_account(self, namespace: str, name: str) -> str:
        return f"thread {threading.get_ident()}"


def test_the_calls_with_a_coroutine_run_on_the_loop_and_the_others_in_threads() -> None:
    kube, other = Calls(), Calls()

    async def on_loop(namespace: str, name: str) -> Any:
        return f"loop {threading.get_ident()}:{namespace}/{name}"

    async def scenario() -> None:
        here = threading.get_ident()
        calls = KubeCalls(kube, on_loop={"read_secret": on_loop})  # type: ignore[arg-type]
        assert await calls("read Secret", kube.read_secret, "ns", "s") == f"loop {here}:ns/s"
        assert await calls("read ServiceAccount", kube.read_service_account, "ns", "sa") != f"thread {here}"
        assert await calls("read Secret", other.read_secret, "ns", "s") != f"thread {here}", "another Kube's"
        plain = KubeCalls(kube)  # type: ignore[arg-type]
        assert (await plain("read Secret", kube.read_secret, "ns", "s")).startswith("thread ")
        assert await plain("read Secret", kube.read_secret, "ns", "s") != f"thread {here}"

    asyncio.run(scenario())
