"""One pass over one GraphAppCredential: CR → spec → credential → token → Secret → status.

The reconciler holds no kopf: it is handed a plain snapshot of the object and a small per-object memory, does its
I/O through `Kube` and `TokenClient` (in threads), and returns how long to wait before the next pass (None: until
the object or its credential changes). What a pass reports (status, Ready condition, Event) is decided by the pure
functions of `reporting`; the reconciler only writes it, in order: metrics, status patch, Event.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from graphcred.acquire import credentials
from graphcred.acquire.authority import AllowedAuthorities, not_allowed_message, origin
from graphcred.acquire.breaker import TENANT_THROTTLING_CODES, Breaker
from graphcred.acquire.credentials import CredentialError, Federation, Material
from graphcred.acquire.jwt import unverified_claims
from graphcred.acquire.sharing import SharedTokens, share_key
from graphcred.acquire.tokens import AcquisitionError, Token, TokenClient
from graphcred.api.keys import API_VERSION, KIND
from graphcred.api.model import (
    CertificateRef,
    GraphAppCredentialSpec,
    GraphAppCredentialStatus,
    Reason,
    WorkloadIdentityRef,
)
from graphcred.api.template import TemplateError
from graphcred.base.backoff import backoff
from graphcred.base.times import parse_rfc3339, rfc3339
from graphcred.kube.calls import Conflict, Gone, Kube, describe_failure
from graphcred.kube.metawatch import Directory, Seen
from graphcred.kube.reads import SharedReads
from graphcred.reconcile import policy, reporting
from graphcred.reconcile.policy import Retry
from graphcred.reconcile.slots import RequestBudget, SlotGate, stepped_aside
from graphcred.telemetry.metrics import Metrics
from graphcred.tokensecret.render import (
    Owner,
    TemplateKeys,
    TokenFacts,
    adopted_references,
    is_ours,
    left_by_namesake,
    render,
    retyped,
    secret_type,
    stored_expiry,
    stored_token,
    template_keys,
    update_patch,
    written_template_keys,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class EventSink(Protocol):
    def __call__(self, obj: dict[str, Any], type: str, reason: str, message: str) -> None: ...  # noqa: A002


@dataclass
class Memory:
    """What the operator remembers about one object between passes (small: no secret data)."""

    failures: int = 0
    missing_roles_checks: int = 0
    last_status: dict[str, Any] | None = None
    # For the Secret watch: which Secrets this object depends on, and the credential version last read
    # ("" when the Secret was missing, None before the first read).
    credential_secret: str | None = None
    credential_version: str | None = None
    target_secret: str | None = None
    # resourceVersion of the token Secret as we last wrote it: a refresh patches it without reading it first
    written_version: str | None = None
    # ... and the type and the template keys (names only) written then: the patch removes keys no longer rendered
    written_type: str | None = None
    written_keys: TemplateKeys | None = None
    # labels and annotations of other tools to put on the token Secret when it is created again (after a change of
    # its type had to wait for other tools' finalizers)
    carried: dict[str, dict[str, str]] | None = None
    # digest of the spec without its secretTemplate, as last reported Ready (in memory only): a change of the
    # template alone renders the Secret again from the token in it
    settled_spec: str | None = None
    material: str | None = None  # fingerprint (a digest) of the credential material the token was acquired with
    issued_for: str | None = None  # this pass's spec digest (GraphAppCredentialSpec.issued_for)
    renew_requested: bool = False  # the renew annotation changed: acquire a new token, no reuse
    renew_value: str | None = None  # ... to this value (recorded in status once served)
    token_issued_at: dt.datetime | None = None  # of the token last written, to the microsecond
    required_roles: tuple[str, ...] | None = None  # this pass's spec.requiredRoles


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


@dataclass(frozen=True)
class Target:
    """The token Secret as far as writing it needs. `secret`: as read (metadata, type, data); None when this process
    wrote it last and skipped the read (a change by anyone since then surfaces as a Conflict on the next write)."""

    resource_version: str
    secret: dict[str, Any] | None


def _read_target(secret: dict[str, Any] | None) -> Target | None:
    return Target(str(secret["metadata"]["resourceVersion"]), secret) if secret is not None else None


def token_spec(spec: GraphAppCredentialSpec) -> str:
    """Digest of everything in the spec but secretTemplate: what the token and the Ready verdict depend on."""
    return hashlib.sha256(spec.model_dump_json(exclude={"secret_template"}).encode()).hexdigest()[:16]


class Outcome(Exception):
    """A pass ended early with a condition to report (a failure before or during acquisition)."""

    def __init__(self, reason: Reason, message: str, *, retry: Retry, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason, self.message, self.retry, self.retry_after = reason, message, retry, retry_after


def _retry(error: AcquisitionError | CredentialError) -> Retry:
    if isinstance(error, CredentialError):
        return Retry.NEEDS_USER
    return Retry.NEEDS_USER if error.permanent else Retry.TRANSIENT


def _consented(account: dict[str, Any], spec: GraphAppCredentialSpec, ref: WorkloadIdentityRef, namespace: str
               ) -> Federation:
    """The ServiceAccount as federation material if it consents to this spec's app (and tenant); else the pass ends
    with the reason and message saying how to fix it."""
    try:
        return credentials.federation(account, ref, spec.client_id, namespace, spec.tenant_id)
    except CredentialError as exc:
        raise Outcome(exc.reason, exc.message, retry=_retry(exc)) from None


def _upgraded(status: GraphAppCredentialStatus, spec: GraphAppCredentialSpec, secret_name: str,
              issued_for: str) -> GraphAppCredentialStatus:
    """A status written before `issuedFor` existed: its decoded claims tell whether the token matches the spec.
    Without this, upgrading the operator would re-acquire every token at once."""
    if status.issued_for is not None:
        return status
    resource = spec.scopes[0].removesuffix("/.default")
    if (status.app_id == spec.client_id and status.tenant_id == spec.tenant_id and status.audience == resource
            and status.secret_name == secret_name):
        return status.model_copy(update={"issued_for": issued_for})
    return status


def _not_ours(name: str) -> Outcome:
    return Outcome(Reason.SECRET_CONFLICT, f"Secret {name} exists and is not controlled by this GraphAppCredential; "
                   "graphcred never modifies it: delete it or choose another spec.secretName", retry=Retry.NEEDS_USER)


class _Held(AcquisitionError):
    """Not asked at all: the authority's circuit breaker is open."""


