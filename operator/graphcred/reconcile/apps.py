"""ClusterGraphApps and the namespaces their policies select on, as a pass consults them for an appRef.

The watches (ClusterGraphApps and Namespaces, through kopf) keep the `ClusterApps` registry current and say whom a
change concerns; a pass that finds an app or a namespace the watches have not reported yet (just after a start, or
a leader change) reads it directly, so that no credential is refused, and no token Secret deleted, for want of an
event. `resolve` is the one place a credential's appRef becomes an identity: the app found, its spec valid, its
policy permitting this namespace and these scopes; every other end is a `Failure` with the reason users see.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from graphcred.api.failures import Failure
from graphcred.api.model import ClusterGraphAppSpec, GraphAppCredentialSpec, Reason
from graphcred.reconcile.outcome import spec_error_message
from graphcred.reconcile.policy import Retry

# where a ClusterGraphApp's Secret or ServiceAccount lives when the operator is not told (nor runs in a pod)
DEFAULT_CLUSTER_RESOURCE_NAMESPACE = "graphcred-system"


@dataclass(frozen=True)
class App:
    """One ClusterGraphApp as last seen: its spec, or why it is invalid."""

    name: str
    uid: str
    generation: int
    spec: ClusterGraphAppSpec | None
    problem: str | None = None

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> App:
        meta = body.get("metadata") or {}
        name = str(meta.get("name") or "")
        try:
            spec: ClusterGraphAppSpec | None = ClusterGraphAppSpec.model_validate(body.get("spec") or {})
            problem = None
        except ValidationError as exc:
            spec, problem = None, spec_error_message(exc)
        return cls(name, str(meta.get("uid") or ""), int(meta.get("generation") or 1), spec, problem)


@dataclass(frozen=True)
class Resolved:
    """What an appRef resolved to: the app, and the namespace its credential material lives in."""

    app: App
    spec: ClusterGraphAppSpec
    namespace: str


def labels_of(body: Mapping[str, Any]) -> dict[str, str]:
    labels = (body.get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {}


class ClusterApps:
    """What the watches reported of ClusterGraphApps and Namespaces. `namespace`: the cluster resource namespace,
    where every app's Secret or ServiceAccount lives. Bookkeeping only; reads on a miss go through `read_app` and
    `read_namespace` (blocking calls run by the pass)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._apps: dict[str, App] = {}
        self._labels: dict[str, dict[str, str]] = {}
        # reads on a miss in flight, shared: after a restart, a namespace's hundred credentials make one read
        self._reading: dict[tuple[str, str], asyncio.Future[dict[str, Any] | None]] = {}

    def __len__(self) -> int:
        return len(self._apps)

    # --- fed by the watches ------------------------------------------------------------------------------------
    def app_seen(self, body: Mapping[str, Any]) -> bool:
        """An app was listed, added or modified; whether its spec (or its very object) changed."""
        app = App.of(body)
        before = self._apps.get(app.name)
        self._apps[app.name] = app
        return before is None or (before.uid, before.generation) != (app.uid, app.generation)

    def app_gone(self, name: str) -> None:
        self._apps.pop(name, None)

    def namespace_seen(self, name: str, labels: Mapping[str, str]) -> bool:
        """A namespace was listed, added or modified; whether its labels changed."""
        before = self._labels.get(name)
        self._labels[name] = dict(labels)
        return before != labels

    def namespace_gone(self, name: str) -> None:
        self._labels.pop(name, None)

    def app(self, name: str) -> App | None:
        return self._apps.get(name)

    def apps(self) -> list[App]:
        return list(self._apps.values())

    def secret_of(self, name: str) -> str | None:
        """The credential Secret (in `namespace`) the app names, if it is known and reads one."""
        app = self._apps.get(name)
        return app.spec.credential.secret_name if app is not None and app.spec is not None else None

    def account_of(self, name: str) -> str | None:
        app = self._apps.get(name)
        ref = app.spec.credential.workload_identity if app is not None and app.spec is not None else None
        return ref.service_account_name if ref is not None else None

    # --- for a pass ----------------------------------------------------------------------------------------------
    async def resolve(self, namespace: str, spec: GraphAppCredentialSpec,
                      read_app: Callable[[str], Awaitable[dict[str, Any] | None]],
                      read_namespace: Callable[[str], Awaitable[dict[str, Any] | None]]) -> Resolved:
        """The app a credential in `namespace` names, if it may use it; else the Failure it reports. No token is
        requested for a refused credential, and nothing of the app's material is read."""
        assert spec.app_ref is not None
        name = spec.app_ref.name
        app = self._apps.get(name)
        if app is None:
            body = await self._once(("app", name), read_app)
            app = self._apps.get(name)  # reported by the watch meanwhile: newer than the read
        if app is None:
            if body is None:
                raise Failure(Reason.APP_NOT_FOUND, f"ClusterGraphApp {name} not found: ask a cluster admin to "
                              "create it, or check spec.appRef.name", retry=Retry.NEEDS_USER)
            self.app_seen(body)
            app = self._apps[name]
        if app.spec is None:
            raise Failure(Reason.INVALID_SPEC, f"ClusterGraphApp {name} is invalid: {app.problem}",
                          retry=Retry.NEEDS_USER)
        labels = self._labels.get(namespace)
        if labels is None:
            body = await self._once(("namespace", namespace), read_namespace)
            labels = self._labels.get(namespace)  # reported by the watch meanwhile: newer than the read
        if labels is None:
            if body is None:  # being deleted with everything in it; nothing to permit
                raise Failure(Reason.NOT_PERMITTED, f"namespace {namespace} not found", retry=Retry.NEEDS_USER)
            labels = labels_of(body)
            self._labels[namespace] = labels
        refusal = app.spec.policy.refusal(namespace, labels, spec.scopes)
        if refusal is not None:
            raise Failure(Reason.NOT_PERMITTED, f"ClusterGraphApp {name} does not permit this credential: "
                          f"{refusal}", retry=Retry.NEEDS_USER)
        return Resolved(app, app.spec, self.namespace)

    async def _once(self, key: tuple[str, str], read: Callable[[str], Awaitable[dict[str, Any] | None]]
                    ) -> dict[str, Any] | None:
        """One read of an app or a namespace, whoever else asks for it meanwhile."""
        future = self._reading.get(key)
        if future is None:
            future = asyncio.ensure_future(read(key[1]))
            future.add_done_callback(lambda f: f.cancelled() or f.exception())  # no "never retrieved" warning
            self._reading[key] = future
            future.add_done_callback(lambda f: self._reading.pop(key, None) if self._reading.get(key) is f else None)
        return await asyncio.shield(future)

    def permits(self, namespace: str, spec: GraphAppCredentialSpec, resolved: Resolved) -> str | None:
        """Checked again just before a token is written: why the credential may no longer use the app (its policy
        or the namespace's labels changed, the app was deleted or re-created while the token was requested)."""
        assert spec.app_ref is not None
        app = self._apps.get(spec.app_ref.name)
        if app is None or app.spec is None or app.uid != resolved.app.uid:
            return f"ClusterGraphApp {spec.app_ref.name} changed while the token was requested"
        refusal = app.spec.policy.refusal(namespace, self._labels.get(namespace, {}), spec.scopes)
        return f"ClusterGraphApp {app.name} does not permit this credential: {refusal}" if refusal else None
