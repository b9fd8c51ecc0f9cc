"""Exponential backoff with jitter: how long to wait after the n-th consecutive failure."""

from __future__ import annotations

import random

BACKOFF_BASE = 2.0
BACKOFF_CAP = 300.0
# A Retry-After is honoured up to this: a proxy's "come back tomorrow" must not let tokens expire.
RETRY_AFTER_CAP = 600.0


def backoff(failures: int, retry_after: float | None = None, rng: random.Random | None = None,
            base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait after the n-th consecutive transient failure: exponential, jittered, honours Retry-After."""
    rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
    # the exponent is bounded: past the cap it changes nothing, and 2 ** 1024 no longer fits in a float
    ceiling = min(cap, base * 2 ** min(max(failures - 1, 0), 32))
    delay = ceiling * (0.5 + 0.5 * rng.random())
    return float(max(delay, retry_after or 0.0))
