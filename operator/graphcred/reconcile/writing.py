"""The Secret step of a pass: the token Secret read (only when needed), rendered and written.

graphcred creates the Secret whole, then only patches it (JSON merge patch guarded by resourceVersion, naming
graphcred's keys alone), so other tools' labels, annotations, finalizers and keys survive every refresh. After its
own write the Secret is not read again: its resourceVersion is remembered, and a change by anyone since surfaces as
a Conflict on the next patch, which reads it then. A Secret that is not this credential's is never written.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from graphcred.acquire.jwt import unverified_claims
from graphcred.acquire.tokens import Token
from graphcred.api.failures import Failure
from graphcred.api.model import AppIdentity, GraphAppCredentialSpec, Reason
from graphcred.api.template import TemplateError
from graphcred.kube.calls import Conflict
from graphcred.kube.errors import Invalid
from graphcred.reconcile.calls import KubeCalls
from graphcred.reconcile.memory import SecretMemory
from graphcred.reconcile.outcome import not_ours
from graphcred.reconcile.policy import Retry
from graphcred.reconcile.ports import SecretDirectory
from graphcred.reconcile.snapshot import Snapshot, Target
from graphcred.tokensecret.render import (
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


class TokenSecretWriter:
    """Reads and writes token Secrets for passes. `secrets`: what the Secret watch knows (a Secret it has never
    seen is not read before it is created)."""

    def __init__(self, calls: KubeCalls, secrets: SecretDirectory | None = None) -> None:
        self.calls = calls
        self.secrets = secrets

    async def target(self, snap: Snapshot, mem: SecretMemory, name: str) -> Target | None:
        """The token Secret as far as writing it needs: None if absent.
        After our own write its resourceVersion is known and the read is skipped: a change by anyone else since
        then surfaces as a conflict on the patch. After a restart, the watch's record of it may stand for the read.
        A Secret the watch has never seen is not read either (a new credential's): it is created, and if it exists
        after all, AlreadyExists has it read then (`write`)."""
        if mem.version is not None:
            return Target(mem.version, None)
        seen = self.secrets.lookup(snap.namespace, name) if self.secrets is not None else None
        if seen is not None and seen.version is None:
            return None
        if seen is not None and seen.version is not None and seen.owner == snap.uid and seen.expires_on is not None:
            # After a restart: the watch saw it controlled by this very credential, with its expiry. Whether that is
            # the token the status describes is the pass's to judge (its decision compares them); a write reads it
            # first (the type and template keys it holds are not known yet: `_put`).
            return Target(seen.version, None, seen.expires_on)
        existing = await self.calls("read Secret", self.calls.kube.read_secret, snap.namespace, name)
        if existing is not None and not is_ours(existing["metadata"], snap.owner):
            raise not_ours(name)
        return Target.read(existing)

    async def stored(self, snap: Snapshot, name: str, expires: dt.datetime | None, issued: dt.datetime | None,
                     issued_precisely: dt.datetime | None) -> tuple[Token, Target] | None:
        """The token in the Secret, read back to render the Secret again, if the Secret is ours and holds the token
        the status describes (expiring at `expires`, issued at `issued`: to the second; `issued_precisely` when
        this process wrote it); else None (a new one is requested)."""
        secret = await self.calls("read Secret", self.calls.kube.read_secret, snap.namespace, name)
        access_token = stored_token(secret) if secret is not None else None
        if (secret is None or access_token is None or not is_ours(secret["metadata"], snap.owner)
                or expires is None or issued is None or stored_expiry(secret["metadata"]) != expires):
            return None
        try:
            claims = unverified_claims(access_token)
        except ValueError:
            return None
        token = Token(access_token, expires, issued_precisely or issued, claims)
        return token, Target(str(secret["metadata"]["resourceVersion"]), secret)

    async def write(self, snap: Snapshot, mem: SecretMemory, spec: GraphAppCredentialSpec, identity: AppIdentity,
                    name: str, existing: Target | None, token: Token) -> None:
        """Create the token Secret, or patch graphcred's keys into it (others' labels, annotations, finalizers and
        keys stay); remembers its new resourceVersion."""
        body = _body(snap, spec, identity, name, token)
        try:
            mem.version = await self._put_ours(snap, mem, name, existing, body)
        except Invalid as exc:
            # The apiserver refuses this Secret as it is (an invalid name, key or label): writing it again cannot
            # succeed, and every retry would have requested a token first. Only a change of the spec can help.
            raise Failure(Reason.INVALID_SPEC, f"{exc}: the apiserver refused the token Secret {name} as invalid; "
                          "check spec.secretName and spec.secretTemplate", retry=Retry.ON_CHANGE) from None

    async def _put_ours(self, snap: Snapshot, mem: SecretMemory, name: str, existing: Target | None,
                        body: dict[str, Any]) -> str:
        try:
            return await self._put(snap, mem, name, existing, body)
        except Conflict:
            # Someone wrote the Secret since we read or wrote it, or it exists though we saw none (AlreadyExists):
            # only write if it is ours.
            current = await self.calls("read Secret", self.calls.kube.read_secret, snap.namespace, name)
            if current is not None and not is_ours(current["metadata"], snap.owner):
                if existing is None:
                    raise not_ours(name) from None
                raise Failure(Reason.SECRET_CONFLICT,
                              f"Secret {name} was created by someone else; graphcred never modifies it",
                              retry=Retry.NEEDS_USER) from None
            return await self._put(snap, mem, name, Target.read(current), body)

    async def _put(self, snap: Snapshot, mem: SecretMemory, name: str, existing: Target | None,
                   body: dict[str, Any]) -> str:
        kube = self.calls.kube
        if existing is None:
            if mem.carried:
                body = retyped(body, {"metadata": mem.carried}, TemplateKeys())
            version = await self.calls("create Secret", kube.create_secret, snap.namespace, body)
            mem.carried = None
        else:
            secret = existing.secret
            if secret is None and mem.type != body["type"]:
                # our own write, but of another type: read it to replace it
                secret = await self.calls("read Secret", kube.read_secret, snap.namespace, name)
                if secret is None or not is_ours(secret["metadata"], snap.owner):
                    raise Conflict(name)
            if secret is not None and secret_type(secret) != body["type"]:
                version = await self._retype(snap, mem, name, secret, body)
            else:
                meta = secret["metadata"] if secret is not None else None
                before = written_template_keys(meta) if meta is not None else mem.keys or TemplateKeys()
                # a deleted namesake's Secret: its controller reference is replaced by ours
                adopted = (adopted_references(meta, snap.owner) if meta is not None
                           and left_by_namesake(meta, snap.owner) else None)
                patch = update_patch(body, existing.resource_version, before, owner_references=adopted)
                version = await self.calls("patch Secret", kube.patch_secret, snap.namespace, name, patch)
        mem.type, mem.keys = body["type"], template_keys(body)
        return version

    async def _retype(self, snap: Snapshot, mem: SecretMemory, name: str, secret: dict[str, Any],
                      body: dict[str, Any]) -> str:
        """The type of a Secret cannot change: delete it (only if unchanged since it was read) and create it with
        the new type, carrying over the labels and annotations of other tools."""
        meta = secret["metadata"]
        change = f"to change its type from {secret_type(secret)} to {body['type']}"
        replacement = retyped(body, secret, written_template_keys(meta))
        mem.version = None  # whatever happens next, the Secret must be read again
        if not meta.get("deletionTimestamp"):
            await self.calls("delete Secret", self.calls.kube.delete_secret_unchanged, snap.namespace, name,
                             str(meta.get("uid", "")), str(meta["resourceVersion"]))
            log.info("%s/%s: deleted Secret %s %s (a Secret's type is immutable)", snap.namespace, snap.name, name,
                     change)
            try:
                return await self.calls("create Secret", self.calls.kube.create_secret, snap.namespace, replacement)
            except Conflict:
                pass  # still there: finalizers hold it
        # The Secret watch wakes this object once the Secret is gone; its last token stays valid until then.
        mem.carried = {part: {k: v for k, v in replacement["metadata"][part].items() if k not in body["metadata"][part]}
                       for part in ("labels", "annotations")}
        finalizers = ", ".join(str(f) for f in meta.get("finalizers") or []) or "its deletion to finish"
        raise Failure(Reason.SECRET_CONFLICT,
                      f"Secret {name} is being deleted {change} and waits for {finalizers}; graphcred creates it "
                      "again once it is gone", retry=Retry.NEEDS_USER)

    async def revoke(self, snap: Snapshot, mem: SecretMemory, name: str) -> bool:
        """Permission to the token was withdrawn (a ClusterGraphApp's policy, a namespace's labels, the app
        deleted): delete the token Secret if this object controls it; a bearer token the policy no longer allows
        must not stay readable. Whether one was deleted."""
        seen = self.secrets.lookup(snap.namespace, name) if self.secrets is not None else None
        if seen is not None and seen.version is None and mem.version is None:
            return False  # the watch has a whole list and no such Secret
        existing = await self.calls("read Secret", self.calls.kube.read_secret, snap.namespace, name)
        mem.version = None
        if existing is None or not is_ours(existing["metadata"], snap.owner):
            return False
        await self.calls("delete Secret", self.calls.kube.delete_secret, snap.namespace, name,
                         existing["metadata"].get("uid"))
        return True

    async def remove_old(self, snap: Snapshot, old: str | None, new: str) -> None:
        """After spec.secretName changed: the old token Secret would stay valid and never be refreshed. Delete it
        if (and only if) this object controls it."""
        if not old or old == new:
            return
        existing = await self.calls("read Secret", self.calls.kube.read_secret, snap.namespace, old)
        if existing is not None and is_ours(existing["metadata"], snap.owner):
            await self.calls("delete Secret", self.calls.kube.delete_secret, snap.namespace, old,
                             existing["metadata"].get("uid"))
            log.info("%s/%s: deleted the previous token Secret %s (spec.secretName changed)", snap.namespace,
                     snap.name, old)


def _body(snap: Snapshot, spec: GraphAppCredentialSpec, identity: AppIdentity, name: str, token: Token
          ) -> dict[str, Any]:
    facts = TokenFacts(token.access_token, token.expires_on,
                       tenant_id=token.claims.tenant_id or identity.tenant_id,
                       client_id=token.claims.app_id or identity.client_id,
                       audience=token.claims.audience or spec.scopes[0].removesuffix("/.default"))
    try:
        return render(name, snap.owner, token.access_token, token.expires_on, template=spec.secret_template,
                      facts=facts)
    except TemplateError as exc:  # its message names the key and the problem, never a value
        raise Failure(Reason.INVALID_SPEC, str(exc), retry=Retry.ON_CHANGE) from None

