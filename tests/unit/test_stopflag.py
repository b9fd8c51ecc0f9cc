"""The stop flag handed to kopf: raised from another thread (the Lease renewer's) before or while kopf runs."""

from __future__ import annotations

import asyncio
import threading

from graphcred.app.stopflag import StopFlag


def test_a_stop_requested_before_kopf_starts_is_seen_at_once() -> None:
    flag = StopFlag()
    flag.set()

    async def main() -> bool:
        return flag.bind().is_set()

    assert asyncio.run(main())


def test_a_stop_from_another_thread_wakes_the_loop() -> None:
    flag = StopFlag()

    async def main() -> None:
        event = flag.bind()
        threading.Thread(target=flag.set).start()
        await asyncio.wait_for(event.wait(), timeout=5)

    asyncio.run(main())


def test_a_stop_after_the_loop_closed_is_harmless() -> None:
    flag = StopFlag()

    async def main() -> None:
        flag.bind()

    asyncio.run(main())
    flag.set()  # the renewer may lose the Lease after kopf has already exited
