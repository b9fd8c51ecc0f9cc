"""One pass over one GraphAppCredential: CR → spec → credential → token → Secret → status.

A pass gathers, decides, acts, reports:

1. spec        the object's spec, validated, and the operator's own rules (workload identity on, authority allowed)
2. gather      the status it starts from; the credential (`reading`; skipped when the Secret watch vouches for the
               version the token was acquired with); the token Secret (`writing`; skipped after our own write)
3. decide      keep the token, render the Secret again with it, or request a new one, and why (`decide`)
4. act         the credential if not read yet; the token (`acquiring`); the Secret written (`writing`)
5. report      metrics, status patch, Event (`reporting` decides what; `_report` writes it, in that order)

The reconciler holds no kopf: it is handed a plain snapshot of the object and its memory, does its I/O through its
ports (`reconcile/ports.py`: Kubernetes, the token endpoint) in threads, and returns how long to wait before the
next pass (None: until the object or its credential changes). A pass that cannot go on raises `Failure`, reported
like any other end.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from graphcred.acquire import keygen
from graphcred.acquire.authority import AllowedAuthorities, not_allowed_message
from graphcred.acquire.breaker import Breaker
from graphcred.acquire.credentials import Certificate, ManagedIdentity, Material
from graphcred.acquire.graphkeys import GraphKeys
from graphcred.acquire.sharing import SharedTokens
from graphcred.acquire.tokens import AcquisitionError, Token
from graphcred.api.failures import Failure
from graphcred.api.model import (
    AppIdentity,
    CertificateRotation,
    Condition,
    GraphAppCredentialSpec,
    GraphAppCredentialStatus,
    Reason,
)
from graphcred.base.times import parse_rfc3339, rfc3339
from graphcred.kube.calls import Gone, describe_failure
from graphcred.kube.errors import KubeError
from graphcred.kube.reads import SharedReads
from graphcred.reconcile import policy, reporting
from graphcred.reconcile.acquiring import TokenAcquirer
from graphcred.reconcile.apps import DEFAULT_CLUSTER_RESOURCE_NAMESPACE, ClusterApps, Reads, Resolved
from graphcred.reconcile.appstatus import AppOutcomes
from graphcred.reconcile.calls import KubeCalls
from graphcred.reconcile.decide import (
    Action,
    Cause,
    Decision,
    Gathered,
    current_issue,
    decide,
    unread_credential_version,
)
from graphcred.reconcile.memory import Memory
from graphcred.reconcile.outcome import spec_error_message
from graphcred.reconcile.policy import Retry
from graphcred.reconcile.ports import EventSink, KubePort, SecretDirectory, TokenPort
from graphcred.reconcile.reading import MANAGED_IDENTITY_VERSION, CredentialReader
from graphcred.reconcile.restarter import Restarter
from graphcred.reconcile.rotation import (
    NOT_REGISTERED_RETRY,
    RENEWAL_CONDITION,
    certificate_status,
    not_registered,
    renewal_condition,
)
from graphcred.reconcile.rotator import ENTRA_KEY_REFUSED, Rotator
from graphcred.reconcile.slots import RequestBudget, SlotGate, TurnedAway
from graphcred.reconcile.snapshot import Snapshot, Target
from graphcred.reconcile.writing import TokenSecretWriter
from graphcred.telemetry.metrics import Metrics
from graphcred.tokensecret.render import stored_expiry

log = logging.getLogger(__name__)
GENERATING_RETRY = 5.0  # seconds: the Secret's creation wakes the pass anyway; this is the fallback


def token_spec(spec: GraphAppCredentialSpec, who: _Identity) -> str:
    """Digest of everything in the spec but secretTemplate, and of the identity it borrows: what the token and the
    Ready verdict depend on."""
    borrowed = who.identity.model_dump_json() if who.app is not None else ""
    return hashlib.sha256((spec.model_dump_json(exclude={"secret_template"}) + borrowed).encode()).hexdigest()[:16]


def _validated(raw: dict[str, Any]) -> GraphAppCredentialSpec | None:
    try:
        return GraphAppCredentialSpec.model_validate(raw)
    except ValidationError:
        return None


def _secret_expiry(existing: Target | None, previous: GraphAppCredentialStatus) -> dt.datetime | None:
    """The expiry of the token the token Secret holds: as read, as the Secret watch saw it, or (our own write,
    unchanged since) the one the status describes."""
    if existing is None:
        return None
    if existing.secret is not None:
        return stored_expiry(existing.secret["metadata"])
    return parse_rfc3339(existing.expires_on if existing.expires_on is not None else previous.expires_on)


def _holds(existing: Target | None, previous: GraphAppCredentialStatus) -> bool:
    """Does the token Secret hold the token the status describes?"""
    return existing is not None and _secret_expiry(existing, previous) == parse_rfc3339(previous.expires_on)


def _same_token(previous: GraphAppCredentialStatus, issued_for: str, token: Token) -> bool:
    """Is `token` the one the Secret holds (a managed identity's endpoint answers its cached token again)? Same
    spec, same expiry to the second."""
    expires = parse_rfc3339(previous.expires_on)
    return (previous.issued_for == issued_for and expires is not None
            and abs((token.expires_on - expires).total_seconds()) < 1.0)


def _upgraded(status: GraphAppCredentialStatus, spec: GraphAppCredentialSpec, identity: AppIdentity,
              secret_name: str, issued_for: str) -> GraphAppCredentialStatus:
    """A status written before `issuedFor` existed: its decoded claims tell whether the token matches the spec.
    Without this, upgrading the operator would re-acquire every token at once."""
    if status.issued_for is not None:
        return status
    resource = spec.scopes[0].removesuffix("/.default")
    if (status.app_id == identity.client_id and status.tenant_id == identity.tenant_id and status.audience == resource
            and status.secret_name == secret_name):
        return status.model_copy(update={"issued_for": issued_for})
    return status


@dataclass(frozen=True)
class _Identity:
    """Whose token a pass requests: the identity (the spec's own, or its ClusterGraphApp's), the namespace its
    credential material lives in, and the app (None: the spec names its own)."""

    identity: AppIdentity
    namespace: str
    app: Resolved | None = None


_TOKEN_NEWS = (Reason.TOKEN_ISSUED.value, "")  # what a pass that got (or kept) a token says of its app
# Failures of a ClusterGraphApp's own credential (its Secret, ServiceAccount, identity, registration in Entra)
_APPS_OWN = frozenset({Reason.CREDENTIAL_NOT_FOUND, Reason.INVALID_CREDENTIAL, Reason.UNAUTHORIZED,
                       Reason.SERVICE_ACCOUNT_NOT_AUTHORIZED})


class Revoked(Failure):
    """Permission to the token was withdrawn and its Secret deleted: the status no longer describes a token."""


@dataclass(frozen=True)
class _Asked:
    """What this pass's spec asks for, as far as a failure report needs it (None: the spec could not be read)."""

    issued_for: str | None = None
    required_roles: tuple[str, ...] | None = None


class Reconciler:
    """Runs passes. Holds what all passes share: the credential reader, the token acquirer (breakers, slots, shared
    requests), the Secret writer, the clock and the rng; each object's own state is its `Memory`."""

    def __init__(
        self,
        kube: KubePort,
        tokens: TokenPort,
        emit: EventSink,
        *,
        run_blocking: Callable[..., Awaitable[Any]] | None = None,
        token_concurrency: int = 16,
        slot_share: int = 0,
        budget: RequestBudget | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        shared: SharedTokens | None = None,
        workload_identity: bool = False,
        authority_hosts: Collection[str] = (),
        secrets: SecretDirectory | None = None,
        apps: ClusterApps | None = None,
        app_outcomes: AppOutcomes | None = None,
        graph: GraphKeys | None = None,
        graph_endpoint: str | None = None,
        kube_on_loop: Mapping[str, Callable[..., Awaitable[Any]]] | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        # off: workloadIdentity credentials are refused without reading a ServiceAccount or requesting its token
        self.workload_identity = workload_identity
        # authority hosts besides the clouds' own that may be contacted at all (--authority-host)
        self.authorities = AllowedAuthorities(authority_hosts)
        self.kube = kube
        self.emit = emit
        # ClusterGraphApps and namespace labels, for credentials with an appRef; what their passes end with
        self.apps = apps if apps is not None else ClusterApps(DEFAULT_CLUSTER_RESOURCE_NAMESPACE)
        self.app_outcomes = app_outcomes if app_outcomes is not None else AppOutcomes()
        self._reads = Reads(self._read_app, self._read_namespace)
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter only
        self.calls = KubeCalls(kube, run_blocking, kube_on_loop)
        # What the Secret watch knows: reads it answers are skipped
        self.reader = CredentialReader(self.calls, secrets)
        self.writer = TokenSecretWriter(self.calls, secrets)
        # fair shares per namespace and per authority host (slot_share 0: a quarter of the slots); the clouds' hosts
        # and those the admin allowed (the only ones contacted at all) are no tenant's to slow down, and count per
        # namespace only
        slots = SlotGate(token_concurrency, slot_share, exempt=self.authorities.origins, budget=budget)
        # certificates with certificate.rotation: generated, renewed in Entra (addKey/removeKey), one task per Secret
        self.rotator = Rotator(self.calls, lambda *request: tokens.acquire(*request),
                               graph if graph is not None else GraphKeys(),
                               graph_endpoint=graph_endpoint, clock=clock)
        # restart targets: workloads restarted once for each new token (spec.restartTargets)
        self.restarter = Restarter(kube, self.calls.blocking, emit, self.metrics, clock, self._rng)
        self.acquirer = TokenAcquirer(tokens, self.calls, self.reader, slots, Breaker(self._rng),
                                      shared if shared is not None else SharedTokens(),  # an empty one is falsy
                                      self.metrics, clock)

    def now(self) -> dt.datetime:
        return self._clock()

    @property
    def secrets(self) -> SecretDirectory | None:
        return self.reader.secrets

    @secrets.setter
    def secrets(self, directory: SecretDirectory | None) -> None:
        self.reader.secrets = self.writer.secrets = directory

    @property
    def credential_reads(self) -> SharedReads:
        return self.reader.reads

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.calls.blocking(fn, *args)

    async def reconcile(self, snap: Snapshot, mem: Memory) -> float | None:
        """One pass. Returns seconds until the next pass, or None to wait for a change."""
        async with contextlib.AsyncExitStack() as held:  # the credential Secret read, shared while the pass runs
            delay = await self._pass(snap, mem, held)
        self._tell_app(snap, mem)
        self._tell_restarter(snap, mem)
        return delay

    def _tell_restarter(self, snap: Snapshot, mem: Memory) -> None:
        """The credential's restart targets and the token its Secret now holds (known by its lastRefreshTime): the
        restarter restarts them once for each new token, and for nothing else."""
        key = (snap.namespace, snap.name)
        if not (snap.spec.get("restartTargets") or snap.spec.get("restartUnrefreshable")
                or snap.status.get("restarts") or self.restarter.tracking(key)):
            return  # the common case, without parsing the spec again
        spec = _validated(snap.spec)
        status = mem.report.last_status if mem.report.last_status is not None else snap.status
        token_time = status.get("lastRefreshTime") if status.get("expiresOn") else None
        named = [(t.kind.value, t.name) for t in spec.restart_targets] if spec is not None else []
        self.restarter.track(key, snap.event_ref(), snap.status, named,
                             spec is not None and spec.restart_unrefreshable,
                             token_time if isinstance(token_time, str) else None)

    def _tell_app(self, snap: Snapshot, mem: Memory) -> None:
        """How the pass ended, for the status of the ClusterGraphApp it named (if any): every end, a kept token's
        too, so that the app's status counts its users from their first pass after a restart."""
        key = (snap.namespace, snap.name)
        if mem.report.app is None:
            self.app_outcomes.forget(key)
        else:
            self.app_outcomes.record(mem.report.app, key, mem.report.app_permitted, mem.report.app_news,
                                     self._clock())

    async def _pass(self, snap: Snapshot, mem: Memory, held: contextlib.AsyncExitStack) -> float | None:
        now = self._clock()
        renew, mem.renew.requested = mem.renew.requested, False
        asked = _Asked()
        mem.report.app, mem.report.app_permitted, mem.report.app_news = None, False, None
        mem.credential.expiry_read = False
        who: _Identity | None = None
        stage = ""  # "app" while the app's material is read or its token requested: a failure then is the app's
        credential_expiry: dt.datetime | None = None
        try:
            # 1. spec (and first, a token the Secret holds from an app the spec no longer names)
            try:
                spec = self._parse_spec(snap)
            except Failure:
                await self._guard_held_token(snap, mem, _validated(snap.spec))
                raise
            await self._guard_held_token(snap, mem, spec)
            secret_name = spec.effective_secret_name(snap.name)
            mem.secret.retarget(secret_name)
            mem.report.app = spec.app_ref.name if spec.app_ref is not None else None
            who = await self._identity(snap, spec, mem, secret_name)
            mem.report.app_permitted = who.app is not None
            identity = who.identity
            issued_for = spec.issued_for(snap.name, identity)
            settled = token_spec(spec, who)  # what the token and the Ready verdict depend on
            asked = _Asked(issued_for, tuple(spec.required_roles))
            mem.credential.secret = identity.credential.secret_name
            mem.report.rotation = self._rotation(snap, who)
            # 2. gather
            previous = _upgraded(self._previous(snap, mem), spec, identity, secret_name, issued_for)
            material: Material | None = None
            credential_version = self._unread_credential_version(who, mem, previous, renew)
            if credential_version is None:
                stage = "app"
                material, credential_version = await self.reader.read(who.namespace, identity, mem.credential, now,
                                                                      held)
                stage = ""
            fingerprint = material.fingerprint() if material is not None else None
            existing = await self.writer.target(snap, mem.secret, secret_name)
            # 3. decide
            decision = self._decide(snap, spec, identity, issued_for, settled, mem, previous, existing, fingerprint,
                                    credential_version, renew, now)
            # 4. act
            if decision.action == Action.KEEP:
                mem.report.app_news = _TOKEN_NEWS
                mem.credential.material, mem.token.settled_spec = fingerprint, settled
                return await self._kept(snap, mem, previous, credential_version, now)
            if material is None:  # not read while gathering: the token is needed, and so is the credential
                stage = "app"
                material, credential_version = await self.reader.read(who.namespace, identity, mem.credential, now,
                                                                      held)
                stage = ""
                fingerprint = material.fingerprint()
                if decision.action == Action.RERENDER:  # decided on the watch's version: again, on what was read
                    decision = self._decide(snap, spec, identity, issued_for, settled, mem, previous, existing,
                                            fingerprint, credential_version, renew, now)
            if decision.action == Action.RERENDER:
                stored = await self.writer.stored(snap, secret_name, parse_rfc3339(previous.expires_on),
                                                  parse_rfc3339(previous.last_refresh_time), mem.token.issued_at)
                if stored is not None:
                    token, target = stored
                    await self.writer.write(snap, mem.secret, spec, identity, secret_name, target, token)
                    mem.credential.material = fingerprint
                    mem.report.app_news = _TOKEN_NEWS
                    return await self._rerendered(snap, mem, previous, secret_name, now)
            log.debug("%s/%s: requesting a token: %s", snap.namespace, snap.name, decision.reason)
            stage = "app"
            token = await self._acquire_noting_key(snap, spec, who, mem, previous, material, issued_for, renew)
            stage = ""
            mem.report.app_news = _TOKEN_NEWS  # a token came: the app works (a role a tenant requires is theirs)
            if mem.credential.expiry_read:
                credential_expiry = mem.credential.expires
            if (isinstance(material, ManagedIdentity) and _same_token(previous, issued_for, token)
                    and _holds(existing, previous) and snap.generation == previous.observed_generation):
                # the identity endpoint answered the token the Secret holds (IMDS caches): nothing to write
                return await self._answered_again(snap, mem, previous, token, fingerprint, settled, renew)
            del material  # not kept between passes (a small read is, while unchanged: kube/reads.py)
            await held.aclose()
            if who.app is not None:
                await self._still_permitted(snap, spec, who.app, mem, secret_name)
            await self.writer.write(snap, mem.secret, spec, identity, secret_name, existing, token)
            mem.credential.material, mem.token.issued_at = fingerprint, token.issued_at
            log.debug("%s/%s: Secret %s %s", snap.namespace, snap.name, secret_name,
                      "created" if existing is None else "updated")
            await self.writer.remove_old(snap, previous.secret_name, secret_name)
        except TurnedAway:
            mem.renew.requested = mem.renew.requested or renew  # served by the pass that gets the place
            raise
        except Failure as outcome:
            if mem.report.rotation is not None and outcome.reason == Reason.CREDENTIAL_NOT_FOUND:
                secret = mem.report.rotation[1]
                self.rotator.secret_changed((mem.report.rotation[0], secret))
                outcome = Failure(Reason.PENDING, f"graphcred is generating a key pair for Secret {secret} "
                                  "(certificate.rotation)", retry=Retry.TRANSIENT, retry_after=GENERATING_RETRY)
            if who is not None and who.app is not None:
                if stage == "app":
                    mem.report.app_news = (outcome.reason.value, outcome.message)
                outcome = self._for_tenant(who.app.app.name, outcome)
            return await self._failed(snap, mem, outcome, asked)
        if mem.report.app is not None:
            self.app_outcomes.token(mem.report.app, token.issued_at, credential_expiry)
        return await self._issued(snap, mem, spec, secret_name, token, credential_version, renew, issued_for,
                                  settled, decision.reason)

    def _rotation(self, snap: Snapshot, who: _Identity) -> tuple[str, str, CertificateRotation] | None:
        """certificate.rotation: the rotator looks after the certificate Secret (and creates it, with a key pair it
        generates, if it does not exist); the Secret it looks after, for the report."""
        ref = who.identity.credential.certificate
        if ref is None or ref.rotation is None or who.app is not None:
            self.rotator.untrack((snap.namespace, snap.name))
            return None
        # the rotator's task also creates the Secret if it does not exist (not this pass: key generation waits)
        self.rotator.track((who.namespace, ref.name), (snap.namespace, snap.name), who.identity, ref.rotation,
                           ref.send_x5c)
        return who.namespace, ref.name, ref.rotation

    async def _acquire_noting_key(self, snap: Snapshot, spec: GraphAppCredentialSpec, who: _Identity, mem: Memory,
                                  previous: GraphAppCredentialStatus, material: Material, issued_for: str,
                                  renew: bool) -> Token:
        """`_acquire`; with certificate.rotation, the rotator learns whether Entra accepts the certificate, and a
        certificate Entra does not know is CertificateNotRegistered, with what to do."""
        rotation = mem.report.rotation
        if rotation is None or not isinstance(material, Certificate):
            return await self._acquire(snap, spec, who, mem, previous, material, issued_for, renew)
        key = (rotation[0], rotation[1])
        thumbprint = keygen.thumbprint(material.leaf)
        try:
            token = await self._acquire(snap, spec, who, mem, previous, material, issued_for, renew)
        except AcquisitionError as exc:
            if exc.code != ENTRA_KEY_REFUSED:
                raise
            self.rotator.token_outcome(key, thumbprint, accepted=False)
            # polled: the upload happens in Entra, unseen; every 30 s at first, then less often (5 min at most)
            wait = min(NOT_REGISTERED_RETRY * 2 ** min(mem.report.failures // 4, 4), 300.0)
            raise Failure(Reason.CERTIFICATE_NOT_REGISTERED, not_registered(rotation[1], thumbprint,
                                                                            who.identity.client_id),
                          retry=Retry.TRANSIENT, retry_after=wait) from None
        self.rotator.token_outcome(key, thumbprint, accepted=True)
        return token

    def _with_certificate(self, snap: Snapshot, mem: Memory, status: GraphAppCredentialStatus
                          ) -> GraphAppCredentialStatus:
        """status.certificate and the CertificateRenewal condition, from what the rotator knows; neither without
        certificate.rotation. A renewal that starts failing posts a Warning Event; a switch to a renewed
        certificate a Normal one."""
        rotation = mem.report.rotation
        view = self.rotator.view((rotation[0], rotation[1])) if rotation is not None else None
        others = [c for c in status.conditions if c.type != RENEWAL_CONDITION]
        if rotation is None:
            return status.model_copy(update={"certificate": None, "conditions": others})
        if view is None:  # the rotator has not read the Secret yet: what the status says stands
            return status
        # compared with what was last written (the object's status after a restart)
        last = mem.report.last_status if mem.report.last_status is not None else snap.status or {}
        before = _condition_of(last, RENEWAL_CONDITION)
        condition = renewal_condition(before, view.outcome, snap.generation, self._clock())
        certificate = certificate_status(view.state, rotation[2], view.registered)
        shown = last.get("certificate") if isinstance(last.get("certificate"), dict) else None
        if (before is None or before.status == "True") and condition.status == "False":
            self.emit(snap.event_ref(), "Warning", "CertificateRenewalFailed", condition.message)
        if certificate is not None and shown is not None \
                and certificate.last_renewal_time not in (None, shown.get("lastRenewalTime")):
            self.emit(snap.event_ref(), "Normal", "CertificateRenewed",
                      f"switched to the renewed certificate {certificate.thumbprint} (valid until "
                      f"{certificate.not_after})")
        return status.model_copy(update={"certificate": certificate, "conditions": [*others, condition]})

    def _unread_credential_version(self, who: _Identity, mem: Memory, previous: GraphAppCredentialStatus,
                                   renew: bool) -> str | None:
        credential = who.identity.credential
        if credential.managed_identity is not None:
            return MANAGED_IDENTITY_VERSION  # nothing to read
        name = credential.secret_name
        seen = self.reader.seen(who.namespace, name) if name is not None else None
        version = unread_credential_version(
            previous, remembered=mem.credential.material is not None, renew=renew,
            reads_secret=name is not None and credential.workload_identity is None,
            seen_version=seen.version if seen is not None else None)
        if version is not None:
            mem.credential.version = version
        return version

    def _decide(self, snap: Snapshot, spec: GraphAppCredentialSpec, identity: AppIdentity, issued_for: str,
                settled: str, mem: Memory,
                previous: GraphAppCredentialStatus, existing: Target | None, fingerprint: str | None,
                credential_version: str, renew: bool, now: dt.datetime) -> Decision:
        secret_expiry = _secret_expiry(existing, previous)
        # In memory: the material's fingerprint; after a restart, the credential Secret's resourceVersion.
        changed = (mem.credential.material != fingerprint if mem.credential.material is not None
                   else previous.credential_version != credential_version)
        gathered = Gathered(
            now=now, status=previous, generation=snap.generation, issued_for=issued_for,
            renew=renew, credential_changed=changed,
            credential_kind=("ServiceAccount" if identity.credential.workload_identity is not None
                             else "credential Secret"),
            secret_present=existing is not None, secret_expiry=secret_expiry,
            refresh_before=spec.refresh_before() is not None)
        template_only = mem.token.settled_spec is not None and mem.token.settled_spec == settled
        return decide(gathered, template_only=template_only)

    async def _acquire(self, snap: Snapshot, spec: GraphAppCredentialSpec, who: _Identity, mem: Memory,
                       previous: GraphAppCredentialStatus, material: Material, issued_for: str, renew: bool
                       ) -> Token:
        current = current_issue(previous, issued_for, mem.token.issued_at)
        # A check for missing roles needs a token newer than the one in the Secret (consent shows only in new
        # tokens), a renew request one newer than the request: an identical credential's recent token newer than
        # that answers as well as a request of our own. So a namespace of many credentials lacking a role of a
        # shared app, or renewed together, causes one token request, not one each.
        newer_than = current
        if renew:
            since = mem.renew.since or self._clock()
            newer_than = max(current, since) if current is not None else since
        token, shared = await self.acquirer.acquire(snap.namespace, snap.name, who.identity, spec.scopes, material,
                                                    reuse=True, newer_than=newer_than)
        log.debug("%s/%s: token acquired from %s (expires %s)", snap.namespace, snap.name,
                  "the managed identity endpoint" if isinstance(material, ManagedIdentity)
                  else who.identity.authority_base(), rfc3339(token.expires_on))
        if shared and current is not None and token.issued_at <= current:  # the very token already written
            raise Failure(Reason.AUTHORITY_UNAVAILABLE, "no newer token than the one in the Secret; retrying",
                          retry=Retry.TRANSIENT)
        return token

    async def internal_error(self, snap: Snapshot, mem: Memory, exc: BaseException) -> float:
        """A pass failed unexpectedly: report it like any failure (status, Event, metric), retry with backoff."""
        message = str(exc) if isinstance(exc, KubeError) else describe_failure("reconcile", exc)
        self.metrics.internal_errors.labels(type(exc.__cause__ or exc).__name__).inc()
        try:
            delay = await self._failed(snap, mem, Failure(Reason.INTERNAL_ERROR, message, retry=Retry.TRANSIENT),
                                       _Asked())
        except Gone:
            raise
        except Exception as report_exc:  # noqa: BLE001 - the apiserver may be what is failing
            log.debug("%s/%s: could not report the failure (%s)", snap.namespace, snap.name,
                      type(report_exc).__name__)
            delay = None
        if delay is not None:
            return delay
        # not even reported (the apiserver is what fails): the schedule of a reported failure all the same, which
        # brings the next attempt before the last good token in the Secret expires
        now = self._clock()
        expires = parse_rfc3339(self._previous(snap, mem).expires_on)
        retry = policy.retry_delay(Retry.TRANSIENT, max(mem.report.failures, 1), None, now,
                                   expires if expires is not None and expires > now else None, self._rng)
        assert retry is not None  # a transient failure always has a next attempt
        return retry

    def _parse_spec(self, snap: Snapshot) -> GraphAppCredentialSpec:
        try:
            spec = GraphAppCredentialSpec.model_validate(snap.spec)
        except ValidationError as exc:
            raise Failure(Reason.INVALID_SPEC, spec_error_message(exc), retry=Retry.ON_CHANGE) from None
        problem = spec.secret_name_problem(snap.name)
        if problem is not None:  # the apiserver would refuse the Secret (422) after a token was requested for it
            raise Failure(Reason.INVALID_SPEC, problem, retry=Retry.ON_CHANGE)
        return spec

    async def _identity(self, snap: Snapshot, spec: GraphAppCredentialSpec, mem: Memory, secret_name: str
                        ) -> _Identity:
        """Whose token this pass requests: the spec's own identity, or its ClusterGraphApp's if the app's policy
        permits this credential. Refused (or the app gone), the token Secret is deleted: a bearer token the
        policy no longer allows must not stay readable."""
        own = spec.identity()
        if own is not None:
            self._check_own(spec, own)
            return _Identity(own, snap.namespace)
        try:
            resolved = await self.apps.resolve(snap.namespace, spec, self._reads)
        except Failure as refused:
            if refused.reason in (Reason.NOT_PERMITTED, Reason.APP_NOT_FOUND):
                raise await self._revoke(snap, mem, secret_name, refused) from None
            raise
        if resolved.spec.credential.workload_identity is not None and not self.workload_identity:
            raise Failure(Reason.WORKLOAD_IDENTITY_DISABLED, f"ClusterGraphApp {resolved.app.name} federates a "
                          "ServiceAccount, which needs workload identity enabled in the operator: install the chart "
                          "with workloadIdentity.enabled=true (graphcred run --workload-identity)",
                          retry=Retry.NEEDS_USER)
        if not self.authorities.allows(resolved.spec.authority_base()):
            raise Failure(Reason.AUTHORITY_NOT_ALLOWED, f"ClusterGraphApp {resolved.app.name}: "
                          f"{not_allowed_message(resolved.spec.authority_base())}", retry=Retry.NEEDS_USER)
        return _Identity(resolved.spec, resolved.namespace, resolved)

    def _for_tenant(self, app: str, failure: Failure) -> Failure:
        """A failure of a ClusterGraphApp's credential, as its users read it: that it is the app's, to be fixed by a
        cluster admin, without the names of the operator's namespace's objects (the admin reads those on the app's
        status)."""
        if failure.reason not in _APPS_OWN or isinstance(failure, Revoked):
            return failure
        return Failure(failure.reason, f"ClusterGraphApp {app} cannot get tokens ({failure.reason.value}); only a "
                       f"cluster admin can fix it: graphcred status cga/{app}", retry=failure.retry,
                       retry_after=failure.retry_after)

    async def _guard_held_token(self, snap: Snapshot, mem: Memory, spec: GraphAppCredentialSpec | None) -> None:
        """The Secret holds a ClusterGraphApp's token (status.issuedByApp) but the spec no longer names that app, or
        cannot be read (`spec` None): the app's policy still decides whether the token may stay. Checked before
        anything else the pass does, so that no change of the spec (made invalid, switched to another identity that
        fails) keeps a token the policy withdrew. Deleted, the pass goes on with the spec as it is."""
        previous = self._previous(snap, mem)
        held = previous.issued_by_app
        if held is None or previous.expires_on is None:
            return
        if spec is not None and spec.app_ref is not None and spec.app_ref.name == held:
            return  # the pass resolves the app itself, with the spec's scopes
        refusal = await self.apps.still_holds(snap.namespace, held, previous.audience, self._reads)
        if refusal is None:
            return
        failure = await self._revoke(snap, mem, previous.secret_name or "", Failure(
            Reason.NOT_PERMITTED, refusal, retry=Retry.NEEDS_USER))
        mem.report.last_status = reporting.without_token(previous).to_k8s()
        self.emit(snap.event_ref(), "Warning", Reason.NOT_PERMITTED.value, failure.message)

    async def _read_app(self, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self.calls("read ClusterGraphApp", self.kube.read_cluster_app, name)
        return result

    async def _read_namespace(self, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self.calls("read Namespace", self.kube.read_namespace, name)
        return result

    async def _still_permitted(self, snap: Snapshot, spec: GraphAppCredentialSpec, app: Resolved, mem: Memory,
                               secret_name: str) -> None:
        """Just before the token is written: the policy or the namespace may have changed while it was requested."""
        refusal = self.apps.permits(snap.namespace, spec, app)
        if refusal is not None:
            refused = Failure(Reason.NOT_PERMITTED, refusal, retry=Retry.NEEDS_USER)
            raise await self._revoke(snap, mem, secret_name, refused)

    async def _revoke(self, snap: Snapshot, mem: Memory, secret_name: str, refused: Failure) -> Revoked:
        previous = self._previous(snap, mem)
        for name in sorted(n for n in {secret_name, previous.secret_name} if n):
            if await self.writer.revoke(snap, mem.secret, name):
                log.warning("%s/%s: deleted the token Secret %s: %s", snap.namespace, snap.name, name,
                            refused.message)
        mem.credential.material = None
        mem.token.issued_at = mem.token.settled_spec = None
        # said on every pass, not only the one that deleted it: no token Secret is kept while this lasts
        return Revoked(refused.reason, f"{refused.message}; the token Secret was deleted" if previous.expires_on
                       else f"{refused.message}; no token Secret is kept meanwhile", retry=refused.retry)

    def _check_own(self, spec: GraphAppCredentialSpec, identity: AppIdentity) -> None:
        """The operator's own rules for a credential that names its identity itself."""
        if identity.credential.workload_identity is not None and not self.workload_identity:
            # Only the operator's configuration can change this (and a restart re-runs every object): no retries.
            raise Failure(Reason.WORKLOAD_IDENTITY_DISABLED, "spec.credential.workloadIdentity needs workload "
                          "identity enabled in the operator: install the chart with workloadIdentity.enabled=true "
                          "(graphcred run --workload-identity)", retry=Retry.ON_CHANGE)
        if not self.authorities.allows(identity.authority_base()):
            # A host of the spec author's choosing would make the operator send requests (and credentials: a
            # ServiceAccount token could be exchanged there for any app that trusts it) wherever they like, from
            # inside the cluster: only the clouds' login hosts, or those the cluster admin allowed, are contacted.
            raise Failure(Reason.AUTHORITY_NOT_ALLOWED, not_allowed_message(identity.authority_base()),
                          retry=Retry.ON_CHANGE)

    # --- reporting: decided by `reporting`, written here ------------------------------------------------------
    async def _kept(self, snap: Snapshot, mem: Memory, previous: GraphAppCredentialStatus, credential_version: str,
                    now: dt.datetime) -> float:
        refresh = parse_rfc3339(previous.refresh_at)
        expires = parse_rfc3339(previous.expires_on)
        assert refresh is not None and expires is not None
        mem.report.reported(expires.timestamp(), previous.consecutive_failures)
        # with certificate.rotation also when nothing else changed: the rotator's news is reported by the passes
        if previous.credential_version != credential_version or mem.report.rotation is not None:
            await self._report(snap, mem, reporting.kept(previous, credential_version))
        elif mem.report.last_status is None:
            log.info("resuming %s/%s: token valid, next refresh at %s", snap.namespace, snap.name, rfc3339(refresh))
            mem.report.last_status = previous.to_k8s()
        return max((refresh - now).total_seconds(), 0.0)

    async def _issued(self, snap: Snapshot, mem: Memory, spec: GraphAppCredentialSpec, secret_name: str,
                      token: Token, credential_version: str, renewed: bool, issued_for: str, settled: str,
                      cause: Cause | None) -> float:
        mem.token.settled_spec = settled
        previous = self._previous(snap, mem)
        verdict = policy.issued_verdict(token.claims.roles, spec.required_roles, secret_name, token.expires_on)
        now = self._clock()
        missing = mem.report.missing_roles_checks + 1 if verdict.reason == Reason.MISSING_ROLES else 0
        mem.report.missing_roles_checks = missing
        refresh = policy.next_refresh(token.issued_at, token.expires_on, spec.refresh_before(), now, self._rng,
                                      missing, hint=token.refresh_on)
        report = reporting.issued(
            previous, generation=snap.generation, secret_name=secret_name, issued_at=token.issued_at,
            expires_on=token.expires_on, claims=token.claims, refresh=refresh, credential_version=credential_version,
            issued_for=issued_for, renewed=renewed, renew_value=mem.renew.value, verdict=verdict, now=now,
            cause=cause, app=spec.app_ref.name if spec.app_ref is not None else None)
        await self._report(snap, mem, report)
        # Only now: a pass that fails after writing the Secret (its status patch, anything before) must count as
        # one more failure, so that its backoff grows, not restart from the first.
        mem.report.failures = 0
        log.debug("%s/%s: next refresh at %s", snap.namespace, snap.name, rfc3339(refresh))
        return max((refresh - now).total_seconds(), 0.0)

    async def _answered_again(self, snap: Snapshot, mem: Memory, previous: GraphAppCredentialStatus, token: Token,
                              fingerprint: str | None, settled: str, renewed: bool) -> float:
        """The managed identity's endpoint answered the very token the Secret holds (IMDS hands out its cached token
        until shortly before expiry): nothing is written; the next attempt follows the answer's refresh hint, else
        half the remaining lifetime."""
        now = self._clock()
        refresh = policy.next_attempt_same_token(token.expires_on, token.refresh_on, now, self._rng)
        mem.credential.material, mem.token.settled_spec = fingerprint, settled
        mem.report.failures = 0
        await self._report(snap, mem, reporting.answered_again(previous, refresh,
                                                               mem.renew.value if renewed else None))
        log.debug("%s/%s: the managed identity answered the token already in the Secret; asking again at %s",
                  snap.namespace, snap.name, rfc3339(refresh))
        return max((refresh - now).total_seconds(), 0.0)

    async def _rerendered(self, snap: Snapshot, mem: Memory, previous: GraphAppCredentialStatus, secret_name: str,
                          now: dt.datetime) -> float:
        """The Secret was rendered again with the same token for a new generation (only secretTemplate changed):
        the status describes the same token, now for this generation."""
        ready = previous.ready()
        refresh = parse_rfc3339(previous.refresh_at)
        assert ready is not None and refresh is not None  # decide: the token was Ready, refresh not due
        status = previous.model_copy(update={
            "conditions": reporting.ready_condition(previous, True, Reason.TOKEN_ISSUED, ready.message,
                                                    snap.generation, now),
            "observed_generation": snap.generation,
        })
        await self._report(snap, mem, reporting.Report(status, True, Reason.TOKEN_ISSUED, ready.message, None))
        log.info("%s/%s: Secret %s rendered again for generation %d (spec.secretTemplate changed); token kept",
                 snap.namespace, snap.name, secret_name, snap.generation)
        return max((refresh - now).total_seconds(), 0.0)

    async def _failed(self, snap: Snapshot, mem: Memory, outcome: Failure, asked: _Asked) -> float | None:
        mem.report.failures += 1
        self.metrics.failed(outcome.reason.value)
        previous = self._previous(snap, mem)
        if isinstance(outcome, Revoked):  # the Secret is gone: the status describes no token any more
            previous = reporting.without_token(previous)
        report, delay = reporting.failed(
            previous, generation=snap.generation, reason=outcome.reason, message=outcome.message,
            retry=outcome.retry, retry_after=outcome.retry_after, failures=mem.report.failures,
            issued_for=asked.issued_for, required_roles=asked.required_roles, now=self._clock(), rng=self._rng)
        await self._report(snap, mem, report)
        log.debug("%s/%s: %s (%s), attempt %d, next attempt %s", snap.namespace, snap.name, outcome.reason.value,
                  outcome.retry.value, mem.report.failures,
                  f"in {delay:.1f} s" if delay is not None else "after a change")
        return delay

    def _previous(self, snap: Snapshot, mem: Memory) -> GraphAppCredentialStatus:
        """The status this pass starts from: what this process last wrote (newer than a watch event may be), with
        the conditions of other types as the object last seen holds them: other tools add their own, and the merge
        patch that writes Ready replaces the whole list, so they must come from the object, not from our memory."""
        last = mem.report.last_status
        raw = dict(last if last is not None else snap.status or {})
        ours = [c for c in raw.get("conditions") or [] if isinstance(c, dict) and c.get("type") == "Ready"]
        theirs = [c for c in (snap.status or {}).get("conditions") or []
                  if isinstance(c, dict) and c.get("type") != "Ready"]
        raw["conditions"] = ours + theirs
        try:
            return GraphAppCredentialStatus.model_validate(raw)
        except ValidationError:
            return GraphAppCredentialStatus()

    async def _report(self, snap: Snapshot, mem: Memory, report: reporting.Report) -> None:
        """Write what a pass reports: metrics, the status if it changed, then its Event (if one is due) and log."""
        status = report.status
        if mem.credential.expiry_read:  # the credential was read: its expiry as it says now (none: not known)
            expires_on = rfc3339(mem.credential.expires) if mem.credential.expires is not None else None
            status = status.model_copy(update={"credential_expires_on": expires_on})
        status = self._with_certificate(snap, mem, status)
        body = status.to_k8s()
        expires = parse_rfc3339(status.expires_on)
        mem.report.reported(expires.timestamp() if expires else None, status.consecutive_failures)
        last = mem.report.last_status
        patch = reporting.status_patch(last if last is not None else snap.status, body)
        if patch is not None:
            await self.calls("patch GraphAppCredential status", self.kube.patch_status, snap.namespace, snap.name,
                             patch)
        mem.report.last_status = body
        if report.event is not None:
            event = report.event
            self.emit(snap.event_ref(), event.type, event.reason, event.message)
            log.log(logging.INFO if report.ready else logging.WARNING, "%s/%s: %s: %s", snap.namespace, snap.name,
                    event.reason, event.message)


def _condition_of(status: Mapping[str, Any], kind: str) -> Condition | None:
    for raw in status.get("conditions") or []:
        if isinstance(raw, dict) and raw.get("type") == kind:
            try:
                return Condition.model_validate(raw)
            except ValidationError:
                return None
    return None
