"""The token step of a pass: one token request to the authority, shared by identical credentials, behind the
circuit breakers and the fair token slots.

Order, for each request: the breakers of the tenant and the app (an open one answers for the authority without
asking it); for federation, the ServiceAccount token (before a slot is taken, so that a slow apiserver holds no slot
others need); a token slot (shares per namespace and per authority host); the breakers again (one may have opened
while this request waited); then the request. The answer goes back to the breakers: throttled, unavailable or
answered.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence

from graphcred.acquire.authority import origin
from graphcred.acquire.breaker import TENANT_THROTTLING_CODES, Breaker
from graphcred.acquire.credentials import Material
from graphcred.acquire.sharing import SharedTokens, share_key
from graphcred.acquire.tokens import AcquisitionError, Token
from graphcred.api.model import AppIdentity, Reason
from graphcred.reconcile.calls import KubeCalls
from graphcred.reconcile.ports import TokenPort
from graphcred.reconcile.reading import CredentialReader
from graphcred.reconcile.slots import SlotGate, stepped_aside
from graphcred.telemetry.metrics import Metrics


class Held(AcquisitionError):
    """Not asked at all: the authority's circuit breaker is open."""


class TokenAcquirer:
    """Requests tokens for passes. Holds the state shared by all of them: the breakers, the slots, the requests in
    flight that identical credentials share."""

    def __init__(self, tokens: TokenPort, calls: KubeCalls, reader: CredentialReader, slots: SlotGate,
                 breaker: Breaker, shared: SharedTokens, metrics: Metrics, clock: Callable[[], dt.datetime]) -> None:
        self.tokens = tokens
        self.calls = calls
        self.reader = reader
        self.slots = slots
        self.breaker = breaker
        self.shared = shared
        self.metrics = metrics
        self._clock = clock

    async def acquire(self, namespace: str, name: str, identity: AppIdentity, scopes: Sequence[str],
                      material: Material, *,
                      reuse: bool, newer_than: dt.datetime | None) -> tuple[Token, bool]:
        """A token, and whether it came from an identical credential's request (True) or this one's. While it
        waits (for a slot, for the authority), the pass is not counted among the controller's passes in progress.
        `reuse`: an identical credential's token just acquired will do; `newer_than`: only one issued after it."""
        async with stepped_aside():  # an AcquisitionError ends the pass as it is (a Failure)
            token, shared = await self.shared.get(share_key(identity, scopes, material),
                                                  lambda: self._request(namespace, name, identity, scopes, material),
                                                  reuse=reuse, newer_than=newer_than)
        if shared:
            self.metrics.acquisitions.labels("shared", "TokenIssued").inc()
        return token, shared

    async def _request(self, namespace: str, name: str, identity: AppIdentity, scopes: Sequence[str],
                       material: Material) -> Token:
        tenant = identity.authority()
        keys = (tenant, f"{tenant} app {identity.client_id}")
        request = object()  # this request, to the breakers: it frees only the probe marks it set
        self._check_breaker(keys, request)
        try:
            presented = await self.reader.with_assertion(identity, material)
            try:
                async with self.slots.slot(namespace, origin(identity.authority_base()) or identity.authority_base(),
                                           who=name):
                    self._check_breaker(keys, request, admitted=True)
                    started = time.monotonic()
                    try:
                        token = await self.calls.blocking(self.tokens.acquire, identity, scopes, presented)
                    finally:
                        self.metrics.latency.observe(time.monotonic() - started)
            finally:
                del presented  # the ServiceAccount token is not kept beyond its one request
        except Held:
            raise
        except AcquisitionError as exc:
            if not exc.permanent and exc.reason == Reason.THROTTLED:
                # the app; the tenant only if Entra says so or several namespaces' apps are throttled
                self.breaker.throttled(keys[0], keys[1], namespace, self._clock(), exc.retry_after,
                                       tenant_wide=exc.code in TENANT_THROTTLING_CODES)
            elif not exc.permanent and exc.reason == Reason.AUTHORITY_UNAVAILABLE:
                self.breaker.failed(keys[1], self._clock(), exc.reason, exc.retry_after)
            else:
                self.breaker.answered(keys)
            raise
        finally:
            # Whatever became of this request, it probes no longer (where it was the probe). Not only when it got
            # no answer: a 503 of this app's opens the app's breaker and says nothing of the tenant's, whose probe
            # must go to the next caller now, not after PROBE_STALE. A no-op for breakers answered() closed or
            # failed() just reopened, and for another caller's probe.
            self.breaker.abandoned(keys, request)
        self.breaker.answered(keys)
        self.metrics.acquisitions.labels("success", "TokenIssued").inc()
        return token

    def _check_breaker(self, keys: tuple[str, ...], request: object, *, admitted: bool = False) -> None:
        now = self._clock()
        hold = self.breaker.still_open(keys, now) if admitted else self.breaker.hold(keys, now, request)
        if hold is not None:
            raise Held(hold.reason, hold.message, permanent=False, retry_after=hold.seconds)