class KubeCallFailed(Exception):
    """A Kubernetes API call of a pass failed unexpectedly; the message names the call and the HTTP status.
    `outage`: the apiserver was unreachable or overloaded (no answer, 429, 5xx), which the operator rides out."""

    def __init__(self, message: str, *, outage: bool = False) -> None:
        super().__init__(message)
        self.outage = outage


def _outage(exc: BaseException) -> bool:
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status == 429 or status >= 500
    return isinstance(exc, OSError) or type(exc).__module__.startswith("urllib3")


def spec_error_message(exc: ValidationError) -> str:
    """A readable summary of what is wrong with the spec. Never echoes input values."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        parts.append(f"spec.{where}: {_without_pydantic_prefix(err['msg'])}")
    return "; ".join(parts)


def _without_pydantic_prefix(message: str) -> str:
    """pydantic prefixes what our validators raise with "Value error, " (or "Assertion failed, "): noise to a user
    reading the status (issue 23: no library's wording in a status message)."""
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


# The RBAC each ServiceAccount call of workload identity needs (granted by the chart's workloadIdentity.enabled).
_RBAC_VERBS = {"read ServiceAccount": "get serviceaccounts",
               "create ServiceAccount token": "create serviceaccounts/token"}


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        tokens: TokenClient,
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
    ) -> None:
        self.metrics = metrics or Metrics()
        # off: workloadIdentity credentials are refused without reading a ServiceAccount or requesting its token
        self.workload_identity = workload_identity
        # authority hosts besides the clouds' own that may be contacted at all (--authority-host)
        self.authorities = AllowedAuthorities(authority_hosts)
        self.shared = shared if shared is not None else SharedTokens()  # an empty one is falsy (__len__)
        self.kube = kube
        self.tokens = tokens
        self.emit = emit
        self._run_blocking = run_blocking or asyncio.to_thread
        # fair shares per namespace and per authority host (slot_share 0: a quarter of the slots); the clouds' hosts
        # and those the admin allowed (the only ones contacted at all) are no tenant's to slow down, and count per
        # namespace only
        self._token_slots = SlotGate(token_concurrency, slot_share, exempt=self.authorities.origins, budget=budget)
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter only
        self.breaker = Breaker(self._rng)
        # What the Secret watch knows (set by the wiring once the watches exist): reads it answers are skipped
        self.secrets: Directory | None = None
        self.credential_reads = SharedReads()
        # certificates parsed from credential Secrets, per Secret and resourceVersion (`_parsed_certificate`)
        self.certificates: credentials.VersionCache[asyncio.Future[credentials.Certificate]] = \
            credentials.VersionCache()

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        result: T = await self._run_blocking(fn, *args)
        return result

    async def _kube(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """A Kubernetes call of this pass. Expected answers are handled by `Kube`; anything else ends the pass as
        an internal error naming the call and its HTTP status."""
        try:
            return await self._blocking(fn, *args)
        except (Conflict, Gone):
            raise
        except Exception as exc:  # reported to the user by the caller, never swallowed
            raise KubeCallFailed(describe_failure(what, exc), outage=_outage(exc)) from exc

    async def reconcile(self, snap: Snapshot, mem: Memory) -> float | None:
        """One pass. Returns seconds until the next pass, or None to wait for a change."""
        async with contextlib.AsyncExitStack() as held:  # the credential Secret read, shared while the pass runs
            return await self._pass(snap, mem, held)

    async def _pass(self, snap: Snapshot, mem: Memory, held: contextlib.AsyncExitStack) -> float | None:
        now = self._clock()
        renew, mem.renew_requested = mem.renew_requested, False
        mem.issued_for, mem.required_roles = None, None
        try:
            spec = self._parse_spec(snap)
            secret_name = spec.effective_secret_name(snap.name)
            mem.issued_for = spec.issued_for(snap.name)
            mem.required_roles = tuple(spec.required_roles)
            mem.credential_secret = spec.credential.secret_name
            if mem.target_secret != secret_name:
                mem.target_secret, mem.written_version, mem.carried = secret_name, None, None
            previous = _upgraded(self._previous(snap, mem), spec, secret_name, mem.issued_for)
            material: Material | None = None
            credential_version = self._resumable(snap, spec, mem, previous, renew)
            if credential_version is None:
                material, credential_version = await self._material(snap, spec, mem, now, held)
            read = material.fingerprint() if material is not None else None
            existing = await self._target(snap, mem, secret_name)
            if self._keep(snap.generation, mem, previous, existing, read, credential_version, renew, now):
                mem.material, mem.settled_spec = read, token_spec(spec)
                return await self._kept(snap, mem, previous, credential_version, now)
            if material is None:  # resumable after all it was not: the token is needed, and so is the credential
                material, credential_version = await self._material(snap, spec, mem, now, held)
            fingerprint = material.fingerprint()
            stored = await self._template_only(snap, mem, spec, secret_name, previous, existing, fingerprint,
                                               credential_version, renew, now)
            if stored is not None:
                token, target = stored
                mem.written_version = await self._write_secret(snap, mem, spec, secret_name, target, token)
                mem.material = fingerprint
                return await self._rerendered(snap, mem, previous, secret_name, now)
            current = self._current_issue(mem, previous)
            # while roles are missing, each check needs a new token: consent shows only in new tokens
            token, shared = await self._acquire(snap.namespace, snap.name, spec, material,
                                                reuse=mem.missing_roles_checks == 0 and not renew, newer_than=current)
            del material  # the credential is not kept between passes, nor the read it came from
            await held.aclose()
            log.debug("%s/%s: token acquired from %s (expires %s)", snap.namespace, snap.name,
                      spec.authority_base(), rfc3339(token.expires_on))
            if shared and current is not None and token.issued_at <= current:  # the very token already written
                raise Outcome(Reason.AUTHORITY_UNAVAILABLE, "no newer token than the one in the Secret; retrying",
                              retry=Retry.TRANSIENT)
            mem.written_version = await self._write_secret(snap, mem, spec, secret_name, existing, token)
            mem.material, mem.token_issued_at = fingerprint, token.issued_at
            log.debug("%s/%s: Secret %s %s", snap.namespace, snap.name, secret_name,
                      "created" if existing is None else "updated")
            await self._remove_old_secret(snap, previous.secret_name, secret_name)
        except Outcome as outcome:
            return await self._failed(snap, mem, outcome)
        return await self._issued(snap, mem, spec, secret_name, token, credential_version, renew)

    async def internal_error(self, snap: Snapshot, mem: Memory, exc: BaseException) -> float:
        """A pass failed unexpectedly: report it like any failure (status, Event, metric), retry with backoff."""
        message = str(exc) if isinstance(exc, KubeCallFailed) else describe_failure("reconcile", exc)
        self.metrics.internal_errors.labels(type(exc.__cause__ or exc).__name__).inc()
        try:
            delay = await self._failed(snap, mem, Outcome(Reason.INTERNAL_ERROR, message, retry=Retry.TRANSIENT))
        except Gone:
            raise
        except Exception as report_exc:  # noqa: BLE001 - the apiserver may be what is failing
            log.debug("%s/%s: could not report the failure (%s)", snap.namespace, snap.name,
                      type(report_exc).__name__)
            delay = None
        return delay if delay is not None else backoff(mem.failures, None, self._rng)

    # --- steps ------------------------------------------------------------------------------------------------
    def _parse_spec(self, snap: Snapshot) -> GraphAppCredentialSpec:
        try:
            spec = GraphAppCredentialSpec.model_validate(snap.spec)
        except ValidationError as exc:
            raise Outcome(Reason.INVALID_SPEC, spec_error_message(exc), retry=Retry.ON_CHANGE) from None
        problem = spec.secret_name_problem(snap.name)
        if problem is not None:  # the apiserver would refuse the Secret (422) after a token was requested for it
            raise Outcome(Reason.INVALID_SPEC, problem, retry=Retry.ON_CHANGE)
        if spec.credential.workload_identity is not None and not self.workload_identity:
            # Only the operator's configuration can change this (and a restart re-runs every object): no retries.
            raise Outcome(Reason.WORKLOAD_IDENTITY_DISABLED, "spec.credential.workloadIdentity needs workload "
                          "identity enabled in the operator: install the chart with workloadIdentity.enabled=true "
                          "(graphcred run --workload-identity)", retry=Retry.ON_CHANGE)
        if not self.authorities.allows(spec.authority_base()):
            # A host of the spec author's choosing would make the operator send requests (and credentials: a
            # ServiceAccount token could be exchanged there for any app that trusts it) wherever they like, from
            # inside the cluster: only the clouds' login hosts, or those the cluster admin allowed, are contacted.
            raise Outcome(Reason.AUTHORITY_NOT_ALLOWED, not_allowed_message(spec.authority_base()),
                          retry=Retry.ON_CHANGE)
        return spec

    async def _material(self, snap: Snapshot, spec: GraphAppCredentialSpec, mem: Memory, now: dt.datetime,
                        held: contextlib.AsyncExitStack) -> tuple[Material, str]:
        if spec.credential.workload_identity is not None:
            return await self._federation(snap, spec, spec.credential.workload_identity, mem)
        name = spec.credential.secret_name
        assert name is not None  # a Secret for every other kind of credential
        secret = await held.enter_async_context(self.credential_reads.read(
            (snap.namespace, name), lambda: self._kube("read Secret", self.kube.read_secret, snap.namespace, name),
            self._seen(snap.namespace, name)))
        if secret is None:
            mem.credential_version = ""
            raise Outcome(Reason.CREDENTIAL_NOT_FOUND,
                          f"Secret {name} not found in namespace {snap.namespace}", retry=Retry.NEEDS_USER)
        version = secret.version
        mem.credential_version = version
        try:
            if spec.credential.client_secret is not None:
                return credentials.client_secret(secret.data, spec.credential.client_secret), version
            ref = spec.credential.certificate
            assert ref is not None
            parsed = await self._parsed_certificate((snap.namespace, name), version, secret.data, ref)
            return credentials.usable(parsed, ref, now), version
        except CredentialError as exc:
            if exc.usable_from is not None:
                wait = (exc.usable_from - now).total_seconds() + 1.0
                raise Outcome(exc.reason, exc.message, retry=Retry.TRANSIENT, retry_after=wait) from None
            raise Outcome(exc.reason, exc.message, retry=_retry(exc)) from None

    async def _parsed_certificate(self, key: tuple[str, str], version: str, data: dict[str, Any],
                                  ref: CertificateRef) -> credentials.Certificate:
        """The Secret's certificate and key, parsed in the executor (validating a key costs CPU the event loop
        must not spend) once per version of the Secret, however many credentials use it at once or later."""
        parse = self.certificates.get(key, version)
        if parse is None:
            parse = asyncio.ensure_future(self._blocking(credentials.parse_certificate, data, ref))
            parse.add_done_callback(lambda t: t.cancelled() or t.exception())  # no "never retrieved" warning
            self.certificates.put(key, version, parse)
        try:
            return await asyncio.shield(parse)
        except CredentialError:
            raise  # a verdict on this version's data: kept, like a parse that worked
        except BaseException:
            self.certificates.drop(key, version, parse)  # not a verdict (cancelled, executor gone): parse again
            raise

    async def _federation(self, snap: Snapshot, spec: GraphAppCredentialSpec, ref: WorkloadIdentityRef,
                          mem: Memory) -> tuple[Federation, str]:
        """The ServiceAccount to federate, if it allows this app; its resourceVersion is the credential version.
        Its token is not requested here: only an acquisition needs one (`_with_assertion`)."""
        name = ref.service_account_name
        account = await self._service_account_call("read ServiceAccount", snap.namespace, name,
                                                   self.kube.read_service_account, snap.namespace, name)
        if account is None:
            mem.credential_version = ""
            raise Outcome(Reason.CREDENTIAL_NOT_FOUND, f"ServiceAccount {name} not found in namespace {snap.namespace}",
                          retry=Retry.NEEDS_USER)
        version = str(account["metadata"].get("resourceVersion", ""))
        mem.credential_version = version
        return _consented(account, spec, ref, snap.namespace), version

    async def _with_assertion(self, spec: GraphAppCredentialSpec, material: Material) -> Material:
        """For federation, a copy of the material carrying a ServiceAccount token made for this acquisition alone;
        the caller drops it with the acquisition. Other material as it is.
        The consent is checked again first: the pass read it before waiting for the breaker and for sharing, and
        a ServiceAccount whose annotation was removed, or that was re-created under the same name, in between
        must not have a token minted."""
        if not isinstance(material, Federation):
            return material
        ref = spec.credential.workload_identity
        assert ref is not None
        account = await self._service_account_call(
            "read ServiceAccount", material.namespace, material.service_account,
            self.kube.read_service_account, material.namespace, material.service_account)
        if account is None or str(account["metadata"].get("uid", "")) != material.uid:
            raise Outcome(Reason.CREDENTIAL_NOT_FOUND, f"ServiceAccount {material.service_account} not found in "
                          f"namespace {material.namespace} (deleted or re-created since the pass began)",
                          retry=Retry.NEEDS_USER)
        _consented(account, spec, ref, material.namespace)
        token = await self._service_account_call(
            "create ServiceAccount token", material.namespace, material.service_account,
            self.kube.request_service_account_token, material.namespace, material.service_account, material.audience)
        return material.with_assertion(token)

    async def _service_account_call(self, what: str, namespace: str, name: str, fn: Callable[..., T], *args: Any
                                    ) -> T:
        """A ServiceAccount call: 404 means the ServiceAccount is gone; 403 that the operator was not given the
        workload identity RBAC (the chart's workloadIdentity.enabled). Both need the user; the rest as `_kube`."""
        try:
            return await self._kube(what, fn, *args)
        except KubeCallFailed as exc:
            status = getattr(exc.__cause__, "status", None)
            if status == 404:
                raise Outcome(Reason.CREDENTIAL_NOT_FOUND, f"ServiceAccount {name} not found in namespace {namespace}",
                              retry=Retry.NEEDS_USER) from None
            if status == 403:
                raise Outcome(Reason.WORKLOAD_IDENTITY_DISABLED,
                              f"{what} was refused (HTTP 403): the operator may not {_RBAC_VERBS[what]} in namespace "
                              f"{namespace}; install the chart with workloadIdentity.enabled=true (and this namespace "
                              "among watchNamespaces, if set)", retry=Retry.NEEDS_USER) from None
            raise

    def _current_issue(self, mem: Memory, previous: GraphAppCredentialStatus) -> dt.datetime | None:
        """When the token in the Secret was issued, if it is for this spec: a refresh must get a newer one. Memory
        has it to the microsecond; the status only to the second, so it is rounded up."""
        if previous.issued_for != mem.issued_for:
            return None
        if mem.token_issued_at is not None:
            return mem.token_issued_at
        issued = parse_rfc3339(previous.last_refresh_time)
        return issued + dt.timedelta(seconds=1) if issued is not None else None

    def _resumable(self, snap: Snapshot, spec: GraphAppCredentialSpec, mem: Memory,
                   previous: GraphAppCredentialStatus, renew: bool) -> str | None:
        """The credential Secret's version if the token may be kept without reading that Secret: nothing read in
        this process yet (after a restart, on a new leader), and the Secret watch has it at the version the status
        says the token was acquired with. `_keep` decides the rest. None: read it.
        At 10,000 credentials a restart then reads only the token Secrets (bench/restart.py); the credential is read
        at the first refresh, or at once if it changes (the watch wakes the worker)."""
        name = spec.credential.secret_name
        if mem.material is not None or renew or name is None or spec.credential.workload_identity is not None:
            return None
        seen = self._seen(snap.namespace, name)
        recorded = previous.credential_version
        if seen is None or seen.version is None or not recorded or seen.version != recorded:
            return None
        mem.credential_version = seen.version
        return seen.version

    def _keep(self, generation: int, mem: Memory, previous: GraphAppCredentialStatus, existing: Target | None,
              fingerprint: str | None, credential_version: str, renew: bool, now: dt.datetime) -> bool:
        """Nothing the token depends on changed and its refresh is not due: keep it (after a restart, a
        metadata-only change of the credential Secret, a wake-up that changed nothing)."""
        if existing is None:
            return False
        if existing.secret is None:
            secret_expiry = parse_rfc3339(previous.expires_on)  # our own write, unchanged since
        else:
            secret_expiry = stored_expiry(existing.secret["metadata"])
        # In memory: the material's fingerprint; after a restart, the credential Secret's resourceVersion.
        unchanged = (mem.material == fingerprint if mem.material is not None
                     else previous.credential_version == credential_version)
        assert mem.issued_for is not None
        return policy.may_keep(now, previous, generation=generation, issued_for=mem.issued_for,
                               secret_expiry=secret_expiry, material_unchanged=unchanged, renew=renew)

    async def _kept(self, snap: Snapshot, mem: Memory, previous: GraphAppCredentialStatus, credential_version: str,
                    now: dt.datetime) -> float:
        refresh = parse_rfc3339(previous.refresh_at)
        expires = parse_rfc3339(previous.expires_on)
        assert refresh is not None and expires is not None
        self.metrics.report(snap.namespace, snap.name, expires.timestamp(), previous.consecutive_failures)
        if previous.credential_version != credential_version:
            await self._report(snap, mem, reporting.kept(previous, credential_version))
        elif mem.last_status is None:
            log.info("resuming %s/%s: token valid, next refresh at %s", snap.namespace, snap.name, rfc3339(refresh))
            mem.last_status = previous.to_k8s()
        return max((refresh - now).total_seconds(), 0.0)

    def _seen(self, namespace: str, name: str) -> Seen | None:
        return self.secrets.lookup(namespace, name) if self.secrets is not None else None

    async def _target(self, snap: Snapshot, mem: Memory, name: str) -> Target | None:
        """The token Secret as far as writing it needs: None if absent.
        After our own write its resourceVersion is known and the read is skipped: a change by anyone else since
        then surfaces as a conflict on the patch. A Secret the watch has never seen is not read either (a new
        credential's): it is created, and if it exists after all, AlreadyExists has it read then (`_write_secret`)."""
        if mem.written_version is not None:
            return Target(mem.written_version, None)
        seen = self._seen(snap.namespace, name)
        if seen is not None and seen.version is None:
            return None
        existing = await self._kube("read Secret", self.kube.read_secret, snap.namespace, name)
        if existing is not None and not is_ours(existing["metadata"], snap.owner):
            raise _not_ours(name)
        return _read_target(existing)

    async def _template_only(self, snap: Snapshot, mem: Memory, spec: GraphAppCredentialSpec, name: str,
                             previous: GraphAppCredentialStatus, existing: Target | None, fingerprint: str,
                             credential_version: str, renew: bool, now: dt.datetime) -> tuple[Token, Target] | None:
        """Only spec.secretTemplate changed since the token in the Secret was reported Ready: that token, read back
        from the Secret, to render the Secret again. A template is presentation: the token it shows is still the one
        the spec asks for, so none is requested (a template fix applies even while Entra is unreachable). None:
        acquire as usual (anything else changed, the token is due, or this process did not see it Ready)."""
        if (existing is None or previous.observed_generation is None or previous.observed_generation == snap.generation
                or mem.settled_spec is None or mem.settled_spec != token_spec(spec)
                or not self._keep(previous.observed_generation, mem, previous, existing, fingerprint,
                                  credential_version, renew, now)):
            return None
        secret = await self._kube("read Secret", self.kube.read_secret, snap.namespace, name)
        expires, issued = parse_rfc3339(previous.expires_on), parse_rfc3339(previous.last_refresh_time)
        access_token = stored_token(secret) if secret is not None else None
        if (secret is None or access_token is None or not is_ours(secret["metadata"], snap.owner)
                or expires is None or issued is None or stored_expiry(secret["metadata"]) != expires):
            return None
        try:
            claims = unverified_claims(access_token)
        except ValueError:
            return None
        token = Token(access_token, expires, mem.token_issued_at or issued, claims)
        return token, Target(str(secret["metadata"]["resourceVersion"]), secret)

    async def _acquire(self, namespace: str, name: str, spec: GraphAppCredentialSpec, material: Material, *,
                       reuse: bool,
                       newer_than: dt.datetime | None) -> tuple[Token, bool]:
        """A token, and whether it came from an identical credential's request (True) or this one's. While it
        waits (for a slot, for the authority), the pass is not counted among the controller's passes in progress."""
        try:
            async with stepped_aside():
                token, shared = await self.shared.get(share_key(spec, material),
                                                      lambda: self._acquire_now(namespace, name, spec, material),
                                                      reuse=reuse, newer_than=newer_than)
        except AcquisitionError as exc:
            raise Outcome(exc.reason, exc.message, retry=_retry(exc), retry_after=exc.retry_after) from None
        if shared:
            self.metrics.acquisitions.labels("shared", "TokenIssued").inc()
        return token, shared

    async def _acquire_now(self, namespace: str, name: str, spec: GraphAppCredentialSpec, material: Material
                           ) -> Token:
        tenant = spec.authority()
        keys = (tenant, f"{tenant} app {spec.client_id}")
        request = object()  # this request, to the breakers: it frees only the probe marks it set
        self._check_breaker(keys, request)
        try:
            # A ServiceAccount token, if federating: only once a request is to be made, and before taking a token
            # slot, so that an apiserver slow to answer TokenRequests holds no slot other credentials need.
            presented = await self._with_assertion(spec, material)
            try:
                async with self._token_slots.slot(namespace, origin(spec.authority_base()) or spec.authority_base(),
                                                  who=name):
                    # again: a breaker may have opened while this request waited for a slot
                    self._check_breaker(keys, request, admitted=True)
                    started = time.monotonic()
                    try:
                        token = await self._blocking(self.tokens.acquire, spec, presented)
                    finally:
                        self.metrics.latency.observe(time.monotonic() - started)
            finally:
                del presented  # the ServiceAccount token is not kept beyond its one request
        except _Held:
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
            raise _Held(hold.reason, hold.message, permanent=False, retry_after=hold.seconds)

    async def _write_secret(self, snap: Snapshot, mem: Memory, spec: GraphAppCredentialSpec, name: str,
                            existing: Target | None, token: Token) -> str:
        """Create the token Secret, or patch graphcred's keys into it (others' labels, annotations, finalizers and
        keys stay); returns its new resourceVersion."""
        body = self._body(snap, spec, name, token)
        try:
            return await self._put_ours(snap, mem, name, existing, body)
        except KubeCallFailed as exc:
            if getattr(exc.__cause__, "status", None) != 422:
                raise
            # The apiserver refuses this Secret as it is (an invalid name, key or label): writing it again cannot
            # succeed, and every retry would have requested a token first. Only a change of the spec can help.
            raise Outcome(Reason.INVALID_SPEC, f"{exc}: the apiserver refused the token Secret {name} as invalid; "
                          "check spec.secretName and spec.secretTemplate", retry=Retry.ON_CHANGE) from None

    async def _put_ours(self, snap: Snapshot, mem: Memory, name: str, existing: Target | None,
                        body: dict[str, Any]) -> str:
        try:
            return await self._put(snap, mem, name, existing, body)
        except Conflict:
            # Someone wrote the Secret since we read or wrote it, or it exists though we saw none (AlreadyExists):
            # only write if it is ours.
            current = await self._kube("read Secret", self.kube.read_secret, snap.namespace, name)
            if current is not None and not is_ours(current["metadata"], snap.owner):
                if existing is None:
                    raise _not_ours(name) from None
                raise Outcome(Reason.SECRET_CONFLICT,
                              f"Secret {name} was created by someone else; graphcred never modifies it",
                              retry=Retry.NEEDS_USER) from None
            return await self._put(snap, mem, name, _read_target(current), body)

    @staticmethod
    def _body(snap: Snapshot, spec: GraphAppCredentialSpec, name: str, token: Token) -> dict[str, Any]:
        facts = TokenFacts(token.access_token, token.expires_on,
                           tenant_id=token.claims.tenant_id or spec.tenant_id,
                           client_id=token.claims.app_id or spec.client_id,
                           audience=token.claims.audience or spec.scopes[0].removesuffix("/.default"))
        try:
            return render(name, snap.owner, token.access_token, token.expires_on, template=spec.secret_template,
                          facts=facts)
        except TemplateError as exc:  # its message names the key and the problem, never a value
            raise Outcome(Reason.INVALID_SPEC, str(exc), retry=Retry.ON_CHANGE) from None

    async def _put(self, snap: Snapshot, mem: Memory, name: str, existing: Target | None, body: dict[str, Any]
                   ) -> str:
        if existing is None:
            if mem.carried:
                body = retyped(body, {"metadata": mem.carried}, TemplateKeys())
            version = await self._kube("create Secret", self.kube.create_secret, snap.namespace, body)
            mem.carried = None
        else:
            secret = existing.secret
            if secret is None and mem.written_type != body["type"]:
                # our own write, but of another type: read it to replace it
                secret = await self._kube("read Secret", self.kube.read_secret, snap.namespace, name)
                if secret is None or not is_ours(secret["metadata"], snap.owner):
                    raise Conflict(name)
            if secret is not None and secret_type(secret) != body["type"]:
                version = await self._retype(snap, mem, name, secret, body)
            else:
                meta = secret["metadata"] if secret is not None else None
                before = written_template_keys(meta) if meta is not None else mem.written_keys or TemplateKeys()
                # a deleted namesake's Secret: its controller reference is replaced by ours
                adopted = (adopted_references(meta, snap.owner) if meta is not None
                           and left_by_namesake(meta, snap.owner) else None)
                patch = update_patch(body, existing.resource_version, before, owner_references=adopted)
                version = await self._kube("patch Secret", self.kube.patch_secret, snap.namespace, name, patch)
        mem.written_type, mem.written_keys = body["type"], template_keys(body)
        return version

    async def _retype(self, snap: Snapshot, mem: Memory, name: str, secret: dict[str, Any], body: dict[str, Any]
                      ) -> str:
        """The type of a Secret cannot change: delete it (only if unchanged since it was read) and create it with
        the new type, carrying over the labels and annotations of other tools."""
        meta = secret["metadata"]
        change = f"to change its type from {secret_type(secret)} to {body['type']}"
        replacement = retyped(body, secret, written_template_keys(meta))
        mem.written_version = None  # whatever happens next, the Secret must be read again
        if not meta.get("deletionTimestamp"):
            await self._kube("delete Secret", self.kube.delete_secret_unchanged, snap.namespace, name,
                             str(meta.get("uid", "")), str(meta["resourceVersion"]))
            log.info("%s/%s: deleted Secret %s %s (a Secret's type is immutable)", snap.namespace, snap.name, name,
                     change)
            try:
                return await self._kube("create Secret", self.kube.create_secret, snap.namespace, replacement)
            except Conflict:
                pass  # still there: finalizers hold it
        # The Secret watch wakes this object once the Secret is gone; its last token stays valid until then.
        mem.carried = {part: {k: v for k, v in replacement["metadata"][part].items() if k not in body["metadata"][part]}
                       for part in ("labels", "annotations")}
        finalizers = ", ".join(str(f) for f in meta.get("finalizers") or []) or "its deletion to finish"
        raise Outcome(Reason.SECRET_CONFLICT,
                      f"Secret {name} is being deleted {change} and waits for {finalizers}; graphcred creates it "
                      "again once it is gone", retry=Retry.NEEDS_USER)

    async def _remove_old_secret(self, snap: Snapshot, old: str | None, new: str) -> None:
        """After spec.secretName changed: the old token Secret would stay valid and never be refreshed. Delete it
        if (and only if) this object controls it."""
        if not old or old == new:
            return
        existing = await self._kube("read Secret", self.kube.read_secret, snap.namespace, old)
        if existing is not None and is_ours(existing["metadata"], snap.owner):
            await self._kube("delete Secret", self.kube.delete_secret, snap.namespace, old,
                             existing["metadata"].get("uid"))
            log.info("%s/%s: deleted the previous token Secret %s (spec.secretName changed)", snap.namespace,
                     snap.name, old)

    # --- reporting: decided by `reporting`, written here ------------------------------------------------------
    async def _issued(self, snap: Snapshot, mem: Memory, spec: GraphAppCredentialSpec, secret_name: str,
                      token: Token, credential_version: str, renewed: bool) -> float:
        mem.settled_spec = token_spec(spec)
        previous = self._previous(snap, mem)
        verdict = policy.issued_verdict(token.claims.roles, spec.required_roles, secret_name, token.expires_on)
        now = self._clock()
        refresh = policy.refresh_at(token.issued_at, token.expires_on, spec.refresh_before(), self._rng)
        # a floor measured from now, too: a pass that ran late must not schedule the next one in the past
        refresh = max(refresh, now + policy.MIN_REFRESH_DELAY)
        if verdict.reason == Reason.MISSING_ROLES:
            mem.missing_roles_checks += 1
            refresh = min(refresh, now + dt.timedelta(
                seconds=policy.missing_roles_retry(mem.missing_roles_checks, self._rng)))
        else:
            mem.missing_roles_checks = 0
        report = reporting.issued(
            previous, generation=snap.generation, secret_name=secret_name, issued_at=token.issued_at,
            expires_on=token.expires_on, claims=token.claims, refresh=refresh, credential_version=credential_version,
            issued_for=mem.issued_for, renewed=renewed, renew_value=mem.renew_value, verdict=verdict, now=now)
        await self._report(snap, mem, report)
        # Only now: a pass that fails after writing the Secret (its status patch, anything before) must count as
        # one more failure, so that its backoff grows, not restart from the first.
        mem.failures = 0
        log.debug("%s/%s: next refresh at %s", snap.namespace, snap.name, rfc3339(refresh))
        return max((refresh - now).total_seconds(), 0.0)

    async def _rerendered(self, snap: Snapshot, mem: Memory, previous: GraphAppCredentialStatus, secret_name: str,
                          now: dt.datetime) -> float:
        """The Secret was rendered again with the same token for a new generation (only secretTemplate changed):
        the status describes the same token, now for this generation."""
        ready = previous.ready()
        refresh = parse_rfc3339(previous.refresh_at)
        assert ready is not None and refresh is not None  # _template_only: the token was Ready, refresh not due
        status = previous.model_copy(update={
            "conditions": reporting.ready_condition(previous, True, Reason.TOKEN_ISSUED, ready.message,
                                                    snap.generation, now),
            "observed_generation": snap.generation,
        })
        await self._report(snap, mem, reporting.Report(status, True, Reason.TOKEN_ISSUED, ready.message, None))
        log.info("%s/%s: Secret %s rendered again for generation %d (spec.secretTemplate changed); token kept",
                 snap.namespace, snap.name, secret_name, snap.generation)
        return max((refresh - now).total_seconds(), 0.0)

    async def _failed(self, snap: Snapshot, mem: Memory, outcome: Outcome) -> float | None:
        mem.failures += 1
        self.metrics.failed(outcome.reason.value)
        report, delay = reporting.failed(
            self._previous(snap, mem), generation=snap.generation, reason=outcome.reason, message=outcome.message,
            retry=outcome.retry, retry_after=outcome.retry_after, failures=mem.failures, issued_for=mem.issued_for,
            required_roles=mem.required_roles, now=self._clock(), rng=self._rng)
        await self._report(snap, mem, report)
        log.debug("%s/%s: %s (%s), attempt %d, next attempt %s", snap.namespace, snap.name, outcome.reason.value,
                  outcome.retry.value, mem.failures, f"in {delay:.1f} s" if delay is not None else "after a change")
        return delay

    def _previous(self, snap: Snapshot, mem: Memory) -> GraphAppCredentialStatus:
        """The status this pass starts from: what this process last wrote (newer than a watch event may be), with
        the conditions of other types as the object last seen holds them: other tools add their own, and the merge
        patch that writes Ready replaces the whole list, so they must come from the object, not from our memory."""
        raw = dict(mem.last_status if mem.last_status is not None else snap.status or {})
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
        body = status.to_k8s()
        expires = parse_rfc3339(status.expires_on)
        self.metrics.report(snap.namespace, snap.name, expires.timestamp() if expires else None,
                            status.consecutive_failures)
        patch = reporting.status_patch(mem.last_status if mem.last_status is not None else snap.status, body)
        if patch is not None:
            await self._kube("patch GraphAppCredential status", self.kube.patch_status, snap.namespace, snap.name,
                             patch)
        mem.last_status = body
        if report.event is not None:
            event = report.event
            self.emit(snap.event_ref(), event.type, event.reason, event.message)
            log.log(logging.INFO if report.ready else logging.WARNING, "%s/%s: %s: %s", snap.namespace, snap.name,
                    event.reason, event.message)
