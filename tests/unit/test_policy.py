from __future__ import annotations

import datetime as dt
import random

import pytest

from graphcred import policy
from graphcred.model import Reason

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
    delays = [policy.backoff(n, None, rng) for n in range(1, 12)]
    assert 1.0 <= delays[0] <= 2.0
    assert 8.0 <= delays[3] <= 16.0
    assert all(d <= policy.BACKOFF_CAP for d in delays)
    assert delays[-1] >= policy.BACKOFF_CAP / 2


def test_backoff_honours_retry_after() -> None:
    assert policy.backoff(1, 42.0, random.Random(0)) == 42.0


def test_missing_roles_named_in_order() -> None:
    assert policy.missing_roles(["A"], ["B", "A", "C"]) == ["B", "C"]
    verdict = policy.issued_verdict(["A"], ["A", "Mail.Read"], "s", T0)
    assert (verdict.ready, verdict.reason) == (False, Reason.MISSING_ROLES)
    assert "Mail.Read" in verdict.message
    assert policy.issued_verdict(["A"], ["A"], "s", T0).ready


def test_may_resume_only_with_matching_generation_credential_and_valid_token() -> None:
    good = dict(generation=2, observed_generation=2, refresh_at_time=T0 + dt.timedelta(minutes=10),
                secret_expiry=T0 + dt.timedelta(minutes=30), credential_version="7", current_credential_version="7")
    assert policy.may_resume(T0, **good)  # type: ignore[arg-type]
    for change in ({"observed_generation": 1}, {"current_credential_version": "8"},
                   {"secret_expiry": T0 + dt.timedelta(seconds=3)}, {"refresh_at_time": None},
                   {"refresh_at_time": T0 + dt.timedelta(hours=1)}):
        assert not policy.may_resume(T0, **{**good, **change})  # type: ignore[arg-type]
