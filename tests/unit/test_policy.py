from __future__ import annotations

import datetime as dt
import random

import pytest

from graphcred.api.model import Reason
from graphcred.base.backoff import BACKOFF_CAP, RETRY_AFTER_CAP, backoff
from graphcred.reconcile import policy
from graphcred.reconcile.policy import Retry

T0 = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize("seed", range(20))
def test_refresh_at_half_life_with_jitter_only_earlier(seed: int) -> None:
    at = policy.refresh_at(T0, T0 + dt.timedelta(hours=1), None, random.Random(seed))
    assert T0 + dt.timedelta(minutes=27) <= at <= T0 + dt.timedelta(minutes=30)


def test_refresh_before_expiry_is_honoured() -> None:
    at = policy.refresh_at(T0, T0 + dt.timedelta(hours=1), dt.timedelta(minutes=10), random.Random(0))
    assert T0 + dt.timedelta(minutes=45) <= at <= T0 + dt.timedelta(minutes=50)


def test_refresh_before_longer_than_lifetime_falls_back_to_half_life() -> None:
    at = policy.refresh_at(T0, T0 + dt.timedelta(hours=1), dt.timedelta(hours=2), random.Random(0))
    assert T0 + dt.timedelta(minutes=27) <= at <= T0 + dt.timedelta(minutes=30)


def test_refresh_is_never_immediate_for_short_tokens() -> None:
    at = policy.refresh_at(T0, T0 + dt.timedelta(seconds=20), dt.timedelta(seconds=19), random.Random(0))
    assert at >= T0 + dt.timedelta(seconds=5)


def test_backoff_grows_exponentially_and_is_capped() -> None:
    rng = random.Random(1)
    delays = [backoff(n, None, rng) for n in range(1, 12)]
    assert 1.0 <= delays[0] <= 2.0
    assert 8.0 <= delays[3] <= 16.0
    assert all(d <= BACKOFF_CAP for d in delays)
    assert delays[-1] >= BACKOFF_CAP / 2


def test_backoff_honours_retry_after() -> None:
    assert backoff(1, 42.0, random.Random(0)) == 42.0


def test_missing_roles_named_in_order() -> None:
    assert policy.missing_roles(["A"], ["B", "A", "C"]) == ["B", "C"]
    verdict = policy.issued_verdict(["A"], ["A", "Mail.Read"], "s", T0)
    assert (verdict.ready, verdict.reason) == (False, Reason.MISSING_ROLES)
    assert "Mail.Read" in verdict.message
    assert policy.issued_verdict(["A"], ["A"], "s", T0).ready


def test_needs_user_retries_slow_down_to_hourly_and_try_once_before_expiry() -> None:
    rng = random.Random(0)
    delays = [policy.retry_delay(Retry.NEEDS_USER, n, None, T0, None, rng) or 0 for n in (1, 2, 3, 9)]
    assert 270 <= delays[0] <= 330 and 810 <= delays[1] <= 990 and 3240 <= delays[2] <= 3960
    assert 3240 <= delays[3] <= 3960
    soon = policy.retry_delay(Retry.NEEDS_USER, 3, None, T0, T0 + dt.timedelta(minutes=20), rng)
    assert soon == 20 * 60 - policy.LAST_CHANCE_BEFORE_EXPIRY
    assert policy.retry_delay(Retry.ON_CHANGE, 1, None, T0, None, rng) is None


def test_transient_retries_come_every_30_s_at_most_once_the_token_expired() -> None:
    rng = random.Random(0)
    for n in range(1, 20):
        delay = policy.retry_delay(Retry.TRANSIENT, n, None, T0, None, rng)
        assert delay is not None and delay <= policy.EXPIRED_RETRY
    assert policy.retry_delay(Retry.TRANSIENT, 1, 120.0, T0, None, rng) == 120.0  # Retry-After wins
    # ... up to a cap: a proxy's "Retry-After: 86400" must not hold a credential for a day
    assert policy.retry_delay(Retry.TRANSIENT, 1, 86400.0, T0, None, rng) == RETRY_AFTER_CAP
    valid = T0 + dt.timedelta(hours=1)
    assert (policy.retry_delay(Retry.TRANSIENT, 12, None, T0, valid, rng) or 0) > policy.EXPIRED_RETRY


def test_a_transient_retry_is_never_put_off_past_the_last_good_tokens_expiry() -> None:
    """Fault soak: after its 7th failure in a row a credential with 32 s of its token left waited 93 s, so its
    Secret held an expired token for a minute although the authority answered again."""
    rng = random.Random(0)
    for n in range(1, 20):
        for left in (3.0, 32.0, 250.0):
            delay = policy.retry_delay(Retry.TRANSIENT, n, None, T0, T0 + dt.timedelta(seconds=left), rng)
            assert delay is not None and delay < left, (n, left, delay)
    # a Retry-After still wins (up to its cap): the authority asked for it
    assert policy.retry_delay(Retry.TRANSIENT, 7, 90.0, T0, T0 + dt.timedelta(seconds=32), rng) == 90.0


def test_transient_retries_leave_several_tries_before_the_last_good_token_expires() -> None:
    """Fault soak (seed 1): an authority outage made a credential fail five times in a row; the sixth try came 32 s
    later, 10 s before its token expired, and met an apiserver restart: the token expired. However many failures
    came before, the next try now leaves two thirds of what is left of the token's life for the tries after it."""
    for seed in range(20):
        rng = random.Random(seed)
        for failures in (1, 5, 9, 30):
            for left in (2.0, 10.0, 41.0, 600.0, 3000.0):
                delay = policy.retry_delay(Retry.TRANSIENT, failures, None, T0, T0 + dt.timedelta(seconds=left), rng)
                assert delay is not None and delay <= max(left / 3, 1.0), (seed, failures, left, delay)


def test_backoff_after_days_of_failures_stays_at_its_cap() -> None:
    # 2 ** failures overflowed a float after ~1,024 failures in a row (3.5 days at the 300 s cap): the pass that
    # reports the failure raised instead, and so did its error report, and the worker died.
    for failures in (1_024, 1_100, 100_000):
        assert BACKOFF_CAP / 2 <= backoff(failures) <= BACKOFF_CAP
    delay = policy.retry_delay(policy.Retry.TRANSIENT, 5_000, None, dt.datetime(2026, 1, 1, tzinfo=dt.UTC), None,
                               random.Random(1))
    assert delay is not None and delay <= BACKOFF_CAP
