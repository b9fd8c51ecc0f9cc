"""The decision chain (`graphcred.reconcile.decide`): keep the token in the Secret, render the Secret again, or
request a new one, and why. Pure: no kube, no clock."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from graphcred.api.model import GraphAppCredentialStatus, Reason
from graphcred.base.times import parse_rfc3339, rfc3339
from graphcred.reconcile.decide import KEEP, Action, Gathered, Why, decide, first_failure
from graphcred.reconcile.policy import MIN_REFRESH_DELAY

T0 = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


def _status(**kw: object) -> GraphAppCredentialStatus:
    base: dict[str, object] = {
        "conditions": [{"type": "Ready", "status": "True", "reason": "TokenIssued"}], "observedGeneration": 2,
        "refreshAt": "2026-11-25T12:10:00Z", "expiresOn": "2026-11-25T12:30:00Z", "issuedFor": "abc"}
    return GraphAppCredentialStatus.model_validate({**base, **kw})


def _gathered(now: dt.datetime, status: GraphAppCredentialStatus, *, generation: int = 2, issued_for: str = "abc",
              secret_expiry: dt.datetime | None = T0 + dt.timedelta(minutes=30), material_unchanged: bool = True,
              renew: bool = False, secret_present: bool = True, kind: str = "credential Secret",
              refresh_before: bool = False) -> Gathered:
    return Gathered(now=now, status=status, generation=generation, issued_for=issued_for, renew=renew,
                    credential_changed=not material_unchanged, credential_kind=kind, secret_present=secret_present,
                    secret_expiry=secret_expiry, refresh_before=refresh_before)


def _keeps(now: dt.datetime, status: GraphAppCredentialStatus, **good: Any) -> bool:
    return first_failure(KEEP, _gathered(now, status, **good)) is None


def test_may_keep_only_a_valid_token_for_this_spec_and_material_before_its_refresh() -> None:
    expiry = T0 + dt.timedelta(minutes=30)
    good = dict(generation=2, issued_for="abc", secret_expiry=expiry, material_unchanged=True, renew=False)
    assert _keeps(T0, _status(), **good)
    for change in ({"generation": 3}, {"issued_for": "other"}, {"material_unchanged": False}, {"renew": True},
                   {"secret_expiry": None}, {"secret_expiry": expiry - dt.timedelta(minutes=1)}):
        assert not _keeps(T0, _status(), **{**good, **change})
    for status in (_status(refreshAt="2026-11-25T11:59:00Z"),
                   _status(conditions=[{"type": "Ready", "status": "True", "reason": "Throttled"}]),
                   _status(conditions=[{"type": "Ready", "status": "False", "reason": "MissingRoles"}])):
        assert not _keeps(T0, status, **good)


def test_each_check_names_why_a_token_is_requested() -> None:
    """The first check that fails is the reason users read (status, Event, `graphcred status`)."""
    cases: list[tuple[Gathered, str]] = [
        (_gathered(T0, GraphAppCredentialStatus()), "first token"),
        (_gathered(T0, _status(), renew=True), "renew requested"),
        (_gathered(T0, _status(), generation=3), "spec changed"),
        (_gathered(T0, _status(), issued_for="other"), "spec changed"),
        (_gathered(T0, _status(), material_unchanged=False), "credential Secret changed"),
        (_gathered(T0, _status(), material_unchanged=False, kind="ServiceAccount"), "ServiceAccount changed"),
        (_gathered(T0, _status(), secret_present=False), "token Secret missing"),
        (_gathered(T0, _status(), secret_expiry=T0), "token Secret changed"),
        (_gathered(T0, _status(conditions=[{"type": "Ready", "status": "True", "reason": "Throttled"}])),
         "retrying after Throttled"),
        (_gathered(T0, _status(conditions=[{"type": "Ready", "status": "False", "reason": "MissingRoles"}])),
         "retrying after MissingRoles"),
        (_gathered(T0 + dt.timedelta(minutes=10), _status()), "half-life reached"),
        (_gathered(T0 + dt.timedelta(minutes=10), _status(), refresh_before=True), "refreshBeforeExpiry reached"),
        (_gathered(T0, _status(refreshAt="2026-11-25T12:30:00Z")), "token expiring"),
    ]
    for gathered, why in cases:
        decision = decide(gathered, template_only=False)
        assert decision.action == Action.ACQUIRE, why
        assert str(decision.reason) == why
    assert decide(_gathered(T0, _status()), template_only=False).action == Action.KEEP


def test_what_the_user_changed_outranks_the_clock() -> None:
    """A credential changed after the refresh came due is reported as the change, not as the schedule."""
    late = T0 + dt.timedelta(minutes=20)
    assert str(first_failure(KEEP, _gathered(late, _status(), material_unchanged=False))) == "credential Secret changed"
    assert str(first_failure(KEEP, _gathered(late, _status(), renew=True, generation=3))) == "renew requested"


def test_only_a_template_change_renders_the_secret_again_without_a_token() -> None:
    new_generation = _gathered(T0, _status(), generation=3)
    assert decide(new_generation, template_only=True).action == Action.RERENDER
    assert decide(new_generation, template_only=False).action == Action.ACQUIRE
    # anything else that fails besides the generation means a token after all
    for other in (dataclasses.replace(new_generation, renew=True),
                  dataclasses.replace(new_generation, credential_changed=True),
                  dataclasses.replace(new_generation, now=T0 + dt.timedelta(minutes=15)),
                  dataclasses.replace(new_generation, issued_for="other")):
        decision = decide(other, template_only=True)
        assert decision.action == Action.ACQUIRE
    assert decide(_gathered(T0, _status()), template_only=True).action == Action.KEEP


def test_only_changes_by_someone_are_announced_with_an_event() -> None:
    causes = {why: first_failure(KEEP, _for(why)) for why in Why}
    assert all(cause is not None and cause.why == why for why, cause in causes.items())
    by_user = {why for why, cause in causes.items() if cause is not None and cause.by_user}
    assert by_user == {Why.FIRST_TOKEN, Why.RENEW_REQUESTED, Why.SPEC_CHANGED, Why.CREDENTIAL_SECRET_CHANGED,
                       Why.SERVICE_ACCOUNT_CHANGED, Why.TOKEN_SECRET_MISSING, Why.TOKEN_SECRET_CHANGED}


def _for(why: Why) -> Gathered:
    return {
        Why.FIRST_TOKEN: _gathered(T0, GraphAppCredentialStatus()),
        Why.RENEW_REQUESTED: _gathered(T0, _status(), renew=True),
        Why.SPEC_CHANGED: _gathered(T0, _status(), generation=3),
        Why.CREDENTIAL_SECRET_CHANGED: _gathered(T0, _status(), material_unchanged=False),
        Why.SERVICE_ACCOUNT_CHANGED: _gathered(T0, _status(), material_unchanged=False, kind="ServiceAccount"),
        Why.TOKEN_SECRET_MISSING: _gathered(T0, _status(), secret_present=False),
        Why.TOKEN_SECRET_CHANGED: _gathered(T0, _status(), secret_expiry=None),
        Why.RETRY: _gathered(T0, _status(conditions=[{"type": "Ready", "status": "False", "reason": "Throttled"}])),
        Why.HALF_LIFE: _gathered(T0 + dt.timedelta(minutes=10), _status()),
        Why.REFRESH_BEFORE_EXPIRY: _gathered(T0 + dt.timedelta(minutes=10), _status(), refresh_before=True),
        Why.EXPIRING: _gathered(T0, _status(refreshAt="2026-11-25T12:30:00Z")),
    }[why]


def _may_keep_as_it_was(g: Gathered) -> bool:
    """policy.may_keep before the chain replaced it (one 12-clause boolean), for the equivalence below."""
    status, now = g.status, g.now
    ready = status.ready()
    refresh, expires = parse_rfc3339(status.refresh_at), parse_rfc3339(status.expires_on)
    return (g.secret_present and not g.renew and not g.credential_changed
            and ready is not None and ready.status == "True" and ready.reason == Reason.TOKEN_ISSUED
            and status.observed_generation == g.generation and status.issued_for == g.issued_for
            and refresh is not None and expires is not None and g.secret_expiry == expires
            and now < refresh < expires and expires > now + MIN_REFRESH_DELAY)


_MINUTES = st.integers(min_value=-40, max_value=40).map(lambda m: T0 + dt.timedelta(minutes=m))


@given(now=_MINUTES, refresh=st.none() | _MINUTES, expires=st.none() | _MINUTES, secret_expiry=st.none() | _MINUTES,
       ready=st.sampled_from([None, ("True", "TokenIssued"), ("True", "Throttled"), ("False", "MissingRoles")]),
       generation=st.sampled_from([1, 2]), observed=st.sampled_from([None, 1, 2]),
       issued_for=st.sampled_from([None, "abc", "other"]), renew=st.booleans(), changed=st.booleans(),
       present=st.booleans())
def test_the_chain_keeps_exactly_what_may_keep_kept(now: dt.datetime, refresh: dt.datetime | None,
                                                    expires: dt.datetime | None, secret_expiry: dt.datetime | None,
                                                    ready: tuple[str, str] | None, generation: int,
                                                    observed: int | None, issued_for: str | None, renew: bool,
                                                    changed: bool, present: bool) -> None:
    status = GraphAppCredentialStatus.model_validate({
        "conditions": [{"type": "Ready", "status": ready[0], "reason": ready[1]}] if ready else [],
        "observedGeneration": observed, "issuedFor": issued_for,
        "refreshAt": rfc3339(refresh) if refresh else None, "expiresOn": rfc3339(expires) if expires else None})
    g = Gathered(now=now, status=status, generation=generation, issued_for="abc", renew=renew,
                 credential_changed=changed, credential_kind="credential Secret", secret_present=present,
                 secret_expiry=secret_expiry, refresh_before=False)
    assert (first_failure(KEEP, g) is None) == _may_keep_as_it_was(g)
