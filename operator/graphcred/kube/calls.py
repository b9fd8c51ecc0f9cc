"""Kubernetes API I/O for the reconciler: Secrets, ServiceAccounts (and their tokens, for workload identity), the
GraphAppCredential status, Events, and the workloads restarted for a new token. Blocking; run in threads.

Raw JSON (`_preload_content=False`) instead of the client's model classes: cheaper per call, and Secret data is
read, used and dropped without lingering model objects.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any, TypeVar, cast

from kubernetes import client

from graphcred.api.keys import APP_PLURAL, FIELD_MANAGER, GROUP, PLURAL, VERSION
from graphcred.kube.errors import Conflict, Gone, NotFound, Unreadable, describe_failure, translated

__all__ = ["DEFAULT_TIMEOUT", "SERVICE_ACCOUNT_TOKEN_SECONDS", "Conflict", "Gone", "Kube", "describe_failure"]

T = TypeVar("T")

# (connect, read) seconds for every call: a half-open connection must fail the call, not hang its pass and slot
DEFAULT_TIMEOUT = (10.0, 30.0)
# The shortest lifetime the TokenRequest API accepts (its validation's MinTokenAgeSec, 10 minutes): a federated
# assertion is used once, at once, so it should be worth as little as possible if it ever leaked.
SERVICE_ACCOUNT_TOKEN_SECONDS = 600


def _body(resp: Any) -> bytes:
    """Read a raw response whole and hand its connection back to the pool. Without the release every call
    would open a new TLS connection (measured: a quarter of the operator's CPU went to handshakes)."""
    try:
        return cast(bytes, resp.data)
    finally:
        resp.release_conn()


def _object(data: bytes) -> dict[str, Any]:
    body = json.loads(data)
    if not isinstance(body, dict):
        raise TypeError("not an object")
    return body


def _resource_version(data: bytes) -> str:
    # only metadata is kept from the answer: it also echoes the Secret's data
    return str(_object(data)["metadata"]["resourceVersion"])


def _token(data: bytes) -> str:
    token = (_object(data).get("status") or {}).get("token")
    if not isinstance(token, str) or not token:
        raise ValueError("TokenRequest answered without a token")
    return token


def _nothing(data: bytes) -> None:
    return None


class Kube:
    """The Kubernetes API calls of the passes, the Event recorder and the consumer reports; blocking (run them in
    threads).

    Each call asks for raw JSON, with the timeout, and hands its connection back; an answer graphcred expects is a
    return value (a Secret that does not exist is None, a stale write a `Conflict`, the GraphAppCredential gone a
    `Gone`), and any other failure a `KubeError` (graphcred.kube.errors) naming the call and its HTTP status. Nothing
    of the kubernetes client or urllib3 escapes, and no error carries a response body."""

    def __init__(self, api: client.ApiClient, timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        self.api = api
        self.timeout = timeout
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, parse: Callable[[bytes], T], **kwargs: Any) -> T:
        """One API call, `what` in errors ("read Secret"): raw JSON, the timeout, the body read whole and the
        connection released, the answer `parse`d; every failure translated to a KubeError."""
        try:
            resp = fn(*args, _preload_content=False, _request_timeout=self.timeout, **kwargs)
            data = _body(resp)
        except Exception as exc:
            error = translated(what, exc)
            if error is None:
                raise
            raise error from exc
        with contextlib.suppress(ValueError, LookupError, TypeError, AttributeError):
            return parse(data)
        # raised here, not from the parser's exception: a JSONDecodeError holds the whole body
        raise Unreadable(what, int(resp.status))

    def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read("read Secret", self.core.read_namespaced_secret, namespace, name)

    def read_service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read("read ServiceAccount", self.core.read_namespaced_service_account, namespace, name)

    def _read(self, what: str, read: Callable[..., Any], namespace: str, name: str) -> dict[str, Any] | None:
        """A namespaced object as JSON, None if it does not exist."""
        try:
            return self._call(what, read, name, namespace, parse=_object)
        except NotFound:
            return None

    def request_service_account_token(self, namespace: str, name: str, audience: str) -> str:
        """A new token of the ServiceAccount for `audience` (TokenRequest API), bound to no object, valid for the
        shortest time allowed. The caller uses it at once and drops it; errors carry no token."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": [audience], "expirationSeconds": SERVICE_ACCOUNT_TOKEN_SECONDS}}
        return self._call("create ServiceAccount token", self.core.create_namespaced_service_account_token, name,
                          namespace, cast(Any, body), parse=_token)

    def create_secret(self, namespace: str, body: dict[str, Any]) -> str:
        """Create only if absent (else Conflict). Returns the new resourceVersion."""
        return self._call("create Secret", self.core.create_namespaced_secret, namespace, cast(Any, body),
                          field_manager=FIELD_MANAGER, parse=_resource_version)

    def patch_secret(self, namespace: str, name: str, patch: dict[str, Any]) -> str:
        """A JSON merge patch: it changes the keys it names and nothing else (others' labels, annotations,
        finalizers and keys stay). `patch` carries metadata.resourceVersion, so it applies only if the Secret is
        unchanged since (else Conflict, also if it is gone). Returns the new resourceVersion."""
        try:
            return self._call("patch Secret", self.core.patch_namespaced_secret, name, namespace, cast(Any, patch),
                              field_manager=FIELD_MANAGER, _content_type="application/merge-patch+json",
                              parse=_resource_version)
        except NotFound as exc:
            raise Conflict(exc.call, exc.status, exc.reason) from exc

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch the GraphAppCredential's status; Gone if it no longer exists."""
        # A JSON merge patch replaces lists whole, which is what conditions need here.
        try:
            self._call("patch GraphAppCredential status", self.custom.patch_namespaced_custom_object_status,
                       GROUP, VERSION, namespace, PLURAL, name, {"status": status},
                       _content_type="application/merge-patch+json", parse=_nothing)
        except NotFound as exc:
            raise Gone(exc.call, exc.status, exc.reason) from exc

    def read_cluster_app(self, name: str) -> dict[str, Any] | None:
        """A ClusterGraphApp as JSON, None if it does not exist."""
        try:
            return self._call("read ClusterGraphApp", self.custom.get_cluster_custom_object, GROUP, VERSION,
                              APP_PLURAL, name, parse=_object)
        except NotFound:
            return None

    def read_namespace(self, name: str) -> dict[str, Any] | None:
        """A Namespace as JSON (its labels are what an app's policy selects on), None if it does not exist."""
        try:
            return self._call("read Namespace", self.core.read_namespace, name, parse=_object)
        except NotFound:
            return None

    def patch_app_status(self, name: str, status: dict[str, Any]) -> None:
        """Merge-patch a ClusterGraphApp's status; Gone if it no longer exists."""
        try:
            self._call("patch ClusterGraphApp status", self.custom.patch_cluster_custom_object_status,
                       GROUP, VERSION, APP_PLURAL, name, {"status": status},
                       _content_type="application/merge-patch+json", parse=_nothing)
        except NotFound as exc:
            raise Gone(exc.call, exc.status, exc.reason) from exc

    # --- restart targets: Deployments, StatefulSets, DaemonSets (and a ReplicaSet's owner)
    def _workload_calls(self, kind: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
        reads = {"Deployment": (self.apps.read_namespaced_deployment, self.apps.patch_namespaced_deployment),
                 "StatefulSet": (self.apps.read_namespaced_stateful_set, self.apps.patch_namespaced_stateful_set),
                 "DaemonSet": (self.apps.read_namespaced_daemon_set, self.apps.patch_namespaced_daemon_set),
                 "ReplicaSet": (self.apps.read_namespaced_replica_set, self.apps.patch_namespaced_replica_set)}
        return reads[kind]

    def read_workload(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A Deployment, StatefulSet, DaemonSet or ReplicaSet as JSON, None if it does not exist."""
        return self._read(f"read {kind}", self._workload_calls(kind)[0], namespace, name)

    def patch_workload(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        """Merge-patch a workload (its pod template's annotations); the workload as patched, None if it does not
        exist."""
        try:
            return self._call(f"patch {kind}", self._workload_calls(kind)[1], name, namespace, cast(Any, patch),
                              field_manager=FIELD_MANAGER, _content_type="application/merge-patch+json",
                              parse=_object)
        except NotFound:
            return None

    def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        self._call("create Event", self.core.create_namespaced_event, namespace, cast(Any, body), parse=_nothing)

    def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> bool:
        """Merge-patch an Event; False if it no longer exists (the apiserver drops Events after --event-ttl)."""
        try:
            self._call("patch Event", self.core.patch_namespaced_event, name, namespace, patch,
                       _content_type="application/merge-patch+json", parse=_nothing)
        except NotFound:
            return False
        return True

    def delete_secret(self, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete a Secret, only the very one that was read (uid precondition); gone already is fine."""
        body = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid)) if uid else None
        try:
            self._call("delete Secret", self.core.delete_namespaced_secret, name, namespace, body=body,
                       parse=_nothing)
        except (NotFound, Conflict):
            return

    def delete_secret_unchanged(self, namespace: str, name: str, uid: str, resource_version: str) -> None:
        """Delete a Secret only if it is still the very one read, unchanged (Conflict otherwise); gone is fine."""
        body = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid, resource_version=resource_version))
        try:
            self._call("delete Secret", self.core.delete_namespaced_secret, name, namespace, body=body,
                       parse=_nothing)
        except NotFound:
            return
