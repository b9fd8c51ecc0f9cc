"""Why a pass ends without a token, and how it is retried: one carrier for every failure a user is told about.

A `Failure` holds the Ready condition's reason and message (both shown to the user, so the message says what to
fix and never holds a secret, a token or an answer's body), how the pass is retried and, for a transient failure,
when at the earliest (an authority's Retry-After, a certificate valid from a moment ahead). The credential readers
and the token client raise their subclasses (`CredentialError`, `AcquisitionError`), which add what only they know;
the reconciler reports any of them the same way. Pure: importable from every layer above `api`.
"""

from __future__ import annotations

from enum import StrEnum

from graphcred.api.model import Reason


class Retry(StrEnum):
    """How a failed pass is retried."""

    ON_CHANGE = "on-change"  # only a change of the spec can help (a malformed spec)
    NEEDS_USER = "needs-user"  # slowly, and at once on a change or a renew request
    TRANSIENT = "transient"  # exponential backoff with jitter


class Failure(Exception):
    """A pass ends with this condition: `reason` and `message` for the user, `retry` and `retry_after` (seconds,
    a floor for a transient retry) for the schedule."""

    def __init__(self, reason: Reason, message: str, *, retry: Retry, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry = retry
        self.retry_after = retry_after
