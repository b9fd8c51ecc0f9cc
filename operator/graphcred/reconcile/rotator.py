"""Certificate rotation, the I/O: one task per certificate Secret whose credential has certificate.rotation.

The passes tell the rotator which Secrets to look after (`track`) and ask it what to report (`view`); the rotator
reads the Secret, asks `rotation.plan` for the next step, carries it out (Kubernetes writes with the Secret's
resourceVersion, Graph calls, token requests to prove a key) and records it in the Secret before the next one.
Anything it learns is handed back through `on_change` (the credentials using the Secret run a pass and report it).

Bounds: one task per Secret, however many credentials share it; every blocking call in the operator's threads with
their timeouts; key pairs generated one at a time; a failing step is retried with backoff (5 s doubling to 10 min),
never in a loop. Only the leader runs passes, so only the leader rotates; a new leader resumes from the Secret.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from graphcred.acquire import credentials, keygen
from graphcred.acquire.credentials import TLS_CERT_KEY, TLS_KEY_KEY
from graphcred.acquire.graphkeys import GRAPH_BY_CLOUD, GraphKeys, KeyCallFailed, graph_scope, sign_proof
from graphcred.acquire.tokens import AcquisitionError, Token
from graphcred.api.failures import Failure
from graphcred.api.keys import (
    ADDING_ANNOTATION,
    GENERATED_BY_ANNOTATION,
    KEY_ID_ANNOTATION,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NEXT_CERT_KEY,
    NEXT_KEY_ID_ANNOTATION,
    NEXT_KEY_KEY,
    PREVIOUS_KEY_ID_ANNOTATION,
    PREVIOUS_THUMBPRINT_ANNOTATION,
    RENEWED_AT_ANNOTATION,
    ROTATION_ENABLED,
    ROTATION_LABEL,
    UNKNOWN_KEY_ID,
)
from graphcred.api.model import AppIdentity, CertificateRef, CertificateRotation
from graphcred.base.times import parse_rfc3339, rfc3339
from graphcred.kube.errors import Conflict, KubeError
from graphcred.reconcile.calls import KubeCalls
from graphcred.reconcile.rotation import KeyState, Outcome, Step, plan, renew_at, scheduled

log = logging.getLogger(__name__)

Key = tuple[str, str]  # namespace, certificate Secret
Owner = tuple[str, str]  # namespace, GraphAppCredential
CERT_MANAGER_ANNOTATION = "cert-manager.io/certificate-name"
ENTRA_KEY_REFUSED = 700027  # AADSTS: the certificate is not (yet) a key of the app
FIRST_RETRY, LAST_RETRY = 5.0, 600.0
CONFLICTS_BEFORE_BACKOFF = 3
REMOVE_GRACE = dt.timedelta(minutes=5)
WAIT_LIMIT = dt.timedelta(minutes=15)  # waiting for Entra to accept a new key longer than this is a failure
PROOF_SKEW = 60  # seconds the proof's nbf is set back: Graph's clock may be behind this node's


class StepFailed(Exception):
    """A step could not be carried out now; `waiting`: it is expected to pass (Entra replicating a new key)."""

    def __init__(self, message: str, *, waiting: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message: str = message
        self.waiting: bool = waiting
        self.retry_after: float | None = retry_after


@dataclass
class _Job:
    identity: AppIdentity
    rotation: CertificateRotation
    send_x5c: bool
    specs: dict[Owner, tuple[AppIdentity, CertificateRotation, bool]] = field(default_factory=dict)
    state: KeyState | None = None
    outcome: Outcome | None = None
    accepted: dict[str, bool] = field(default_factory=dict)  # thumbprint: Entra issued a token for it / refused it
    failures: int = 0
    conflicts: int = 0  # writes of the Secret in a row that met a newer version
    pair: keygen.GeneratedKey | None = None  # generated for a STORE whose write conflicted
    added: dict[str, str] = field(default_factory=dict)  # thumbprint -> keyId addKey answered (lost if not recorded)
    waiting_since: dt.datetime | None = None  # since when Entra has not accepted the next key
    respec: bool = False  # the spec changed since the turn began
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    graph_token: tuple[str, Token] | None = None  # (thumbprint of the key it was acquired with, token)


@dataclass(frozen=True)
class View:
    state: KeyState
    outcome: Outcome
    registered: bool | None


class Rotator:
    def __init__(self, calls: KubeCalls, acquire: Callable[[AppIdentity, list[str], Any], Token], graph: GraphKeys,
                 *, graph_endpoint: str | None = None, on_change: Callable[[Owner], None] = lambda owner: None,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        """`acquire(identity, scopes, material)`: a token request (blocking). `graph_endpoint`: Graph's base URL
        instead of each cloud's own."""
        self.calls, self._acquire, self.graph = calls, acquire, graph
        self.graph_endpoint = graph_endpoint
        self.on_change = on_change
        self._clock = clock
        self._jobs: dict[Key, _Job] = {}
        self._owned: dict[Owner, Key] = {}  # the Secret each credential rotates (untracked on every other pass)
        self._generate = asyncio.Semaphore(1)  # key pairs cost CPU: one at a time
        self._stopping = False

    # --- what the passes call ---------------------------------------------------------------------------------
    def track(self, key: Key, owner: Owner, identity: AppIdentity, rotation: CertificateRotation,
              send_x5c: bool) -> None:
        """The credential `owner` authenticates with the certificate Secret `key` under `rotation` (and with no
        other Secret: a renamed one is no longer looked after for it)."""
        if self._stopping:
            return
        self._detach(owner, keep=key)
        job = self._jobs.get(key)
        if job is None:
            job = self._jobs[key] = _Job(identity, rotation, send_x5c)
        job.specs[owner] = (identity, rotation, send_x5c)
        # credentials sharing the Secret must agree; the first (sorted) owner's spec is the job's, whatever order
        # their passes run in, so that they never take turns overwriting it
        first = job.specs[min(job.specs)]
        if (job.identity, job.rotation, job.send_x5c) != first:
            job.identity, job.rotation, job.send_x5c = first
            job.failures, job.respec = 0, True  # a new spec is tried at once, whatever failed before
            job.wake.set()
        if job.task is None or job.task.done():
            job.task = asyncio.get_running_loop().create_task(self._run(key, job), name=f"rotate:{key[0]}/{key[1]}")

    def untrack(self, owner: Owner) -> None:
        """The credential is gone or no longer rotates: a Secret no credential tracks is no longer looked after."""
        self._detach(owner)

    def _detach(self, owner: Owner, keep: Key | None = None) -> None:
        key = self._owned.pop(owner, None)
        if keep is not None:
            self._owned[owner] = keep
        if key is None or key == keep or (job := self._jobs.get(key)) is None:
            return
        job.specs.pop(owner, None)
        if not job.specs:
            if job.task is not None:
                job.task.cancel()
            del self._jobs[key]

    def secret_changed(self, key: Key) -> None:
        """The Secret watch saw a new version: look again (someone else may have changed it)."""
        job = self._jobs.get(key)
        if job is not None and job.failures == 0:  # a failing step waits for its backoff, whatever changes meanwhile
            job.wake.set()

    def token_outcome(self, key: Key, thumbprint: str, accepted: bool) -> None:
        """A pass acquired a token with this certificate (accepted) or Entra refused it as unknown."""
        job = self._jobs.get(key)
        if job is None or job.accepted.get(thumbprint) == accepted:
            return
        job.accepted = {thumbprint: accepted}  # only the current key's verdict matters
        job.wake.set()

    def view(self, key: Key) -> View | None:
        job = self._jobs.get(key)
        if job is None or job.state is None or job.outcome is None:
            return None
        return View(job.state, job.outcome, _accepted(job))

    async def _create(self, key: Key, job: _Job) -> bool:
        """Create the certificate Secret with a key pair graphcred generates: the private key never leaves the
        cluster. In the Secret's own task, never in a pass: a tenant's many missing Secrets wait for key generation
        here, not in the pass slots every tenant shares. True if it was created now."""
        namespace, name = key
        pair = await self._new_pair(job.identity, job.rotation, self._clock())
        body = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": name, "namespace": namespace,
                             "labels": {MANAGED_BY_LABEL: MANAGED_BY, ROTATION_LABEL: ROTATION_ENABLED},
                             "annotations": {GENERATED_BY_ANNOTATION: MANAGED_BY}},
                "data": {TLS_CERT_KEY: _b64(pair.cert_pem), TLS_KEY_KEY: _b64(pair.key_pem)}}
        try:
            await self.calls("create Secret", self.calls.kube.create_secret, namespace, body)
        except Conflict:
            return False  # created meanwhile (a person): theirs stands
        log.info("%s/%s: generated a key pair; certificate %s must be uploaded to app %s once", namespace, name,
                 pair.thumbprint, job.identity.client_id)
        return True

    async def stop(self) -> None:
        self._stopping = True
        tasks = [job.task for job in self._jobs.values() if job.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._jobs.clear()
        self._owned.clear()

    # --- the task ---------------------------------------------------------------------------------------------
    async def _run(self, key: Key, job: _Job) -> None:
        while True:
            job.wake.clear()
            job.respec = False
            try:
                delay = await self._turn(key, job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not end the Secret's rotation silently
                log.exception("%s/%s: certificate renewal failed unexpectedly", key[0], key[1])
                delay = self._failed(key, job, StepFailed(f"internal error ({type(exc).__name__})"))
            if job.failures and not job.respec:
                job.wake.clear()  # our own writes (and others' news) during a failing step do not cut its backoff
            if delay is None:
                await job.wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(job.wake.wait(), timeout=max(delay, 0.05))

    async def _turn(self, key: Key, job: _Job) -> float | None:
        """One step (or a look); seconds until the next turn (None: until woken)."""
        namespace, name = key
        try:
            secret = await self.calls("read Secret", self.calls.kube.read_secret, namespace, name)
        except KubeError as exc:
            return self._failed(key, job, StepFailed(f"cannot read Secret {name}: {exc}"))
        if secret is None:
            job.state = None
            try:
                await self._create(key, job)
            except KubeError as exc:
                return self._failed(key, job, StepFailed(f"cannot create Secret {name}: {exc}"))
            return 0.0
        state = job.state = KeyState.of(secret, job.rotation)
        labels = (secret.get("metadata") or {}).get("labels") or {}
        if labels.get(ROTATION_LABEL) != ROTATION_ENABLED:
            # graphcred changes no Secret that did not consent (nor may it: the chart's admission policy)
            self._report(key, job, Outcome(False, "NotEnabled", f"Secret {name} is not labelled "
                                           f"{ROTATION_LABEL}={ROTATION_ENABLED}: label it to let graphcred renew "
                                           f"its certificate (kubectl label secret {name} "
                                           f"{ROTATION_LABEL}={ROTATION_ENABLED})"))
            return None
        issuer = ((secret.get("metadata") or {}).get("annotations") or {}).get(CERT_MANAGER_ANNOTATION)
        if issuer is not None and not state.generated:
            # two writers of one key pair would undo each other: cert-manager renews it, graphcred only reports
            self._report(key, job, Outcome(False, "ManagedElsewhere", f"Secret {name} is cert-manager's (Certificate "
                                           f"{str(issuer)[:253]}): it renews the certificate; remove "
                                           "certificate.rotation, or let graphcred generate a Secret of its own"))
            return None
        apps = {(i.authority_base(), i.tenant_id, i.client_id, r) for i, r, _ in job.specs.values()}
        if len(apps) > 1:
            # one key pair cannot follow two sets of rules (or two apps): none is followed until they agree
            owners = ", ".join(f"{o[0]}/{o[1]}" for o in sorted(job.specs))
            self._report(key, job, Outcome(False, "SpecsDisagree", f"GraphAppCredentials {owners} name Secret "
                                           f"{name} with different apps or rotation settings: give them the same"))
            return None
        now = self._clock()
        step = plan(state, job.rotation, now)
        if step.step is Step.IDLE:
            self._report(key, job, scheduled(state, job.rotation))
            return None if step.due is None else (step.due - now).total_seconds()
        if step.step is Step.STORE:
            if _accepted(job) is None:  # after a restart nobody may have asked yet: the proof needs it
                await self._check_current(key, job, secret)
            if _accepted(job) is not True:
                # a new key is added with a proof signed by the current one: only once Entra accepts that
                self._report(key, job, Outcome(False, "NotRegistered", f"certificate {_thumb(state)} is due for "
                                               "renewal but Entra has not accepted it yet: it must be registered "
                                               "on the app before graphcred can add its successor"))
                return None
        if step.step is Step.REMOVE and (wait := _grace_left(state, job.rotation, now)) > 0:
            return wait  # the old key stays a moment: consumers of the Secret and Entra's replicas catch up
        due = renew_at(state, job.rotation)
        if step.step is Step.REMOVE and job.failures and due is not None and now >= due:
            # removeKey kept failing until the current certificate is due itself: renewing it matters more; the
            # old key stays on the app (it expires there) and the log says which
            log.warning("%s/%s: removeKey of the previous certificate %s kept failing; left on the app (keyId %s) "
                        "to renew the current one", namespace, name, state.previous_thumbprint,
                        state.previous_key_id)
            with contextlib.suppress(KubeError):  # a Conflict or a failure: the next turn looks again
                await self._patch(key, state, notes={PREVIOUS_KEY_ID_ANNOTATION: None,
                                                     PREVIOUS_THUMBPRINT_ANNOTATION: None})
            return 0.0
        try:
            await self._do(step.step, key, job, state, secret)
        except StepFailed as failed:
            return self._failed(key, job, failed)
        except Conflict:
            # the Secret changed meanwhile: look again (what a step learnt is kept: `_Job.added`, `_Job.pair`);
            # repeated, like a failure, so that a Secret changed all the time costs no key pair per change
            job.conflicts += 1
            if job.conflicts >= CONFLICTS_BEFORE_BACKOFF:
                return self._failed(key, job, StepFailed(f"Secret {name} keeps changing under graphcred's writes"))
            return 0.0
        except KubeError as exc:
            return self._failed(key, job, StepFailed(f"cannot write Secret {name}: {exc}"))
        job.failures = job.conflicts = 0
        return 0.0  # the next step at once

    async def _check_current(self, key: Key, job: _Job, secret: dict[str, Any]) -> None:
        """Whether Entra accepts the current certificate, with a token request of the rotator's own."""
        # refused (recorded by `_graph_token`) or not known now: the next turn asks again
        with contextlib.suppress(StepFailed):
            await self._graph_token(job, self._material(secret, TLS_CERT_KEY, TLS_KEY_KEY, job), "the current")

    def _failed(self, key: Key, job: _Job, failed: StepFailed) -> float:
        job.failures += 1
        delay: float = min(LAST_RETRY, FIRST_RETRY * float(2 ** min(job.failures - 1, 10)))
        if failed.retry_after is not None:
            delay = max(delay, failed.retry_after)
        retry_at = self._clock() + dt.timedelta(seconds=delay)
        if failed.waiting:
            outcome = Outcome(True, "Renewing", f"{failed.message}; trying again at {rfc3339(retry_at)}", retry_at)
        else:
            outcome = Outcome(False, "RenewalFailed", f"{failed.message}; the current certificate keeps serving; "
                              f"trying again at {rfc3339(retry_at)}", retry_at)
            log.warning("%s/%s: certificate renewal: %s", key[0], key[1], failed.message)
        self._report(key, job, outcome)
        return delay

    def _progress(self, key: Key, job: _Job, outcome: Outcome) -> None:
        """A step under way: said only when the last attempt did not fail (a retry must not flip the condition)."""
        if job.failures == 0:
            self._report(key, job, outcome)

    def _report(self, key: Key, job: _Job, outcome: Outcome) -> None:
        if outcome != job.outcome:
            job.outcome = outcome
            for owner in sorted(job.specs):
                self.on_change(owner)

    # --- the steps --------------------------------------------------------------------------------------------
    async def _do(self, step: Step, key: Key, job: _Job, state: KeyState, secret: dict[str, Any]) -> None:
        """One step, on the Secret as this turn read it (`state` is what it says): a newer version meanwhile makes
        the step's write a Conflict, and the next turn reads again."""
        namespace, name = key
        if step is Step.STORE:
            self._progress(key, job, Outcome(True, "Renewing", "generating the next key pair"))
            # a pair generated for a write that conflicted is stored on the next attempt, not generated again
            pair = job.pair or await self._new_pair(job.identity, job.rotation, self._clock())
            job.pair = pair
            await self._patch(key, state, data={NEXT_CERT_KEY: _b64(pair.cert_pem), NEXT_KEY_KEY: _b64(pair.key_pem)},
                              notes={NEXT_KEY_ID_ANNOTATION: None, ADDING_ANNOTATION: None})
            job.pair = None
            log.info("%s/%s: stored the next certificate %s", namespace, name, pair.thumbprint)
        elif step is Step.REGISTER:
            await self._register(key, job, state, secret)
        elif step is Step.SWITCH:
            await self._switch(key, job, state, secret)
        elif step is Step.REMOVE:
            await self._remove(key, job, state, secret)

    async def _register(self, key: Key, job: _Job, state: KeyState, secret: dict[str, Any]) -> None:
        assert state.next is not None
        thumbprint = state.next.thumbprint
        self._progress(key, job, Outcome(True, "Renewing", f"registering the next certificate "
                                         f"{state.next.thumbprint} with Microsoft Graph (addKey)"))
        if thumbprint in job.added:  # added before, and the write recording it conflicted: record it now
            await self._patch(key, state, notes={NEXT_KEY_ID_ANNOTATION: job.added[thumbprint],
                                                 ADDING_ANNOTATION: None})
            return
        current = self._material(secret, TLS_CERT_KEY, TLS_KEY_KEY, job)
        token = await self._graph_token(job, current, "the current")
        if not state.adding:  # recorded first: if addKey's answer is lost, the next attempt knows it may have worked
            state = KeyState.of({**secret, "metadata": {**secret["metadata"], "resourceVersion": await self._patch(
                key, state, notes={ADDING_ANNOTATION: rfc3339(self._clock())})}}, job.rotation)
        next_der = _der(secret, NEXT_CERT_KEY)
        url = self._graph_url(job)
        try:
            key_id = await self.calls.blocking(
                self.graph.add_key, url, token.access_token, job.rotation.object_id, next_der,
                self._proof(current, job), f"graphcred {key[0]}/{key[1]} {rfc3339(self._clock())}")
        except KeyCallFailed as exc:
            if not (state.adding and exc.status == 400):
                raise StepFailed(f"Microsoft Graph refused addKey: {exc}", retry_after=exc.retry_after) from None
            # sent before, answer lost: Graph refuses the same certificate twice; was it the first attempt's?
            key_id = await self._added_before(job, token, state, secret)
        job.added = {thumbprint: key_id}
        await self._patch(key, state, notes={NEXT_KEY_ID_ANNOTATION: key_id, ADDING_ANNOTATION: None})
        log.info("%s/%s: Entra added certificate %s (keyId %s)", key[0], key[1], thumbprint, key_id)

    async def _added_before(self, job: _Job, token: Token, state: KeyState, secret: dict[str, Any]) -> str:
        assert state.next is not None
        try:
            found = await self.calls.blocking(self.graph.find_key_id, self._graph_url(job), token.access_token,
                                              job.rotation.object_id, state.next.thumbprint)
        except KeyCallFailed:
            found = None  # the app may not read itself: its keyId stays unknown
        if found is not None:
            return found
        # Entra issuing a token for the next key proves the earlier attempt added it (its keyId stays unknown: the
        # key stays in Entra when it is replaced, and status says so)
        await self._graph_token(job, self._material(secret, NEXT_CERT_KEY, NEXT_KEY_KEY, job), "the next",
                                refused_is_waiting=True)
        return UNKNOWN_KEY_ID

    async def _switch(self, key: Key, job: _Job, state: KeyState, secret: dict[str, Any]) -> None:
        assert state.next is not None
        upcoming = self._material(secret, NEXT_CERT_KEY, NEXT_KEY_KEY, job)
        token = await self._graph_token(job, upcoming, "the next", refused_is_waiting=True)
        previous_id = state.key_id or UNKNOWN_KEY_ID
        await self._patch(key, state, data={TLS_CERT_KEY: secret["data"][NEXT_CERT_KEY],
                                            TLS_KEY_KEY: secret["data"][NEXT_KEY_KEY],
                                            NEXT_CERT_KEY: None, NEXT_KEY_KEY: None},
                          notes={KEY_ID_ANNOTATION: state.next_key_id, NEXT_KEY_ID_ANNOTATION: None,
                                 PREVIOUS_KEY_ID_ANNOTATION: previous_id,
                                 PREVIOUS_THUMBPRINT_ANNOTATION: _thumb(state),
                                 RENEWED_AT_ANNOTATION: rfc3339(self._clock())})
        job.graph_token = (state.next.thumbprint, token)
        job.accepted = {state.next.thumbprint: True}
        log.info("%s/%s: switched to certificate %s (Entra issued a token for it)", key[0], key[1],
                 state.next.thumbprint)

    async def _remove(self, key: Key, job: _Job, state: KeyState, secret: dict[str, Any]) -> None:
        current = self._material(secret, TLS_CERT_KEY, TLS_KEY_KEY, job)
        token = await self._graph_token(job, current, "the current")
        url, object_id = self._graph_url(job), job.rotation.object_id
        previous = state.previous_key_id
        gone = False
        if state.previous_thumbprint:
            # the keyId recorded may be a person's (spec keyId), or unknown: where the app may read its own keys,
            # the one removed is the one with the previous certificate's thumbprint, whatever was recorded
            try:
                found = await self.calls.blocking(self.graph.find_key_id, url, token.access_token, object_id,
                                                  state.previous_thumbprint)
            except (KeyCallFailed, ValueError):
                pass
            else:
                if found is not None and found != previous:
                    log.warning("%s/%s: the previous certificate's keyId is %s, not %s as recorded", key[0], key[1],
                                found, previous)
                previous, gone = found or previous, found is None
        kept = ""
        if gone:
            log.info("%s/%s: the previous certificate is no longer on the app", key[0], key[1])
        elif previous is not None and previous == state.key_id:  # never the key in use, whatever a record says
            kept = f"the previous keyId {previous} is the current certificate's: nothing removed"
        elif previous == UNKNOWN_KEY_ID or previous is None:
            kept = (f"the previous certificate {state.previous_thumbprint or ''} stays registered on the app: "
                    "graphcred does not know its keyId (set rotation.keyId for a certificate a person uploaded); "
                    "remove it in the app registration when nothing else uses it")
        else:
            try:
                await self.calls.blocking(self.graph.remove_key, url, token.access_token, object_id, previous,
                                          self._proof(current, job))
            except KeyCallFailed as exc:
                raise StepFailed(f"Microsoft Graph refused removeKey of the previous certificate: {exc}",
                                 retry_after=exc.retry_after) from None
        await self._patch(key, state, notes={PREVIOUS_KEY_ID_ANNOTATION: None, PREVIOUS_THUMBPRINT_ANNOTATION: None})
        if kept:
            log.warning("%s/%s: %s", key[0], key[1], kept)
        elif not gone:
            log.info("%s/%s: Entra removed the previous certificate (keyId %s)", key[0], key[1], previous)

    # --- helpers ----------------------------------------------------------------------------------------------
    async def _new_pair(self, identity: AppIdentity, rotation: CertificateRotation, now: dt.datetime
                        ) -> keygen.GeneratedKey:
        async with self._generate:
            return await self.calls.blocking(keygen.generate_key, f"graphcred {identity.client_id}",
                                             rotation.validity_delta(), now)

    def _material(self, secret: dict[str, Any], cert_key: str, key_key: str, job: _Job) -> credentials.Certificate:
        data = secret.get("data") or {}
        ref = CertificateRef(name=str(secret["metadata"]["name"]), send_x5c=job.send_x5c)
        try:
            return credentials.parse_certificate({TLS_CERT_KEY: data.get(cert_key, ""),
                                                  TLS_KEY_KEY: data.get(key_key, "")},
                                                 ref)
        except Failure as exc:
            raise StepFailed(exc.message) from None

    async def _graph_token(self, job: _Job, material: credentials.Certificate, which: str, *,
                           refused_is_waiting: bool = False) -> Token:
        thumbprint = keygen.thumbprint(material.leaf)
        held = job.graph_token
        if held is not None and held[0] == thumbprint and held[1].expires_on > self._clock() + dt.timedelta(minutes=5):
            return held[1]
        try:
            token = await self.calls.blocking(self._acquire, job.identity, [graph_scope(job.identity.cloud)], material)
        except AcquisitionError as exc:
            if exc.code == ENTRA_KEY_REFUSED and not refused_is_waiting:
                job.accepted[thumbprint] = False
            if refused_is_waiting and exc.code == ENTRA_KEY_REFUSED:
                now = self._clock()
                job.waiting_since = job.waiting_since or now
                if now - job.waiting_since < WAIT_LIMIT:
                    raise StepFailed(f"waiting for Entra to accept the next certificate {thumbprint} (new keys take "
                                     "a while to replicate)", waiting=True) from None
                raise StepFailed(f"Entra has not accepted the next certificate {thumbprint} for "
                                 f"{WAIT_LIMIT.total_seconds() / 60:.0f} minutes (AADSTS{exc.code}): check objectId "
                                 "and the app's certificates") from None
            raise StepFailed(f"no Microsoft Graph token with {which} certificate: {exc.message}",
                             retry_after=exc.retry_after) from None
        job.graph_token = (thumbprint, token)
        job.accepted[thumbprint] = True
        job.waiting_since = None
        return token

    def _proof(self, material: credentials.Certificate, job: _Job) -> str:
        return sign_proof(material.key, material.leaf.fingerprint(hashes.SHA1()),  # noqa: S303 - x5t is SHA-1
                          job.rotation.object_id, int(self._clock().timestamp()) - PROOF_SKEW)

    def _graph_url(self, job: _Job) -> str:
        return self.graph_endpoint or GRAPH_BY_CLOUD[job.identity.cloud]

    async def _patch(self, key: Key, state: KeyState, *, data: dict[str, Any] | None = None,
                     notes: dict[str, Any] | None = None) -> str:
        """A merge patch of the Secret as it was read (its resourceVersion): a Conflict if anyone changed it."""
        patch: dict[str, Any] = {"metadata": {"resourceVersion": state.version}}
        if notes:
            patch["metadata"]["annotations"] = notes
        if data:
            patch["data"] = data
        version: str = await self.calls("patch Secret", self.calls.kube.patch_secret, key[0], key[1], patch)
        return version


def _grace_left(state: KeyState, rotation: CertificateRotation, now: dt.datetime) -> float:
    """Seconds the previous key still stays after the switch: a tenth of the validity, at most five minutes."""
    renewed = parse_rfc3339(state.renewed_at)
    if renewed is None:
        return 0.0
    grace = min(REMOVE_GRACE, rotation.validity_delta() / 10)
    return (renewed + grace - now).total_seconds()


def _accepted(job: _Job) -> bool | None:
    """Whether Entra accepts the Secret's current certificate, as far as the passes and steps have seen."""
    if job.state is None or job.state.current is None:
        return None
    return job.accepted.get(job.state.current.thumbprint)


def _thumb(state: KeyState) -> str:
    return state.current.thumbprint if state.current is not None else ""


def _b64(pem: bytes) -> str:
    return base64.b64encode(pem).decode()


def _der(secret: dict[str, Any], data_key: str) -> bytes:
    pem = base64.b64decode((secret.get("data") or {}).get(data_key, ""))
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)

