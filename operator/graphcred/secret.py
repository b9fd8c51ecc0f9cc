"""Render the token Secret (DESIGN §2) and decide whether a Secret is ours to write. Pure."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .model import GROUP, KIND, VERSION

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "graphcred"
CREDENTIAL_ANNOTATION = f"{GROUP}/credential"
EXPIRES_ON_ANNOTATION = f"{GROUP}/expires-on"
RENEW_ANNOTATION = f"{GROUP}/renew-requested-at"  # on the GraphAppCredential: any new value acquires at once
KEYS = ("access_token", "token_type", "expires_on", "authorization")


@dataclass(frozen=True)
class Owner:
    """The GraphAppCredential a Secret belongs to."""

    name: str
    namespace: str
    uid: str


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": owner.name, "uid": owner.uid,
            "controller": True, "blockOwnerDeletion": True}


def render(name: str, owner: Owner, access_token: str, expires_on: dt.datetime) -> dict[str, Any]:
    """The whole token Secret as the API expects it (data base64-encoded)."""
    expiry = rfc3339(expires_on)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY},
            "annotations": {CREDENTIAL_ANNOTATION: owner.name, EXPIRES_ON_ANNOTATION: expiry},
            "ownerReferences": [owner_reference(owner)],
        },
        "data": {
            "access_token": _b64(access_token),
            "token_type": _b64("Bearer"),
            "expires_on": _b64(expiry),
            "authorization": _b64(f"Bearer {access_token}"),
        },
    }


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
