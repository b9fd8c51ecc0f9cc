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
class Reads:
    """How a pass reads an app or a namespace the watches have not reported (blocking calls in threads)."""

    app: Callable[[str], Awaitable[dict[str, Any] | None]]
    namespace: Callable[[str], Awaitable[dict[str, Any] | None]]


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
        # reads on a miss in flight, shared (after a restart, a namespace's hundred credentials make one read),
        # with the count of the watch's reports of the object when the read began
        self._reading: dict[tuple[str, str], tuple[asyncio.Future[dict[str, Any] | None], int]] = {}
        # how many times the watch reported each app or namespace: a read on a miss that the watch overtook (the
        # app deleted while it was read) is older than what the watch said, and is not stored
        self._reported: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        return len(self._apps)

    # --- fed by the watches ------------------------------------------------------------------------------------
    def app_seen(self, body: Mapping[str, Any]) -> bool:
        """An app was listed, added or modified; whether its spec (or its very object) changed. One being deleted
        (a deletionTimestamp, waiting for finalizers) is gone already."""
        app = App.of(body)
        self._bump(("app", app.name))
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            return self._apps.pop(app.name, None) is not None
        before = self._apps.get(app.name)
        self._apps[app.name] = app
        return before is None or (before.uid, before.generation) != (app.uid, app.generation)

    def app_gone(self, name: str) -> None:
        self._bump(("app", name))
        self._apps.pop(name, None)
        self._forget_reports(("app", name))

    def namespace_seen(self, name: str, labels: Mapping[str, str]) -> bool:
        """A namespace was listed, added or modified; whether its labels changed."""
        self._bump(("namespace", name))
        before = self._labels.get(name)
        self._labels[name] = dict(labels)
        return before != labels

    def namespace_gone(self, name: str) -> None:
        self._bump(("namespace", name))
        self._labels.pop(name, None)
        self._forget_reports(("namespace", name))

    def _bump(self, key: tuple[str, str]) -> None:
        self._reported[key] = self._reported.get(key, 0) + 1

    def _forget_reports(self, key: tuple[str, str]) -> None:
        """An object gone: its count goes too (namespaces come and go), unless a read began before (it must see
        that the watch reported the object meanwhile)."""
        if key not in self._reading:
            self._reported.pop(key, None)

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
    async def resolve(self, namespace: str, spec: GraphAppCredentialSpec, read: Reads) -> Resolved:
        """The app a credential in `namespace` names, if it may use it; else the Failure it reports. No token is
        requested for a refused credential, and nothing of the app's material is read."""
        assert spec.app_ref is not None
        name = spec.app_ref.name
        app = await self._find_app(name, read)
        if app is None:
            raise Failure(Reason.APP_NOT_FOUND, f"ClusterGraphApp {name} not found: ask a cluster admin to "
                          "create it, or check spec.appRef.name", retry=Retry.NEEDS_USER)
        if app.spec is None:
            raise Failure(Reason.INVALID_SPEC, f"ClusterGraphApp {name} is invalid: {app.problem}",
                          retry=Retry.NEEDS_USER)
        labels = await self._find_labels(namespace, read)
        if labels is None:  # being deleted with everything in it; nothing to permit
            raise Failure(Reason.NOT_PERMITTED, f"namespace {namespace} not found", retry=Retry.NEEDS_USER)
        refusal = app.spec.policy.refusal(namespace, labels, spec.scopes)
        if refusal is not None:
            raise Failure(Reason.NOT_PERMITTED, f"ClusterGraphApp {name} does not permit this credential: "
                          f"{refusal}", retry=Retry.NEEDS_USER)
        return Resolved(app, app.spec, self.namespace)

    async def still_holds(self, namespace: str, name: str, audience: str | None, read: Reads) -> str | None:
        """A token of app `name` for `audience` is in a credential's Secret, but its spec no longer names that app
        (or cannot be read): why the token may not stay, if the app would not permit it now; None if it would.
        An app whose own spec is invalid takes nobody's token away (an admin's typo must not revoke every user)."""
        app = await self._find_app(name, read)
        if app is None:
            return f"ClusterGraphApp {name}, whose token the Secret holds, no longer exists"
        if app.spec is None:
            return None
        labels = await self._find_labels(namespace, read)
        if labels is None or not app.spec.policy.namespace_selector.selects(labels):
            return f"ClusterGraphApp {name}, whose token the Secret holds, no longer selects namespace {namespace}"
        resources = {s.removesuffix("/.default").rstrip("/") for s in app.spec.policy.allowed_scopes}
        if audience is None or audience.rstrip("/") not in resources:
            return f"ClusterGraphApp {name}, whose token the Secret holds, no longer allows its audience"
        return None

    async def _find_app(self, name: str, read: Reads) -> App | None:
        """The app as the watch reported it, else as read now (a read the watch overtook is not stored)."""
        app = self._apps.get(name)
        if app is None:
            body, overtaken = await self._once(("app", name), read.app)
            if not overtaken and body is not None:
                self.app_seen(body)
            app = self._apps.get(name)  # the read, or what the watch reported meanwhile (newer than the read)
        return app

    async def _find_labels(self, namespace: str, read: Reads) -> dict[str, str] | None:
        labels = self._labels.get(namespace)
        if labels is None:
            body, overtaken = await self._once(("namespace", namespace), read.namespace)
            if not overtaken and body is not None:
                self._labels[namespace] = labels_of(body)
            labels = self._labels.get(namespace)
        return labels

    async def _once(self, key: tuple[str, str], read: Callable[[str], Awaitable[dict[str, Any] | None]]
                    ) -> tuple[dict[str, Any] | None, bool]:
        """One read of an app or a namespace, whoever else asks for it meanwhile; and whether the watch reported
        the object after the read began (then the read may be older than the cache, and must not replace it)."""
        reading = self._reading.get(key)
        if reading is None:
            future: asyncio.Future[dict[str, Any] | None] = asyncio.ensure_future(read(key[1]))
            future.add_done_callback(lambda f: f.cancelled() or f.exception())  # no "never retrieved" warning
            reading = self._reading[key] = (future, self._reported.get(key, 0))

            def done(f: asyncio.Future[dict[str, Any] | None]) -> None:
                if self._reading.get(key, (None, 0))[0] is f:
                    del self._reading[key]

            future.add_done_callback(done)
        future, reported = reading
        body = await asyncio.shield(future)
        return body, self._reported.get(key, 0) != reported

    def permits(self, namespace: str, spec: GraphAppCredentialSpec, resolved: Resolved) -> str | None:
        """Checked again just before a token is written: why the credential may no longer use the app (its policy
        or the namespace's labels changed, the app was deleted or re-created while the token was requested)."""
        assert spec.app_ref is not None
        app = self._apps.get(spec.app_ref.name)
        if app is None or app.spec is None or app.uid != resolved.app.uid:
            return f"ClusterGraphApp {spec.app_ref.name} changed while the token was requested"
        labels = self._labels.get(namespace)
        if labels is None:
            return f"namespace {namespace} not found"
        refusal = app.spec.policy.refusal(namespace, labels, spec.scopes)
        return f"ClusterGraphApp {app.name} does not permit this credential: {refusal}" if refusal else None
