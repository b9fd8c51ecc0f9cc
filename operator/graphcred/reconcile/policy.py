"""Pure decisions: when to refresh, how long to back off, whether a token may be kept and whether a new one
meets the spec (the verdict `reporting` turns into the Ready condition). No I/O here."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from dataclasses import dataclass

from graphcred.api.failures import Retry as Retry  # its home is api.failures; imported from here too
from graphcred.api.model import Reason
from graphcred.base.backoff import RETRY_AFTER_CAP, backoff

MIN_REFRESH_DELAY = dt.timedelta(seconds=5)  # never refresh sooner than this after an issue, nor from now
MIN_WAIT_FRACTION = 0.1  # nor before a tenth of the lifetime: refreshBeforeExpiry near the lifetime must not spin
JITTER_FRACTION = 0.1  # refresh up to 10% of the wait earlier, spreading thousands of credentials
MISSING_ROLES_RETRY = (10.0, 300.0)  # consent is granted by a human: look again, slowly
# Failures that need the user (a rejected secret, an unknown app) are retried slowly, never parked: Entra replicates
# new secrets with a delay and people fix apps in Entra without touching the cluster.
NEEDS_USER_RETRY = (300.0, 900.0, 3600.0)
LAST_CHANCE_BEFORE_EXPIRY = 120.0  # one more try this long before the last good token expires
# while the last good token is valid, transient retries come at least this many times in what is left of its life
TRIES_BEFORE_EXPIRY = 3
EXPIRED_RETRY = 30.0  # once the token is gone, transient retries at least this often: notice a returning endpoint


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
    floor = min(max(MIN_REFRESH_DELAY, lifetime * MIN_WAIT_FRACTION), lifetime / 2)
    return issued_at + max(wait, floor)


def retry_delay(retry: Retry, failures: int, retry_after: float | None, now: dt.datetime,
                token_expires: dt.datetime | None, rng: random.Random | None = None) -> float | None:
    """Seconds until the next attempt after the n-th consecutive failure (None: wait for a change).
    `token_expires`: expiry of the last good token in the Secret, if any."""
    rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
    if retry == Retry.ON_CHANGE:
        return None
    remaining = (token_expires - now).total_seconds() if token_expires is not None else 0.0
    if retry == Retry.NEEDS_USER:
        delay = NEEDS_USER_RETRY[min(max(failures, 1), len(NEEDS_USER_RETRY)) - 1] * (0.9 + 0.2 * rng.random())
        last_chance = remaining - LAST_CHANCE_BEFORE_EXPIRY
        if last_chance > MIN_REFRESH_DELAY.total_seconds():
            delay = min(delay, last_chance)
        return delay
    delay = backoff(failures, None, rng)
    if remaining <= 0:
        delay = min(delay, EXPIRED_RETRY * (0.5 + 0.5 * rng.random()))
    elif delay > remaining / TRIES_BEFORE_EXPIRY:
        # a long backoff must not carry the next try past the last good token's expiry (seen in the hostile
        # soak: 93 s after a failure with 32 s of the token left), nor leave a single try just before it, which
        # one more fault then defeats (the fault soak: an authority outage, then an apiserver restart during the
        # one try left 10 s before expiry): the closer the expiry, the more often
        delay = max(remaining / TRIES_BEFORE_EXPIRY, 1.0)
    return max(delay, min(retry_after or 0.0, RETRY_AFTER_CAP))


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


def next_refresh(issued_at: dt.datetime, expires_on: dt.datetime, refresh_before: dt.timedelta | None,
                 now: dt.datetime, rng: random.Random, missing_roles_checks: int = 0,
                 hint: dt.datetime | None = None) -> dt.datetime:
    """When to refresh a token just written: `refresh_at`, but never in the past (a pass that ran late), and while
    required roles are missing (`missing_roles_checks` tokens in a row) soon, growing slowly: consent is granted by
    a human, and shows only in a new token. `hint`: the token source's own refresh time (a managed identity's
    refresh_in), followed when it comes earlier."""
    refresh = max(refresh_at(issued_at, expires_on, refresh_before, rng), now + MIN_REFRESH_DELAY)
    if hint is not None:
        refresh = max(min(refresh, hint), now + MIN_REFRESH_DELAY)
    if missing_roles_checks:
        refresh = min(refresh, now + dt.timedelta(seconds=missing_roles_retry(missing_roles_checks, rng)))
    return refresh


def next_attempt_same_token(expires_on: dt.datetime, hint: dt.datetime | None, now: dt.datetime,
                            rng: random.Random) -> dt.datetime:
    """A managed identity answered the token the Secret already holds: ask again at its refresh hint, else when
    half the remaining lifetime has passed; never sooner than MIN_REFRESH_DELAY (an endpoint answering the same
    token until expiry must not be asked in a loop), with jitter."""
    half = now + (expires_on - now) / 2
    when = hint if hint is not None and hint > now else half
    when -= (when - now) * JITTER_FRACTION * rng.random()
    return max(when, now + MIN_REFRESH_DELAY)


def missing_roles_retry(failures: int, rng: random.Random | None = None) -> float:
    return backoff(failures, None, rng, base=MISSING_ROLES_RETRY[0], cap=MISSING_ROLES_RETRY[1])
