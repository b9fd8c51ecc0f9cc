"""Decide what a pass does with the token already in the Secret: keep it, render the Secret again with it, or
request a new one, and say why. Pure: everything is in `Gathered`, read by the pass before it decides.

The rules are a chain of small named checks, in order (cert-manager's certificate policy chain is the model): each
returns None when it holds, or why the token in the Secret cannot stay. The first that fails is the reason a new
token is requested; it goes to the debug log, status.lastRefreshReason, the TokenIssued Event and `graphcred
status`. A token is kept only when every check holds.

    first token        the status describes no token (a new credential, or none was ever acquired)
    renew requested    the renew annotation changed (`graphcred renew`)
    spec changed       the token was acquired for another spec, or for another generation of this one
    credential changed the credential (client secret, certificate, ServiceAccount) differs from the token's
    token Secret       the Secret is gone, or holds another token than the one the status describes
    not ready          the last pass did not end with the token issued (a failure, missing roles): try again
    refresh due        the refresh time (half-life, or refreshBeforeExpiry ahead of expiry) has come
    expiring           the token expires too soon to wait for anything
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from graphcred.api.model import GraphAppCredentialStatus, Reason
from graphcred.base.times import parse_rfc3339
from graphcred.reconcile.policy import MIN_REFRESH_DELAY


@dataclass(frozen=True)
class Gathered:
    """What a pass knows before it decides."""

    now: dt.datetime
    status: GraphAppCredentialStatus  # the status the pass starts from (what the last pass wrote)
    generation: int  # metadata.generation of the spec this pass reads
    issued_for: str  # the digest of what this spec asks a token for (GraphAppCredentialSpec.issued_for)
    renew: bool  # a renew request waits to be served
    credential_changed: bool  # the credential differs from the one the token in the Secret was acquired with
    credential_kind: str  # "credential Secret" or "ServiceAccount": what changed, in the user's words
    secret_present: bool  # the token Secret exists
    secret_expiry: dt.datetime | None  # when the token the Secret holds expires, as its annotation says
    refresh_before: bool  # spec.refreshBeforeExpiry is set (else the refresh comes at half the lifetime)


class Why(StrEnum):
    """Why a new token was requested: the check that failed first. The values are what users read."""

    FIRST_TOKEN = "first token"
    RENEW_REQUESTED = "renew requested"
    SPEC_CHANGED = "spec changed"
    CREDENTIAL_SECRET_CHANGED = "credential Secret changed"
    SERVICE_ACCOUNT_CHANGED = "ServiceAccount changed"
    TOKEN_SECRET_MISSING = "token Secret missing"
    TOKEN_SECRET_CHANGED = "token Secret changed"
    RETRY = "retrying"
    HALF_LIFE = "half-life reached"
    REFRESH_BEFORE_EXPIRY = "refreshBeforeExpiry reached"
    EXPIRING = "token expiring"


@dataclass(frozen=True)
class Cause:
    """Why the token in the Secret cannot stay: the check that failed, and what the user reads (`why`, with the
    detail the check has)."""

    check: str
    why: Why
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.why.value} after {self.detail}" if self.detail else self.why.value

    @property
    def by_user(self) -> bool:
        """Caused by someone's change (announced with an Event), not by the clock or a retry (which post none:
        a steady state posts nothing, however many credentials refresh)."""
        return self.why not in (Why.RETRY, Why.HALF_LIFE, Why.REFRESH_BEFORE_EXPIRY, Why.EXPIRING)

    def phrase(self) -> str:
        """As a TokenIssued Event's message ends: "(refreshed: credential Secret changed)"."""
        return str(self) if self.why == Why.FIRST_TOKEN else f"refreshed: {self}"


Check = Callable[[Gathered], Cause | None]


def has_token(g: Gathered) -> Cause | None:
    if g.status.expires_on is None:
        return Cause("has_token", Why.FIRST_TOKEN)
    return None


def no_renew_request(g: Gathered) -> Cause | None:
    return Cause("no_renew_request", Why.RENEW_REQUESTED) if g.renew else None


def same_spec(g: Gathered) -> Cause | None:
    if g.status.issued_for != g.issued_for or g.status.observed_generation != g.generation:
        return Cause("same_spec", Why.SPEC_CHANGED)
    return None


