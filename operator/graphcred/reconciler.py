"""One pass over one GraphAppCredential: CR → spec → credential → token → Secret → status.

The reconciler holds no kopf: it is handed a plain snapshot of the object and a small per-object memory, does its
I/O through `Kube` and `TokenClient` (in threads), and returns how long to wait before the next pass (None: until
the object or its credential changes).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from pydantic import ValidationError

from . import credentials, policy
from .credentials import CredentialError, Material
from .kube import Conflict, Kube
from .metrics import Metrics
from .model import (
    API_VERSION,
    KIND,
    Condition,
    GraphAppCredentialSpec,
    GraphAppCredentialStatus,
    Reason,
)
from .secret import Owner, is_ours, parse_rfc3339, render, rfc3339, stored_expiry
from .sharing import SharedTokens, share_key
from .tokens import AcquisitionError, Token, TokenClient

log = logging.getLogger(__name__)
T = TypeVar("T")


class EventSink(Protocol):
    def __call__(self, obj: dict[str, Any], type: str, reason: str, message: str) -> None: ...  # noqa: A002


@dataclass
class Memory:
    """What the operator remembers about one object between passes (small: no secret data)."""

    first_pass: bool = True
    failures: int = 0
    missing_roles_checks: int = 0
    last_status: dict[str, Any] | None = None
    # For the Secret watch: which Secrets this object depends on, and the credential version last read
    # ("" when the Secret was missing, None before the first read).
    credential_secret: str | None = None
    credential_version: str | None = None
    target_secret: str | None = None
    # resourceVersion of the token Secret as we last wrote it: a refresh replaces it without reading it first
    written_version: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """The parts of a GraphAppCredential a pass needs."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: dict[str, Any]
    status: dict[str, Any]

    @classmethod
    def of(cls, body: Any) -> Snapshot:
        meta = body["metadata"]
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"],
                   generation=int(meta.get("generation") or 1), spec=dict(body.get("spec") or {}),
                   status=dict(body.get("status") or {}))

    @property
    def owner(self) -> Owner:
        return Owner(self.name, self.namespace, self.uid)

    def event_ref(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": KIND,
                "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid}}


class Outcome(Exception):
    """A pass ended early with a condition to report (a failure before or during acquisition)."""

    def __init__(self, reason: Reason, message: str, *, permanent: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason, self.message, self.permanent, self.retry_after = reason, message, permanent, retry_after


def spec_error_message(exc: ValidationError) -> str:
    """A readable summary of what is wrong with the spec. Never echoes input values."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        parts.append(f"spec.{where}: {err['msg']}")
    return "; ".join(parts)


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        tokens: TokenClient,
        emit: EventSink,
        *,
        run_blocking: Callable[..., Awaitable[Any]] | None = None,
        token_concurrency: int = 16,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        shared: SharedTokens | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.shared = shared or SharedTokens()
        self.kube = kube
        self.tokens = tokens
        self.emit = emit
        self._run_blocking = run_blocking or asyncio.to_thread
        self._token_slots = asyncio.Semaphore(token_concurrency)
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter only

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        result: T = await self._run_blocking(fn, *args)
        return result

    async def reconcile(self, snap: Snapshot, mem: Memory) -> float | None:
        """One pass. Returns seconds until the next pass, or None to wait for a change."""
        now = self._clock()
        try:
            spec = self._parse_spec(snap)
            mem.credential_secret = spec.credential.secret_name
            secret_name = spec.effective_secret_name(snap.name)
            if mem.target_secret != secret_name:
                mem.target_secret, mem.written_version = secret_name, None
            material, credential_version = await self._material(snap, spec, mem, now)
            existing = await self._target(snap, mem, secret_name)
            if mem.first_pass:
                mem.first_pass = False
                delay = self._resume(snap, existing, credential_version, now)
                if delay is not None:
                    return delay
            # while roles are missing, each check needs a new token: consent shows only in new tokens
            token = await self._acquire(spec, material, reuse=mem.missing_roles_checks == 0)
            del material  # the credential is not kept between passes
            log.debug("%s/%s: token acquired from %s (expires %s)", snap.namespace, snap.name,
                      spec.authority_base(), rfc3339(token.expires_on))
            mem.written_version = await self._write_secret(snap, secret_name, existing, token)
            log.debug("%s/%s: Secret %s %s", snap.namespace, snap.name, secret_name,
                      "created" if existing is None else "updated")
        except Outcome as outcome:
            mem.first_pass = False
            return await self._failed(snap, mem, outcome)
        return await self._issued(snap, mem, spec, secret_name, token, credential_version)

    # --- steps ------------------------------------------------------------------------------------------------
    def _parse_spec(self, snap: Snapshot) -> GraphAppCredentialSpec:
        try:
            spec = GraphAppCredentialSpec.model_validate(snap.spec)
        except ValidationError as exc:
            raise Outcome(Reason.INVALID_SPEC, spec_error_message(exc), permanent=True) from None
        if spec.credential.workload_identity is not None:
            raise Outcome(Reason.INVALID_SPEC, "spec.credential.workloadIdentity is not supported yet; use "
                          "clientSecret or certificate", permanent=True)
        return spec

    async def _material(self, snap: Snapshot, spec: GraphAppCredentialSpec, mem: Memory, now: dt.datetime
                        ) -> tuple[Material, str]:
        name = spec.credential.secret_name
        assert name is not None  # workload identity was refused above
        secret = await self._blocking(self.kube.read_secret, snap.namespace, name)
        if secret is None:
            mem.credential_version = ""
            raise Outcome(Reason.CREDENTIAL_NOT_FOUND,
                          f"Secret {name} not found in namespace {snap.namespace}", permanent=True)
        version = str(secret["metadata"].get("resourceVersion", ""))
        mem.credential_version = version
        try:
            if spec.credential.client_secret is not None:
                return credentials.client_secret(secret.get("data"), spec.credential.client_secret), version
            assert spec.credential.certificate is not None
            return credentials.certificate(secret.get("data"), spec.credential.certificate, now), version
        except CredentialError as exc:
            raise Outcome(exc.reason, exc.message, permanent=True) from None

    def _resume(self, snap: Snapshot, existing: dict[str, Any] | None, credential_version: str,
                now: dt.datetime) -> float | None:
        """After a restart, keep a good token and wait for its scheduled refresh instead of re-acquiring."""
        status = GraphAppCredentialStatus.model_validate(snap.status) if snap.status else None
        if status is None or existing is None:
            return None
        ready = status.ready()
        refresh = parse_rfc3339(status.refresh_at)
        if ready is None or ready.status != "True" or not policy.may_resume(
            now, generation=snap.generation, observed_generation=status.observed_generation,
            refresh_at_time=refresh, secret_expiry=stored_expiry(existing["metadata"]),
            credential_version=status.credential_version, current_credential_version=credential_version,
        ):
            return None
        assert refresh is not None
        log.info("resuming %s/%s: token valid, next refresh at %s", snap.namespace, snap.name, rfc3339(refresh))
        return max(0.0, (refresh - now).total_seconds())

    async def _target(self, snap: Snapshot, mem: Memory, name: str) -> dict[str, Any] | None:
        """The token Secret as far as writing it needs: None if absent, else (at least) its metadata.
        After our own write its resourceVersion is known and the read is skipped: a change by anyone else since
        then surfaces as a conflict on replace."""
        if mem.written_version is not None:
            return {"metadata": {"resourceVersion": mem.written_version}}
        existing = await self._blocking(self.kube.read_secret, snap.namespace, name)
        if existing is not None and not is_ours(existing["metadata"], snap.owner):
            raise Outcome(Reason.SECRET_CONFLICT,
                          f"Secret {name} exists and is not controlled by this GraphAppCredential; "
                          "graphcred never modifies it: delete it or choose another spec.secretName",
                          permanent=True)
        return existing

    async def _acquire(self, spec: GraphAppCredentialSpec, material: Material, *, reuse: bool = True) -> Token:
        try:
            token, shared = await self.shared.get(share_key(spec, material),
                                                  lambda: self._acquire_now(spec, material), reuse=reuse)
        except AcquisitionError as exc:
            raise Outcome(exc.reason, exc.message, permanent=exc.permanent, retry_after=exc.retry_after) from None
        if shared:
            self.metrics.acquisitions.labels("shared", "TokenIssued").inc()
        return token

    async def _acquire_now(self, spec: GraphAppCredentialSpec, material: Material) -> Token:
        async with self._token_slots:
            started = time.monotonic()
            try:
                token = await self._blocking(self.tokens.acquire, spec, material)
            finally:
                self.metrics.latency.observe(time.monotonic() - started)
            self.metrics.acquisitions.labels("success", "TokenIssued").inc()
            return token

    async def _write_secret(self, snap: Snapshot, name: str, existing: dict[str, Any] | None, token: Token
                            ) -> str:
        """Create or replace the token Secret; returns its new resourceVersion."""
        body = render(name, snap.owner, token.access_token, token.expires_on)
        try:
            if existing is None:
                return await self._blocking(self.kube.create_secret, snap.namespace, body)
            return await self._blocking(self.kube.replace_secret, snap.namespace, name, body,
                                        existing["metadata"]["resourceVersion"])
        except Conflict:
            # Someone wrote the Secret between our read and write: only retry if it is (still) ours.
            current = await self._blocking(self.kube.read_secret, snap.namespace, name)
            if current is not None and not is_ours(current["metadata"], snap.owner):
                raise Outcome(Reason.SECRET_CONFLICT,
                              f"Secret {name} was created by someone else; graphcred never modifies it",
                              permanent=True) from None
            if current is None:
                return await self._blocking(self.kube.create_secret, snap.namespace, body)
            return await self._blocking(self.kube.replace_secret, snap.namespace, name, body,
                                        current["metadata"]["resourceVersion"])

    # --- reporting --------------------------------------------------------------------------------------------
    async def _issued(self, snap: Snapshot, mem: Memory, spec: GraphAppCredentialSpec, secret_name: str,
                      token: Token, credential_version: str) -> float:
        mem.failures = 0
        previous = self._previous(snap, mem).ready()
        verdict = policy.issued_verdict(token.claims.roles, spec.required_roles, secret_name, token.expires_on)
        refresh = policy.refresh_at(token.issued_at, token.expires_on, spec.refresh_before(), self._rng)
        delay = (refresh - self._clock()).total_seconds()
        if verdict.reason == Reason.MISSING_ROLES:
            mem.missing_roles_checks += 1
            delay = min(delay, policy.missing_roles_retry(mem.missing_roles_checks, self._rng))
            refresh = self._clock() + dt.timedelta(seconds=delay)
        else:
            mem.missing_roles_checks = 0
        status = GraphAppCredentialStatus(
            conditions=[self._condition(snap, previous, verdict.ready, verdict.reason, verdict.message)],
            observed_generation=snap.generation,
            secret_name=secret_name,
            expires_on=rfc3339(token.expires_on),
            refresh_at=rfc3339(refresh),
            last_refresh_time=rfc3339(token.issued_at),
            consecutive_failures=0,
            roles=list(token.claims.roles),
            audience=token.claims.audience,
            tenant_id=token.claims.tenant_id,
            app_id=token.claims.app_id,
            credential_version=credential_version,
        )
        await self._report(snap, mem, previous, status, verdict.ready, verdict.reason, verdict.message)
        log.debug("%s/%s: next refresh at %s", snap.namespace, snap.name, rfc3339(refresh))
        return max(delay, 0.0)

    async def _failed(self, snap: Snapshot, mem: Memory, outcome: Outcome) -> float | None:
        mem.failures += 1
        self.metrics.failed(outcome.reason.value)
        previous = self._previous(snap, mem)
        now = self._clock()
        expires = parse_rfc3339(previous.expires_on)
        token_valid = expires is not None and expires > now
        # A transient failure while the last token is still valid: the Secret still works, so Ready stays True
        # and the reason tells that refreshing is failing. Permanent failures need the user: Ready=False.
        ready = token_valid and not outcome.permanent
        message = outcome.message
        if token_valid and expires is not None:
            message += f"; the last token in the Secret stays valid until {rfc3339(expires)}"
        delay: float | None = None
        if not outcome.permanent:
            delay = policy.backoff(mem.failures, outcome.retry_after, self._rng)
            if token_valid and expires is not None:
                # wake at expiry at the latest, to turn Ready to False when the token is gone
                delay = min(delay, max((expires - now).total_seconds(), 0.0) + 1.0)
        status = previous.model_copy(update={
            "conditions": [self._condition(snap, previous.ready(), ready, outcome.reason, message)],
            "observed_generation": snap.generation,
            "consecutive_failures": mem.failures,
            "refresh_at": rfc3339(now + dt.timedelta(seconds=delay)) if delay is not None else None,
        })
        await self._report(snap, mem, previous.ready(), status, ready, outcome.reason, message)
        log.debug("%s/%s: %s (%s), attempt %d, next attempt %s", snap.namespace, snap.name, outcome.reason.value,
                  "permanent" if outcome.permanent else "transient", mem.failures,
                  f"in {delay:.1f} s" if delay is not None else "after a change")
        return delay

    def _previous(self, snap: Snapshot, mem: Memory) -> GraphAppCredentialStatus:
        raw = mem.last_status if mem.last_status is not None else snap.status
        try:
            return GraphAppCredentialStatus.model_validate(raw or {})
        except ValidationError:
            return GraphAppCredentialStatus()

    def _condition(self, snap: Snapshot, previous: Condition | None, ready: bool, reason: Reason,
                   message: str) -> Condition:
        status: Literal["True", "False"] = "True" if ready else "False"
        changed = previous is None or previous.status != status
        return Condition(status=status, reason=reason.value, message=message, observed_generation=snap.generation,
                         last_transition_time=rfc3339(self._clock()) if changed or previous is None
                         else previous.last_transition_time)

    async def _report(self, snap: Snapshot, mem: Memory, previous: Condition | None,
                      status: GraphAppCredentialStatus, ready: bool, reason: Reason, message: str) -> None:
        """Patch the status if it changed; post an Event if Ready or its reason changed from `previous`."""
        body = status.to_k8s()
        expires = parse_rfc3339(status.expires_on)
        self.metrics.report(snap.namespace, snap.name, expires.timestamp() if expires else None,
                            status.consecutive_failures)
        before = mem.last_status if mem.last_status is not None else snap.status
        if body != before:
            # merge patch: keys that disappeared must be sent as null to be removed
            patch = {**{k: None for k in before or {} if k not in body}, **body}
            await self._blocking(self.kube.patch_status, snap.namespace, snap.name, patch)
        mem.last_status = body
        if previous is None or previous.status != ("True" if ready else "False") or previous.reason != reason:
            self.emit(snap.event_ref(), "Normal" if reason == Reason.TOKEN_ISSUED else "Warning", reason.value,
                      message)
            log.log(logging.INFO if ready else logging.WARNING, "%s/%s: %s: %s", snap.namespace, snap.name,
                    reason.value, message)
