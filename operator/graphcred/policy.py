"""Pure decisions: when to refresh, how long to back off, which condition to report. No I/O here."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from dataclasses import dataclass

from .model import Reason

MIN_REFRESH_DELAY = dt.timedelta(seconds=5)  # never refresh sooner than this after an issue
JITTER_FRACTION = 0.1  # refresh up to 10% of the wait earlier, spreading thousands of credentials
BACKOFF_BASE = 2.0
BACKOFF_CAP = 300.0
MISSING_ROLES_RETRY = (10.0, 300.0)  # consent is granted by a human: look again, slowly


def refresh_at(issued_at: dt.datetime, expires_on: dt.datetime, refresh_before: dt.timedelta | None,
               rng: random.Random | None = None) -> dt.datetime:
    """When to refresh a token: at half its lifetime by default, or `refresh_before` ahead of expiry.

    Jitter only moves the time earlier, so the token is never older at refresh than asked. A `refresh_before`
    longer than the lifetime falls back to half the lifetime rather than refreshing in a loop.
    """
    rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
    lifetime = expires_on - issued_at
    if refresh_before is not None and refresh_before < lifetime:
        wait = lifetime - refresh_before
    else:
        wait = lifetime / 2
    wait -= wait * JITTER_FRACTION * rng.random()
    return issued_at + max(wait, min(MIN_REFRESH_DELAY, lifetime / 2))


def backoff(failures: int, retry_after: float | None = None, rng: random.Random | None = None,
            base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait after the n-th consecutive transient failure: exponential, jittered, honours Retry-After."""
    rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
    ceiling = min(cap, base * 2 ** max(failures - 1, 0))
    delay = ceiling * (0.5 + 0.5 * rng.random())
    return float(max(delay, retry_after or 0.0))


def missing_roles(granted: Sequence[str], required: Sequence[str]) -> list[str]:
    have = set(granted)
    return [r for r in required if r not in have]


@dataclass(frozen=True)
class Verdict:
    """The Ready condition to report."""

    ready: bool
    reason: Reason
    message: str


def issued_verdict(granted: Sequence[str], required: Sequence[str], secret_name: str,
                   expires_on: dt.datetime) -> Verdict:
    missing = missing_roles(granted, required)
    if missing:
        return Verdict(False, Reason.MISSING_ROLES,
                       f"token lacks application permission(s) {', '.join(missing)}: grant them to the app and "
                       "grant admin consent; graphcred re-checks periodically")
    return Verdict(True, Reason.TOKEN_ISSUED,
                   f"token in Secret {secret_name} valid until {expires_on.strftime('%Y-%m-%dT%H:%M:%SZ')}")


def missing_roles_retry(failures: int, rng: random.Random | None = None) -> float:
    return backoff(failures, None, rng, base=MISSING_ROLES_RETRY[0], cap=MISSING_ROLES_RETRY[1])


def may_resume(now: dt.datetime, *, generation: int | None, observed_generation: int | None,
               refresh_at_time: dt.datetime | None, secret_expiry: dt.datetime | None,
               credential_version: str | None, current_credential_version: str | None) -> bool:
    """After a restart: is the token already in the Secret good enough to wait for its scheduled refresh?"""
    return (
        generation is not None
        and generation == observed_generation
        and refresh_at_time is not None
        and secret_expiry is not None
        and secret_expiry > now + MIN_REFRESH_DELAY
        and refresh_at_time < secret_expiry
        and credential_version is not None
        and credential_version == current_credential_version
    )
