"""Circuit breakers for token requests. Pure: the caller passes the time.

Retry-After and backoff slow down the one credential that got the answer; with thousands of credentials on one
throttled or failing tenant the others would keep firing. So a throttling answer (429) or an unavailable one (5xx,
timeout, unreachable) opens the breaker of that app on that tenant: one namespace's throttled or broken app must not
hold back the apps of other namespaces in the same Entra tenant (in an enterprise, usually every namespace). The
breaker of the whole tenant (login host + tenant) opens only when Entra's answer says the tenant is throttled
(AADSTS90055), or when distinct apps of at least two namespaces were throttled within a minute (`throttled`).
Everything behind an open breaker holds off until the Retry-After or backoff has passed; then a single request
probes, and only its answer lets the others through.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from dataclasses import dataclass

from graphcred.api.model import Reason
from graphcred.base.backoff import RETRY_AFTER_CAP

# seconds: longest hold-off without a Retry-After asking for more. Short, because it is also how soon a returning
# endpoint is noticed once tokens have expired (at least every 30 s, docs/behaviour.md); a probe is one request per
# tenant. Why breakers per app and per tenant: docs/design/2026-12-06-sharing-breakers-fair-slots.md.
OPEN_CAP = 30.0
PROBE_WAIT = 2.0  # while a probe is in flight, others look again this soon
PROBE_STALE = dt.timedelta(seconds=90)  # a probe that never reported (its task ended) frees the slot after this
# Entra's "TenantThrottlingError: there are too many incoming requests" (for the whole tenant)
TENANT_THROTTLING_CODES = frozenset({90055})
# Throttling seen for this many distinct apps, of at least this many namespaces, within the window: the tenant
# (one namespace alone, spamming its own apps, cannot hold the others')
TENANT_APPS = 3
TENANT_NAMESPACES = 2
TENANT_WINDOW = dt.timedelta(seconds=60)


@dataclass
class _State:
    failures: int
    until: dt.datetime
    reason: Reason
    probe_since: dt.datetime | None = None
    prober: object | None = None  # whose probe it is: only that caller's end frees it


@dataclass(frozen=True)
class Hold:
    """Why and how long to hold off."""

    seconds: float
    reason: Reason
    message: str


class Breaker:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()  # noqa: S311 - jitter only
        self._states: dict[str, _State] = {}
        # tenant key -> app key -> (when it was last throttled, by whose namespace's request)
        self._throttled: dict[str, dict[str, tuple[dt.datetime, str]]] = {}

    def __len__(self) -> int:
        return len(self._states)

    def hold(self, keys: Sequence[str], now: dt.datetime, caller: object | None = None) -> Hold | None:
        """None: go ahead (where a breaker was half-open, this caller is now its probe). Else: wait. `caller`:
        what identifies this request to `abandoned`."""
        states = [(key, self._states[key]) for key in keys if key in self._states]
        for key, state in states:
            if now < state.until:
                return self._open(key, state, now)
        for key, state in states:
            if state.probe_since is not None and now - state.probe_since < PROBE_STALE:
                return Hold(PROBE_WAIT * (0.5 + self._rng.random()), state.reason,
                            f"holding off {key}: waiting for one request to show it has recovered")
        for _, state in states:
            state.probe_since, state.prober = now, caller
        return None

    def still_open(self, keys: Sequence[str], now: dt.datetime) -> Hold | None:
        """For a caller already admitted by `hold`: has a breaker (re)opened meanwhile?"""
        for key in keys:
            state = self._states.get(key)
            if state is not None and now < state.until:
                return self._open(key, state, now)
        return None

    def _open(self, key: str, state: _State, now: dt.datetime) -> Hold:
        seconds = (state.until - now).total_seconds() + PROBE_WAIT * self._rng.random()
        return Hold(seconds, state.reason, f"holding off {key}: it answered {_what(state.reason)} recently; "
                    f"next attempt in {seconds:.0f} s")

    def failed(self, key: str, now: dt.datetime, reason: Reason, retry_after: float | None) -> None:
        """A throttling or unavailable answer: open (again), for Retry-After or a growing backoff."""
        state = self._states.get(key)
        if state is not None and state.probe_since is None and now < state.until:
            # another request of the same burst: one failure per open cycle, but the longest Retry-After wins
            asked = now + dt.timedelta(seconds=min(retry_after or 0.0, RETRY_AFTER_CAP))
            state.until = max(state.until, asked)
            return
        failures = state.failures + 1 if state else 1
        backoff = min(OPEN_CAP, 2.0 ** failures) * (0.5 + 0.5 * self._rng.random())
        hold = max(backoff, min(retry_after or 0.0, RETRY_AFTER_CAP))
        self._states[key] = _State(failures, now + dt.timedelta(seconds=hold), reason)

    def throttled(self, tenant: str, app: str, namespace: str, now: dt.datetime, retry_after: float | None, *,
                  tenant_wide: bool = False) -> bool:
        """A 429 for `app` of `tenant`, from a request of `namespace`: holds the app, and the tenant when the answer
        says so or the throttling is spread over apps and namespaces. Returns whether the tenant is now held."""
        self.failed(app, now, Reason.THROTTLED, retry_after)
        if len(self._throttled) > 1024:
            self._forget_throttling(now)
        seen = self._throttled.setdefault(tenant, {})
        seen[app] = (now, namespace)
        for old in [a for a, (when, _) in seen.items() if now - when > TENANT_WINDOW]:
            del seen[old]
        spread = len(seen) >= TENANT_APPS and len({ns for _, ns in seen.values()}) >= TENANT_NAMESPACES
        if tenant_wide or spread:
            self.failed(tenant, now, Reason.THROTTLED, retry_after)
            return True
        return False

    def _forget_throttling(self, now: dt.datetime) -> None:
        for tenant in [t for t, apps in self._throttled.items()
                       if all(now - when > TENANT_WINDOW for when, _ in apps.values())]:
            del self._throttled[tenant]

    def answered(self, keys: Sequence[str]) -> None:
        """The authority answered (a token, or a refusal about the request itself): close."""
        for key in keys:
            self._states.pop(key, None)

    def abandoned(self, keys: Sequence[str], caller: object | None = None) -> None:
        """`caller`'s request ended without closing these breakers: where it was the probe, let another caller
        probe. Not where another caller is: a request sent before a breaker opened ends later without a word
        on it, and must not let a second probe out beside the one in flight."""
        for key in keys:
            state = self._states.get(key)
            if state is not None and (caller is None or state.prober is caller):
                state.probe_since, state.prober = None, None


def _what(reason: Reason) -> str:
    return "HTTP 429 (throttled)" if reason == Reason.THROTTLED else "with an error or not at all"
