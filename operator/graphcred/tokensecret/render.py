"""Render the token Secret, the patch that updates it, and whether a Secret is ours to write. Pure.

The Secret is created whole, then only patched (JSON merge patch, guarded by resourceVersion): the patch names the
keys graphcred writes and nothing else, so labels, annotations, finalizers and data keys that other tools add
survive every refresh. Keys graphcred wrote from spec.secretTemplate and no longer renders are removed (set to
null); which keys those are, the Secret's managedFields say (every write is made as field manager `graphcred`).
Why: docs/design/2026-12-06-merge-patch-and-managed-fields.md.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from graphcred.api.keys import (
    CREDENTIAL_ANNOTATION,
    EXPIRES_ON_ANNOTATION,
    FIELD_MANAGER,
    GROUP,
    KIND,
    MANAGED_BY,
    TOKEN_KEYS,
    VERSION,
)
from graphcred.api.keys import MANAGED_BY_LABEL as MANAGED_BY_LABEL
from graphcred.api.model import DEFAULT_SECRET_TYPE, SecretTemplate
from graphcred.api.template import TemplateError, compile_template
from graphcred.base.times import parse_rfc3339, rfc3339

KEYS = TOKEN_KEYS
# Kubernetes refuses a Secret whose data (the decoded values) totals more than 1 MiB.
MAX_DATA_BYTES = 1024 * 1024
_OWN_LABELS = frozenset({MANAGED_BY_LABEL})
_OWN_ANNOTATIONS = frozenset({CREDENTIAL_ANNOTATION, EXPIRES_ON_ANNOTATION})


@dataclass(frozen=True)
class Owner:
    """The GraphAppCredential a Secret belongs to."""

    name: str
    namespace: str
    uid: str


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": owner.name, "uid": owner.uid,
            "controller": True, "blockOwnerDeletion": True}


@dataclass(frozen=True)
class TokenFacts:
    """The token and what a template may say about it. `tenant_id`, `client_id`, `audience`: from the token's
    claims (tid, appid/azp, aud), else from the spec."""

    access_token: str = field(repr=False)
    expires_on: dt.datetime
    tenant_id: str = ""
    client_id: str = ""
    audience: str = ""
    token_type: str = "Bearer"

    def template_values(self) -> dict[str, str | int]:
        return {"accessToken": self.access_token, "tokenType": self.token_type,
                "expiresOn": rfc3339(self.expires_on), "expiresOnUnix": int(self.expires_on.timestamp()),
                "tenantId": self.tenant_id, "clientId": self.client_id, "audience": self.audience}


@dataclass(frozen=True)
class TemplateKeys:
    """Names of the keys graphcred wrote from spec.secretTemplate (no values): what to remove when they go."""

    data: frozenset[str] = frozenset()
    labels: frozenset[str] = frozenset()
    annotations: frozenset[str] = frozenset()

    @classmethod
    def of(cls, data: frozenset[str], labels: frozenset[str], annotations: frozenset[str]) -> TemplateKeys:
        """Kept for each credential between passes: most have no template, and an empty difference of frozensets
        is a new object each time (216 bytes, three per credential): no keys is one shared value."""
        if not (data or labels or annotations):
            return _NO_TEMPLATE_KEYS
        return cls(data, labels, annotations)


_NO_TEMPLATE_KEYS = TemplateKeys()


def render(name: str, owner: Owner, access_token: str, expires_on: dt.datetime, *,
           template: SecretTemplate | None = None, facts: TokenFacts | None = None) -> dict[str, Any]:
    """The whole token Secret as the API expects it (data base64-encoded). `facts` feed the template's fields
    (default: the token and its expiry only). Raises TemplateError if the template cannot be rendered (it was
    checked when the spec was read) or the data would exceed what a Secret can hold; the message names no value."""
    expiry = rfc3339(expires_on)
    template = template or SecretTemplate()
    facts = facts or TokenFacts(access_token, expires_on)
    data = {"access_token": access_token, "token_type": "Bearer", "expires_on": expiry,
            "authorization": f"Bearer {access_token}", **_rendered(template, facts)}
    size = sum(len(value.encode()) for value in data.values())
    if size > MAX_DATA_BYTES:
        raise TemplateError(f"the token Secret would hold {size} bytes of data with this token; a Secret holds at "
                            f"most {MAX_DATA_BYTES} (1 MiB): shorten spec.secretTemplate.data")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": template.type,
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            # graphcred's own keys last: a template cannot set them, and an edit of them never survives a write
            "labels": {**template.metadata.labels, MANAGED_BY_LABEL: MANAGED_BY},
            "annotations": {**template.metadata.annotations, CREDENTIAL_ANNOTATION: owner.name,
                            EXPIRES_ON_ANNOTATION: expiry},
            "ownerReferences": [owner_reference(owner)],
        },
        "data": {key: _b64(value) for key, value in data.items()},
    }


def _rendered(template: SecretTemplate, facts: TokenFacts) -> dict[str, str]:
    if not template.data:
        return {}
    values = facts.template_values()
    out = {}
    for key, source in template.data.items():
        try:
            out[key] = compile_template(source).render(values)
        except TemplateError as exc:
            raise TemplateError(f"spec.secretTemplate.data.{key}: {exc}") from None
    return out


def template_keys(body: Mapping[str, Any]) -> TemplateKeys:
    """The keys of a rendered Secret that came from spec.secretTemplate."""
    meta = body["metadata"]
    return TemplateKeys.of(frozenset(body.get("data") or {}) - frozenset(KEYS),
                           frozenset(meta.get("labels") or {}) - _OWN_LABELS,
                           frozenset(meta.get("annotations") or {}) - _OWN_ANNOTATIONS)


def written_template_keys(metadata: Mapping[str, Any]) -> TemplateKeys:
    """The template keys graphcred wrote into a Secret as read, from its managedFields: the keys field manager
    `graphcred` set last. A key someone else changed since is theirs now, and is left alone."""
    data: set[str] = set()
    labels: set[str] = set()
    annotations: set[str] = set()
    for entry in metadata.get("managedFields") or []:
        if not isinstance(entry, Mapping) or entry.get("manager") != FIELD_MANAGER:
            continue
        fields = entry.get("fieldsV1")
        if not isinstance(fields, Mapping):
            continue
        meta = fields.get("f:metadata")
        meta = meta if isinstance(meta, Mapping) else {}
        data |= _field_names(fields.get("f:data"))
        labels |= _field_names(meta.get("f:labels"))
        annotations |= _field_names(meta.get("f:annotations"))
    return TemplateKeys.of(frozenset(data) - frozenset(KEYS), frozenset(labels) - _OWN_LABELS,
                           frozenset(annotations) - _OWN_ANNOTATIONS)


def _field_names(node: Any) -> set[str]:
    if not isinstance(node, Mapping):
        return set()
    return {name[2:] for name in node if isinstance(name, str) and name.startswith("f:")}


def update_patch(body: Mapping[str, Any], resource_version: str, before: TemplateKeys, *,
                 owner_references: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The JSON merge patch that makes an existing Secret hold `body`'s keys: graphcred's keys set, template keys
    it wrote before (`before`) and no longer renders removed, everything else left as it is. Applied only if the
    Secret still has `resource_version`. `owner_references`: replace the owner references (adopting the Secret of
    a deleted namesake); None leaves them alone."""
    meta = body["metadata"]
    metadata: dict[str, Any] = {
        "resourceVersion": resource_version,
        "labels": _with_removals(meta["labels"], before.labels),
        "annotations": _with_removals(meta["annotations"], before.annotations),
    }
    if owner_references is not None:
        metadata["ownerReferences"] = owner_references
    return {"metadata": metadata, "data": _with_removals(body["data"], before.data)}