def same_credential(g: Gathered) -> Cause | None:
    if not g.credential_changed:
        return None
    why = Why.SERVICE_ACCOUNT_CHANGED if g.credential_kind == "ServiceAccount" else Why.CREDENTIAL_SECRET_CHANGED
    return Cause("same_credential", why)


def secret_holds_token(g: Gathered) -> Cause | None:
    if not g.secret_present:
        return Cause("secret_holds_token", Why.TOKEN_SECRET_MISSING)
    if g.secret_expiry is None or g.secret_expiry != parse_rfc3339(g.status.expires_on):
        return Cause("secret_holds_token", Why.TOKEN_SECRET_CHANGED)
    return None


def was_issued(g: Gathered) -> Cause | None:
    ready = g.status.ready()
    if ready is None or ready.status != "True" or ready.reason != Reason.TOKEN_ISSUED:
        return Cause("was_issued", Why.RETRY, ready.reason if ready is not None else "no Ready condition")
    return None


def refresh_not_due(g: Gathered) -> Cause | None:
    refresh = parse_rfc3339(g.status.refresh_at)
    if refresh is None or g.now >= refresh:
        return Cause("refresh_not_due", Why.REFRESH_BEFORE_EXPIRY if g.refresh_before else Why.HALF_LIFE)
    return None


def not_expiring(g: Gathered) -> Cause | None:
    refresh, expires = parse_rfc3339(g.status.refresh_at), parse_rfc3339(g.status.expires_on)
    if refresh is None or expires is None or refresh >= expires or expires <= g.now + MIN_REFRESH_DELAY:
        return Cause("not_expiring", Why.EXPIRING)
    return None


# The order is the order of the reasons' importance to a reader: what the user did comes before what the clock did.
KEEP: Sequence[Check] = (has_token, no_renew_request, same_spec, same_credential, secret_holds_token, was_issued,
                         refresh_not_due, not_expiring)


def first_failure(checks: Sequence[Check], g: Gathered) -> Cause | None:
    for check in checks:
        reason = check(g)
        if reason is not None:
            return reason
    return None


class Action(StrEnum):
    KEEP = "keep"  # the token in the Secret stays; nothing is written but, at most, the status
    RERENDER = "rerender"  # only spec.secretTemplate changed: render the Secret again with the token in it
    ACQUIRE = "acquire"  # request a new token


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: Cause | None = None  # why a token is requested (ACQUIRE), or why the Secret is rendered again


def decide(g: Gathered, *, template_only: bool) -> Decision:
    """Keep, render again or acquire. `template_only`: nothing but spec.secretTemplate differs from the spec the
    token was last reported Ready for (in this process's memory). A template is presentation: when it alone changed
    and the token would be kept for the generation it was issued for, the Secret is rendered again with that token
    and none is requested (so a template fix applies even while Entra is unreachable)."""
    reason = first_failure(KEEP, g)
    if reason is None:
        return Decision(Action.KEEP)
    previous = g.status.observed_generation
    if (template_only and reason.check == "same_spec" and previous is not None and previous != g.generation
            and first_failure(KEEP, replace(g, generation=previous)) is None):
        return Decision(Action.RERENDER, reason)
    return Decision(Action.ACQUIRE, reason)


def unread_credential_version(status: GraphAppCredentialStatus, *, remembered: bool, renew: bool,
                              reads_secret: bool, seen_version: str | None) -> str | None:
    """The credential Secret's version if the pass may decide without reading that Secret: this process has not
    read it yet (`remembered` False: after a restart, on a new leader), no renewal waits, and the Secret watch has
    it at the version the status says the token was acquired with. None: read it. A restart then reads only the
    token Secrets (docs/design/2026-12-06-metadata-only-watches.md); the credential is read at the first refresh,
    or at once if it changes (the watch wakes the worker). Not for workload identity (`reads_secret` False)."""
    if remembered or renew or not reads_secret:
        return None
    recorded = status.credential_version
    if seen_version is None or not recorded or seen_version != recorded:
        return None
    return seen_version


def current_issue(status: GraphAppCredentialStatus, issued_for: str, remembered: dt.datetime | None
                  ) -> dt.datetime | None:
    """When the token in the Secret was issued, if it is for this spec: a refresh must get a newer one. Memory has it
    to the microsecond (`remembered`); the status only to the second, so that is rounded up."""
    if status.issued_for != issued_for:
        return None
    if remembered is not None:
        return remembered
    issued = parse_rfc3339(status.last_refresh_time)
    return issued + dt.timedelta(seconds=1) if issued is not None else None
