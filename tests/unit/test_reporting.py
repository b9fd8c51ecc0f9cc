"""What a pass reports, decided by the pure functions of `graphcred.reconcile.reporting`, checked alone (no kube,
no clock)."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from graphcred.acquire.jwt import TokenClaims
from graphcred.api.model import Condition, GraphAppCredentialStatus, Reason
from graphcred.base.times import rfc3339
from graphcred.reconcile import reporting
from graphcred.reconcile.decide import Cause, Why
from graphcred.reconcile.policy import Retry, Verdict, issued_verdict

T0 = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
EARLIER = "2026-11-25T11:00:00Z"
EXPIRES = T0 + dt.timedelta(minutes=30)
SPEC = "abc"
OTHER_TOOL = {"type": "Synced", "status": "True", "reason": "GitOps", "message": "in sync",
              "lastTransitionTime": "2026-01-01T00:00:00Z"}


def _status(ready: str = "True", reason: str = "TokenIssued", **kw: Any) -> GraphAppCredentialStatus:
    """A status written by an earlier pass: Ready since EARLIER, a token valid until EXPIRES for SPEC."""
    base: dict[str, Any] = {
        "conditions": [{"type": "Ready", "status": ready, "reason": reason, "message": "before",
                        "lastTransitionTime": EARLIER}, OTHER_TOOL],
        "observedGeneration": 1, "secretName": "app-token", "expiresOn": "2026-11-25T12:30:00Z",
        "refreshAt": "2026-11-25T12:15:00Z", "lastRefreshTime": "2026-11-25T11:30:00Z", "roles": ["User.Read.All"],
        "issuedFor": SPEC, "credentialVersion": "7", "lastRenewRequest": "r1"}
    return GraphAppCredentialStatus.model_validate({**base, **kw})


def _failed(previous: GraphAppCredentialStatus, *, retry: Retry = Retry.TRANSIENT, issued_for: str | None = SPEC,
            required_roles: Sequence[str] | None = (), now: dt.datetime = T0, retry_after: float | None = None,
            reason: Reason = Reason.AUTHORITY_UNAVAILABLE) -> tuple[reporting.Report, float | None]:
    return reporting.failed(previous, generation=2, reason=reason, message="token endpoint: HTTP 503",
                            retry=retry, retry_after=retry_after, failures=1, issued_for=issued_for,
                            required_roles=required_roles, now=now, rng=random.Random(0))


def _issued(previous: GraphAppCredentialStatus, *, verdict: Verdict | None = None, renewed: bool = False,
            renew_value: str | None = None, cause: Cause | None = None) -> reporting.Report:
    claims = TokenClaims("https://graph.microsoft.com", "tenant", "app", ("User.Read.All",), None)
    return reporting.issued(
        previous, generation=2, secret_name="app-token", issued_at=T0, expires_on=T0 + dt.timedelta(hours=1),
        claims=claims, refresh=T0 + dt.timedelta(minutes=30), credential_version="8", issued_for=SPEC,
        renewed=renewed, renew_value=renew_value,
        verdict=verdict or issued_verdict(claims.roles, [], "app-token", T0 + dt.timedelta(hours=1)), now=T0,
        cause=cause)


def _ready(report: reporting.Report) -> Condition:
    ready = report.status.ready()
    assert ready is not None
    return ready


# --- the Ready condition ------------------------------------------------------------------------------------------
def test_transition_time_is_kept_while_ready_keeps_its_status_even_if_the_reason_changes() -> None:
    conditions = reporting.ready_condition(_status(), True, Reason.AUTHORITY_UNAVAILABLE, "retrying", 2, T0)
    assert (conditions[0].status, conditions[0].reason, conditions[0].last_transition_time) == (
        "True", "AuthorityUnavailable", EARLIER)
    assert conditions[0].observed_generation == 2


def test_transition_time_is_now_when_ready_flips_or_is_new() -> None:
    flipped = reporting.ready_condition(_status(), False, Reason.UNAUTHORIZED, "rejected", 2, T0)
    assert (flipped[0].status, flipped[0].last_transition_time) == ("False", "2026-11-25T12:00:00Z")
    first = reporting.ready_condition(GraphAppCredentialStatus(), True, Reason.TOKEN_ISSUED, "ok", 1, T0)
    assert [(c.type, c.last_transition_time) for c in first] == [("Ready", "2026-11-25T12:00:00Z")]


def test_other_tools_conditions_are_kept_and_ready_comes_first() -> None:
    conditions = reporting.ready_condition(_status(), False, Reason.UNAUTHORIZED, "rejected", 2, T0)
    assert [c.type for c in conditions] == ["Ready", "Synced"]
    assert conditions[1].model_dump(by_alias=True, exclude_none=True) == OTHER_TOOL


# --- a failed pass ------------------------------------------------------------------------------------------------
def test_a_transient_failure_while_the_token_for_this_spec_is_valid_keeps_ready_true() -> None:
    report, delay = _failed(_status())
    assert report.ready and _ready(report).status == "True"
    assert report.message == ("token endpoint: HTTP 503; the last token in the Secret stays valid until "
                              "2026-11-25T12:30:00Z")
    assert _ready(report).last_transition_time == EARLIER  # still Ready: no transition
    assert report.status.consecutive_failures == 1 and report.status.observed_generation == 2
    # what the token is stays described; the next attempt is recorded
    assert (report.status.expires_on, report.status.secret_name, report.status.roles) == (
        "2026-11-25T12:30:00Z", "app-token", ["User.Read.All"])
    assert delay is not None and report.status.refresh_at == rfc3339(T0 + dt.timedelta(seconds=delay))
    # the reason changed: users hear of it, as a warning
    assert report.event == reporting.Event("Warning", "AuthorityUnavailable", report.message)


def test_a_ready_token_wakes_the_retry_at_its_expiry_at_the_latest() -> None:
    almost = T0 + dt.timedelta(minutes=29, seconds=50)
    report, delay = _failed(_status(), now=almost, retry_after=120.0)  # the authority asks for two minutes
    assert report.ready and delay == 11.0  # ... but Ready must turn False when the token is gone


def test_a_failure_that_needs_the_user_turns_ready_false_at_once() -> None:
    report, delay = _failed(_status(), retry=Retry.NEEDS_USER, reason=Reason.UNAUTHORIZED)
    assert not report.ready and _ready(report).status == "False"
    assert _ready(report).last_transition_time == "2026-11-25T12:00:00Z"
    assert "stays valid until 2026-11-25T12:30:00Z" in report.message  # the token still works: say so
    assert report.event is not None and report.event.type == "Warning"
    assert delay is not None


def test_a_token_for_an_earlier_spec_is_not_ready_and_says_so() -> None:
    report, _ = _failed(_status(), issued_for="changed")
    assert not report.ready
    assert report.message.endswith("stays valid until 2026-11-25T12:30:00Z but was acquired for an earlier spec")
    unreadable_spec, _ = _failed(_status(), issued_for=None, retry=Retry.ON_CHANGE, reason=Reason.INVALID_SPEC)
    assert not unreadable_spec.ready and unreadable_spec.message.endswith("but was acquired for an earlier spec")


def test_no_ready_from_a_failure_unless_it_was_ready_with_the_roles_now_required() -> None:
    assert not _failed(_status("False", "MissingRoles"))[0].ready
    assert not _failed(_status(), required_roles=["Mail.Read"])[0].ready
    assert not _failed(_status(), required_roles=None)[0].ready  # the spec could not be read
    assert _failed(_status(), required_roles=["User.Read.All"])[0].ready


def test_an_expired_token_is_not_ready_and_not_mentioned() -> None:
    report, delay = _failed(_status(), now=EXPIRES)
    assert not report.ready and report.message == "token endpoint: HTTP 503"
    assert delay is not None


def test_a_malformed_spec_waits_for_a_change() -> None:
    report, delay = _failed(GraphAppCredentialStatus(), retry=Retry.ON_CHANGE, reason=Reason.INVALID_SPEC,
                            issued_for=None)
    assert delay is None and report.status.refresh_at is None and not report.ready


# --- a new token ----------------------------------------------------------------------------------------------
def test_a_new_token_is_described_and_earlier_failures_are_cleared() -> None:
    report = _issued(_status(consecutiveFailures=3))
    status = report.status
    assert report.ready and report.reason == Reason.TOKEN_ISSUED
    assert (status.expires_on, status.refresh_at, status.last_refresh_time) == (
        "2026-11-25T13:00:00Z", "2026-11-25T12:30:00Z", "2026-11-25T12:00:00Z")
    assert (status.consecutive_failures, status.credential_version, status.issued_for, status.app_id) == (
        0, "8", SPEC, "app")
    assert status.last_renew_request == "r1"  # not a renewal: the last one served stays recorded
    assert [c.type for c in status.conditions] == ["Ready", "Synced"]
    assert report.event is None  # Ready TokenIssued before and after: nothing to announce


def test_a_served_renew_request_is_recorded_and_announced() -> None:
    report = _issued(_status(), renewed=True, renew_value="r2")
    assert report.status.last_renew_request == "r2"
    assert report.event is not None and report.event.type == "Normal"
    assert report.event.message == f"renewed on request: {report.message}"


def test_missing_roles_turn_ready_false_with_a_warning() -> None:
    verdict = issued_verdict(("User.Read.All",), ["Mail.Read"], "app-token", T0 + dt.timedelta(hours=1))
    report = _issued(_status(), verdict=verdict, renewed=True, renew_value="r2")
    assert not report.ready and _ready(report).reason == "MissingRoles"
    assert report.event is not None and report.event.type == "Warning"
    assert not report.event.message.startswith("renewed on request")  # the prefix only announces a usable token


def test_why_a_token_was_requested_is_recorded_and_announced_when_someone_caused_it() -> None:
    rotated = Cause("same_credential", Why.CREDENTIAL_SECRET_CHANGED)
    report = _issued(_status(), cause=rotated)
    assert report.status.last_refresh_reason == "credential Secret changed"
    assert report.event is not None and report.event.type == "Normal"
    assert report.event.message == f"{report.message} (refreshed: credential Secret changed)"
    first = _issued(GraphAppCredentialStatus(), cause=Cause("has_token", Why.FIRST_TOKEN))
    assert first.event is not None and first.event.message.endswith("(first token)")
    # the clock's reasons are recorded, never announced: a steady state posts nothing
    scheduled = _issued(_status(), cause=Cause("refresh_not_due", Why.HALF_LIFE))
    assert scheduled.status.last_refresh_reason == "half-life reached" and scheduled.event is None
    # a renewal keeps its own announcement
    renewed = _issued(_status(), renewed=True, renew_value="r2", cause=Cause("no_renew_request", Why.RENEW_REQUESTED))
    assert renewed.event is not None and renewed.event.message == f"renewed on request: {renewed.message}"


def test_a_kept_token_records_the_new_credential_version_only() -> None:
    previous = _status()
    report = reporting.kept(previous, "9")
    assert report.status == previous.model_copy(update={"credential_version": "9"})
    assert report.ready and report.event is None


# --- Events -------------------------------------------------------------------------------------------------------
def _cond(status: str, reason: str) -> Condition:
    return Condition.model_validate({"type": "Ready", "status": status, "reason": reason})


def test_an_event_only_when_ready_or_its_reason_changes_or_a_renewal_is_announced() -> None:
    ok = _cond("True", "TokenIssued")
    assert reporting.event_due(ok, True, Reason.TOKEN_ISSUED, "m") is None
    assert reporting.event_due(None, True, Reason.TOKEN_ISSUED, "m") == reporting.Event("Normal", "TokenIssued", "m")
    assert reporting.event_due(ok, True, Reason.THROTTLED, "m") == reporting.Event("Warning", "Throttled", "m")
    assert reporting.event_due(ok, False, Reason.TOKEN_ISSUED, "m") is not None
    assert reporting.event_due(ok, True, Reason.TOKEN_ISSUED, "m", announce=True) == reporting.Event(
        "Normal", "TokenIssued", "renewed on request: m")


_statuses = st.sampled_from(["True", "False", "Unknown"])
_reasons = st.sampled_from(list(Reason))


@given(previous=st.none() | st.builds(_cond, _statuses, _reasons.map(str)), ready=st.booleans(), reason=_reasons,
       announce=st.booleans())
def test_event_due_is_none_iff_ready_is_unchanged_and_nothing_is_announced(
        previous: Condition | None, ready: bool, reason: Reason, announce: bool) -> None:
    unchanged = (previous is not None and previous.status == ("True" if ready else "False")
                 and previous.reason == reason and not announce)
    event = reporting.event_due(previous, ready, reason, "m", announce)
    assert (event is None) == unchanged
    if event is not None:
        assert event.reason == reason.value and event.type == ("Normal" if reason == Reason.TOKEN_ISSUED
                                                               else "Warning")


@given(previous_status=_statuses, ready=st.booleans(), reason=_reasons)
def test_ready_condition_moves_the_transition_time_iff_the_status_flips(previous_status: str, ready: bool,
                                                                       reason: Reason) -> None:
    previous = _status(previous_status)
    conditions = reporting.ready_condition(previous, ready, reason, "m", 2, T0)
    flipped = previous_status != ("True" if ready else "False")
    assert conditions[0].last_transition_time == ("2026-11-25T12:00:00Z" if flipped else EARLIER)
    assert conditions[1:] == previous.conditions[1:]


# --- the status patch ---------------------------------------------------------------------------------------------
def test_status_patch_is_none_without_a_change_and_removes_vanished_keys_with_null() -> None:
    body = _issued(_status()).status.to_k8s()
    assert reporting.status_patch(body, dict(body)) is None
    before = {**body, "refreshAt": "x", "legacyField": 1}
    after = {k: v for k, v in body.items() if k != "refreshAt"}
    assert reporting.status_patch(before, after) == {**after, "refreshAt": None, "legacyField": None}
    assert reporting.status_patch(None, body) == body
    assert reporting.status_patch({}, body) == body


def test_a_ready_condition_without_a_transition_time_gets_one() -> None:
    # Someone else's Ready without lastTransitionTime (the CRD requires it now): the operator's write supplies it.
    previous = _status(conditions=[{"type": "Ready", "status": "True", "reason": "TokenIssued"}])
    [ready] = reporting.ready_condition(previous, True, Reason.TOKEN_ISSUED, "ok", 2, T0)
    assert ready.last_transition_time == "2026-11-25T12:00:00Z"
