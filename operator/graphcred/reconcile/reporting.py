"""What a pass reports: the status, the Ready condition in it, the Event due, and the status patch to send.

Pure, like `policy`: every input (previous status, outcome, the clock's reading, an rng for jitter) is an argument
and every answer a value, so the rules users see are tested alone (tests/unit/test_reporting.py) and the Reconciler
only does the I/O, in its order: metrics, status patch, Event, log.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from graphcred.acquire.jwt import TokenClaims
from graphcred.api.model import Condition, GraphAppCredentialStatus, Reason
from graphcred.base.times import parse_rfc3339, rfc3339
from graphcred.reconcile import policy
from graphcred.reconcile.decide import Cause
from graphcred.reconcile.policy import Retry, Verdict

RENEWED_PREFIX = "renewed on request: "


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post about the object."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Report:
    """What one pass reports: the status to write, the Ready verdict in it, and the Event due (None: none)."""

    status: GraphAppCredentialStatus
    ready: bool
    reason: Reason
    message: str
    event: Event | None


def ready_condition(previous: GraphAppCredentialStatus, ready: bool, reason: Reason, message: str,
                    generation: int, now: dt.datetime) -> list[Condition]:
    """The new Ready condition, first; conditions of other types (other tools') are kept as they are.
    lastTransitionTime moves only when Ready's status flips (or there was no Ready yet, or one without a time: the
    CRD requires it)."""
    before = previous.ready()
    status: Literal["True", "False"] = "True" if ready else "False"
    kept = before.last_transition_time if before is not None and before.status == status else None
    cond = Condition(status=status, reason=reason.value, message=message, observed_generation=generation,
                     last_transition_time=kept or rfc3339(now))
    return [cond, *(c for c in previous.conditions if c.type != "Ready")]


def event_due(previous_ready: Condition | None, ready: bool, reason: Reason, message: str,
              announce: bool = False, cause: Cause | None = None) -> Event | None:
    """An Event if Ready or its reason changed from `previous_ready`, a renew request was served (`announce`), or a
    token was issued because someone changed something (`cause`, by_user): a steady state posts nothing, however
    often it is reported. A new token's Event says why it was requested."""
    transition = (previous_ready is None or previous_ready.status != ("True" if ready else "False")
                  or previous_ready.reason != reason)
    if not (announce or transition or (cause is not None and cause.by_user)):
        return None
    if announce and ready:
        message = f"{RENEWED_PREFIX}{message}"
    elif cause is not None:
        message = f"{message} ({cause.phrase()})"
    return Event("Normal" if reason == Reason.TOKEN_ISSUED else "Warning", reason.value, message)


def issued(previous: GraphAppCredentialStatus, *, generation: int, secret_name: str, issued_at: dt.datetime,
           expires_on: dt.datetime, claims: TokenClaims, refresh: dt.datetime, credential_version: str,
           issued_for: str | None, renewed: bool, renew_value: str | None, verdict: Verdict,
           now: dt.datetime, cause: Cause | None = None, app: str | None = None) -> Report:
    """A new token is in the Secret: a whole new status describing it (`refresh`: when the next pass is due).
    `renewed`: it answers a renew request for `renew_value`, recorded so that no replica serves it again.
    `cause`: why it was requested (`decide`)."""
    status = GraphAppCredentialStatus(
        conditions=ready_condition(previous, verdict.ready, verdict.reason, verdict.message, generation, now),
        observed_generation=generation,
        secret_name=secret_name,
        expires_on=rfc3339(expires_on),
        refresh_at=rfc3339(refresh),
        last_refresh_time=rfc3339(issued_at),
        last_refresh_reason=str(cause) if cause is not None else None,
        consecutive_failures=0,
        roles=list(claims.roles),
        audience=claims.audience,
        tenant_id=claims.tenant_id,
        app_id=claims.app_id,
        credential_version=credential_version,
        issued_for=issued_for,
        issued_by_app=app,
        last_renew_request=renew_value if renewed else previous.last_renew_request,
    )
    return Report(status, verdict.ready, verdict.reason, verdict.message,
                  event_due(previous.ready(), verdict.ready, verdict.reason, verdict.message, announce=renewed,
                            cause=cause))


