from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from graphcred.acquire.jwt import TokenClaims
from graphcred.acquire.sharing import SharedTokens
from graphcred.acquire.tokens import AcquisitionError, Token
from graphcred.api.model import Reason

from .fakes import T0, Clock


def _token(issued: dt.datetime, n: int) -> Token:
    return Token(access_token=f"tok-{n}", issued_at=issued, expires_on=issued + dt.timedelta(hours=1),
                 claims=TokenClaims(None, None, None, (), None))


def test_concurrent_callers_share_one_acquisition_then_reuse_within_the_window() -> None:
    clock = Clock()
    shared = SharedTokens(window=0.1, clock=clock)
    calls = 0

    async def acquire() -> Token:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return _token(clock.now, calls)

    async def scenario() -> None:
        results = await asyncio.gather(*(shared.get("k", acquire) for _ in range(5)))
        assert calls == 1
        assert [shared for _, shared in results].count(False) == 1
        assert {t.access_token for t, _ in results} == {"tok-1"}
        clock.now = T0 + dt.timedelta(minutes=5)  # within 10 % of an hour
        assert (await shared.get("k", acquire))[0].access_token == "tok-1"
        assert (await shared.get("k", acquire, reuse=False))[0].access_token == "tok-2"
        clock.now = T0 + dt.timedelta(minutes=30)  # a refresh: past the window, a new token
        assert (await shared.get("k", acquire))[0].access_token == "tok-3"
        assert (await shared.get("other", acquire))[0].access_token == "tok-4"

    asyncio.run(scenario())


def test_a_failure_reaches_every_waiter_and_is_not_cached() -> None:
    shared = SharedTokens(window=0.1, clock=Clock())
    calls = 0

    async def failing() -> Token:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise AcquisitionError(Reason.THROTTLED, "429",
                               permanent=False)

    async def scenario() -> None:
        results = await asyncio.gather(*(shared.get("k", failing) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, AcquisitionError) for r in results)
        assert calls == 1
        with pytest.raises(AcquisitionError):
            await shared.get("k", failing)
        assert calls == 2

    asyncio.run(scenario())
