"""What a pass is handed and works on: the object as last seen (`Snapshot`), and the token Secret as far as writing
it needs (`Target`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphcred.api.keys import API_VERSION, KIND
from graphcred.tokensecret.render import Owner


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
    """The token Secret as far as writing it needs. `secret`: as read (metadata, type, data); None when the read was
    skipped: this process wrote it last, or the Secret watch saw it controlled by this credential with the expiry
    `expires_on` (after a restart). A change by anyone since then surfaces as a Conflict on the next write."""

    resource_version: str
    secret: dict[str, Any] | None
    expires_on: str | None = None  # the expires-on annotation the Secret watch saw (skipped reads after a restart)

    @classmethod
    def read(cls, secret: dict[str, Any] | None) -> Target | None:
        return cls(str(secret["metadata"]["resourceVersion"]), secret) if secret is not None else None