def failed(previous: GraphAppCredentialStatus, *, generation: int, reason: Reason, message: str, retry: Retry,
           retry_after: float | None, failures: int, issued_for: str | None,
           required_roles: Sequence[str] | None, now: dt.datetime, rng: random.Random
           ) -> tuple[Report, float | None]:
    """A pass failed (`failures`: consecutive failures, this one included): the previous status with the new
    Ready condition and the next attempt, and seconds until that attempt (None: wait for a change).
    `issued_for`/`required_roles`: this pass's spec, None if it could not be read."""
    expires = parse_rfc3339(previous.expires_on)
    token_valid = expires is not None and expires > now
    # The Secret still holds a token; Ready stays True only while it is valid, was acquired for this very spec,
    # and the failure is transient (refreshing is failing, the token still works). Anything that needs the
    # user is Ready=False at once.
    for_this_spec = issued_for is not None and previous.issued_for == issued_for
    before = previous.ready()
    # ... and only if it was Ready before (not MissingRoles, not a conflict) and has the roles now required
    was_ready = before is not None and before.status == "True"
    roles_ok = required_roles is not None and not policy.missing_roles(previous.roles, required_roles)
    ready = token_valid and for_this_spec and was_ready and roles_ok and retry == Retry.TRANSIENT
    if token_valid and expires is not None:
        message += f"; the last token in the Secret stays valid until {rfc3339(expires)}"
        if not for_this_spec:
            message += " but was acquired for an earlier spec"
    delay = policy.retry_delay(retry, failures, retry_after, now, expires if token_valid else None, rng)
    if ready and expires is not None and delay is not None:
        # wake at expiry at the latest, to turn Ready to False when the token is gone
        delay = min(delay, max((expires - now).total_seconds(), 0.0) + 1.0)
    status = previous.model_copy(update={
        "conditions": ready_condition(previous, ready, reason, message, generation, now),
        "observed_generation": generation,
        "consecutive_failures": failures,
        "refresh_at": rfc3339(now + dt.timedelta(seconds=delay)) if delay is not None else None,
    })
    return Report(status, ready, reason, message, event_due(before, ready, reason, message)), delay


def answered_again(previous: GraphAppCredentialStatus, refresh: dt.datetime, renew_value: str | None = None
                   ) -> Report:
    """The token source answered the token the Secret holds (a managed identity's cache): the same status, with
    the next attempt (and the renew request it served: nothing newer was to be had); no Event (nothing changed for
    anyone)."""
    ready = previous.ready()
    status = previous.model_copy(update={"refresh_at": rfc3339(refresh), "consecutive_failures": 0,
                                         "last_renew_request": renew_value or previous.last_renew_request})
    is_ready = ready is not None and ready.status == "True"
    reason = Reason(ready.reason) if ready is not None and ready.reason in set(Reason) else Reason.TOKEN_ISSUED
    return Report(status, is_ready, reason, ready.message if ready is not None else "", None)


# What describes the token in the Secret: gone with the Secret (`without_token`).
_TOKEN_FIELDS = ("secret_name", "expires_on", "refresh_at", "last_refresh_time", "last_refresh_reason", "roles",
                 "audience", "tenant_id", "app_id", "credential_version", "issued_for", "issued_by_app")


def without_token(previous: GraphAppCredentialStatus) -> GraphAppCredentialStatus:
    """The status once the token Secret was deleted (permission withdrawn): nothing of the token it held."""
    return previous.model_copy(update={f: ([] if f == "roles" else None) for f in _TOKEN_FIELDS})


def kept(previous: GraphAppCredentialStatus, credential_version: str) -> Report:
    """The token in the Secret is kept (`policy.may_keep`: it is Ready) though the credential Secret changed
    (not the credential in it): record the Secret's new version, nothing else."""
    ready = previous.ready()
    assert ready is not None  # may_keep keeps only a Ready token
    status = previous.model_copy(update={"credential_version": credential_version})
    return Report(status, True, Reason.TOKEN_ISSUED, ready.message,
                  event_due(ready, True, Reason.TOKEN_ISSUED, ready.message))


# Status fields other writers own (the consumer reports: `graphcred.consumers.reports`; the restarts:
# `graphcred.reconcile.restarter`): a pass neither writes nor removes them, so writers never overwrite each other.
WRITTEN_ELSEWHERE = frozenset({"unrefreshableConsumers", "restarts"})


def status_patch(before: dict[str, Any] | None, body: dict[str, Any]) -> dict[str, Any] | None:
    """The merge patch turning the status `before` into `body`, None if they are equal. Keys that disappeared must
    be sent as null to be removed. Fields WRITTEN_ELSEWHERE are left out, whatever either side holds."""
    before = {k: v for k, v in (before or {}).items() if k not in WRITTEN_ELSEWHERE}
    body = {k: v for k, v in body.items() if k not in WRITTEN_ELSEWHERE}
    if body == before:
        return None
    return _merge_patch(before, body)


def _merge_patch(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386: nested objects merge, so a key gone from one (status.certificate.pem) must be sent as null too."""
    patch: dict[str, Any] = {k: None for k in before if k not in after}
    for key, value in after.items():
        old = before.get(key)
        patch[key] = _merge_patch(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return patch