def _with_removals(wanted: Mapping[str, Any], before: Iterable[str]) -> dict[str, Any]:
    return {**{key: None for key in before if key not in wanted}, **wanted}


def adopted_references(metadata: Mapping[str, Any], owner: Owner) -> list[dict[str, Any]]:
    """Owner references of a namesake's Secret once adopted: its controller reference replaced by ours, other
    (non-controller) references kept."""
    others = [ref for ref in metadata.get("ownerReferences") or [] if not ref.get("controller")]
    return [owner_reference(owner), *others]


def secret_type(secret: Mapping[str, Any]) -> str:
    return str(secret.get("type") or DEFAULT_SECRET_TYPE)


def retyped(body: Mapping[str, Any], current: Mapping[str, Any], before: TemplateKeys) -> dict[str, Any]:
    """`body` to create in place of `current`, whose type differs (a Secret's type is immutable): labels and
    annotations other tools put on `current` are carried over; its other data keys are not (they were for the
    old type), nor its finalizers (they guarded the old object)."""
    meta = current.get("metadata") or {}
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in before.labels and k not in _OWN_LABELS}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k not in before.annotations and k not in _OWN_ANNOTATIONS}
    new_meta = dict(body["metadata"])
    new_meta["labels"] = {**labels, **new_meta["labels"]}
    new_meta["annotations"] = {**annotations, **new_meta["annotations"]}
    return {**body, "metadata": new_meta}


def stored_token(secret: Mapping[str, Any]) -> str | None:
    """The access token in a token Secret as read, if it holds one."""
    encoded = (secret.get("data") or {}).get("access_token")
    if not isinstance(encoded, str):
        return None
    try:
        token = base64.b64decode(encoded, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return token or None


def controller_uid(metadata: Mapping[str, Any]) -> str | None:
    for ref in metadata.get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def is_ours(metadata: Mapping[str, Any], owner: Owner) -> bool:
    """Only a Secret controlled by this very GraphAppCredential may be updated, or one left by a deleted
    GraphAppCredential of the same name (see `left_by_namesake`)."""
    return controller_uid(metadata) == owner.uid or left_by_namesake(metadata, owner)


def left_by_namesake(metadata: Mapping[str, Any], owner: Owner) -> bool:
    """Controlled by a GraphAppCredential of this name with another uid: that one was deleted (names are unique
    while an object exists) and the garbage collector has not removed its token Secret yet, which can take minutes.
    Deleting and re-creating a credential (GitOps replace) adopts it instead of reporting a conflict."""
    for ref in metadata.get("ownerReferences") or []:
        if ref.get("controller"):
            return bool(ref.get("kind") == KIND and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/")
                        and ref.get("name") == owner.name and ref.get("uid") != owner.uid)
    return False


def stored_expiry(metadata: Mapping[str, Any]) -> dt.datetime | None:
    return parse_rfc3339((metadata.get("annotations") or {}).get(EXPIRES_ON_ANNOTATION))
