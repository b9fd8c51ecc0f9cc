"""Kubernetes API I/O for the reconciler: Secrets, ServiceAccounts (and their tokens, for workload identity), the
GraphAppCredential status, Events, and the workloads restarted for a new token. Blocking; run in threads.

Raw JSON instead of the client's model classes, through the client's ApiClient but not its generated API methods
(`Kube`): cheaper per call, and Secret data is read, used and dropped without lingering model objects.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar, cast

import urllib3
from kubernetes import client
from kubernetes.client import rest

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


MERGE_PATCH = "application/merge-patch+json"
_FIELD_MANAGER = {"fieldManager": FIELD_MANAGER}
_SECRETS = "/api/v1/namespaces/{namespace}/secrets"
_SECRET = _SECRETS + "/{name}"
_EVENTS = "/api/v1/namespaces/{namespace}/events"
_EVENT = _EVENTS + "/{name}"
_SERVICE_ACCOUNT = "/api/v1/namespaces/{namespace}/serviceaccounts/{name}"
_CREDENTIAL_STATUS = f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{PLURAL}/{{name}}/status"
_APP = f"/apis/{GROUP}/{VERSION}/{APP_PLURAL}/{{name}}"
_WORKLOAD = "/apis/apps/v1/namespaces/{namespace}/{plural}/{name}"
_WORKLOADS = {"Deployment": "deployments", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets",
              "ReplicaSet": "replicasets"}


class Kube:
    """The Kubernetes API calls of the passes, the Event recorder and the consumer reports; blocking (run them in
    threads).

    Each call asks for raw JSON, with the timeout, and hands its connection back; an answer graphcred expects is a
    return value (a Secret that does not exist is None, a stale write a `Conflict`, the GraphAppCredential gone a
    `Gone`), and any other failure a `KubeError` (graphcred.kube.errors) naming the call and its HTTP status. Nothing
    of the kubernetes client or urllib3 escapes, and no error carries a response body.

    The requests go through the client's `ApiClient` (its configuration, authentication with token refresh, TLS and
    connection pool) but not its generated API methods: those validate every argument with pydantic and wrap every
    answer, a fifth of the CPU of each call (py-spy, `bench scale`), for paths graphcred knows."""

    def __init__(self, api: client.ApiClient, timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        self.api = api
        self.timeout = timeout

    def prepare(self, method: str, path: str, params: dict[str, str], *, query: dict[str, str] | None = None,
                body: Any = None, content_type: str = "application/json") -> tuple[str, dict[str, str], bytes | None]:
        """A request's URL, headers (the bearer token refreshed by the client's hook, if it has one) and body, by
        the client's `ApiClient.param_serialize`; `LoopKube` sends them too."""
        _, url, headers, _, _ = self.api.param_serialize(
            method, path, path_params=params, query_params=list((query or {}).items()),
            header_params={"Accept": "application/json",
                           **({"Content-Type": content_type} if body is not None else {})},
            auth_settings=["BearerToken"])
        return url, headers, json.dumps(body).encode() if body is not None else None

    def _send(self, method: str, path: str, params: dict[str, str], *, query: dict[str, str] | None = None,
              body: Any = None, content_type: str = "application/json") -> Any:
        """One request; the raw urllib3 response of a 2xx answer, an ApiException for any other.

        The client's `ApiClient.param_serialize` builds it (the server, the bearer token with its refresh hook) and
        its connection pool sends it (TLS, client certificates, urllib3's retry), as `call_api` would, without the
        client's per-request layers (argument checks, a copy of the headers, the response wrapper)."""
        url, headers, payload = self.prepare(method, path, params, query=query, body=body, content_type=content_type)
        try:
            resp = self.api.rest_client.pool_manager.urlopen(
                method, url, body=payload, headers=headers,
                timeout=urllib3.Timeout(connect=self.timeout[0], read=self.timeout[1]), preload_content=False)
        except urllib3.exceptions.SSLError as exc:  # as the client reports a failed handshake: its status 0
            raise client.ApiException(status=0, reason=type(exc).__name__) from exc
        if not 200 <= resp.status <= 299:
            refused(rest.RESTResponse(resp))
        return resp

    def _call(self, what: str, method: str, path: str, params: dict[str, str], *, parse: Callable[[bytes], T],
              **kwargs: Any) -> T:
        """One API call, `what` in errors ("read Secret"): raw JSON, the timeout, the body read whole and the
        connection released, the answer `parse`d; every failure translated to a KubeError."""
        try:
            resp = self._send(method, path, params, **kwargs)
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
        return self._read("read Secret", _SECRET, {"namespace": namespace, "name": name})

    def read_service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read("read ServiceAccount", _SERVICE_ACCOUNT, {"namespace": namespace, "name": name})

    def _read(self, what: str, path: str, params: dict[str, str]) -> dict[str, Any] | None:
        """An object as JSON, None if it does not exist."""
        try:
            return self._call(what, "GET", path, params, parse=_object)
        except NotFound:
            return None

    def request_service_account_token(self, namespace: str, name: str, audience: str) -> str:
        """A new token of the ServiceAccount for `audience` (TokenRequest API), bound to no object, valid for the
        shortest time allowed. The caller uses it at once and drops it; errors carry no token."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": [audience], "expirationSeconds": SERVICE_ACCOUNT_TOKEN_SECONDS}}
        return self._call("create ServiceAccount token", "POST", _SERVICE_ACCOUNT + "/token",
                          {"namespace": namespace, "name": name}, body=body, parse=_token)

    def create_secret(self, namespace: str, body: dict[str, Any]) -> str:
        """Create only if absent (else Conflict). Returns the new resourceVersion."""
        return self._call("create Secret", "POST", _SECRETS, {"namespace": namespace}, body=body,
                          query=_FIELD_MANAGER, parse=_resource_version)

    def patch_secret(self, namespace: str, name: str, patch: dict[str, Any]) -> str:
        """A JSON merge patch: it changes the keys it names and nothing else (others' labels, annotations,
        finalizers and keys stay). `patch` carries metadata.resourceVersion, so it applies only if the Secret is
        unchanged since (else Conflict, also if it is gone). Returns the new resourceVersion."""
        try:
            return self._call("patch Secret", "PATCH", _SECRET, {"namespace": namespace, "name": name}, body=patch,
                              query=_FIELD_MANAGER, content_type=MERGE_PATCH, parse=_resource_version)
        except NotFound as exc:
            raise Conflict(exc.call, exc.status, exc.reason) from exc

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch the GraphAppCredential's status; Gone if it no longer exists."""
        # A JSON merge patch replaces lists whole, which is what conditions need here.
        try:
            self._call("patch GraphAppCredential status", "PATCH", _CREDENTIAL_STATUS,
                       {"namespace": namespace, "name": name}, body={"status": status}, content_type=MERGE_PATCH,
                       parse=_nothing)
        except NotFound as exc:
            raise Gone(exc.call, exc.status, exc.reason) from exc

    def read_cluster_app(self, name: str) -> dict[str, Any] | None:
        """A ClusterGraphApp as JSON, None if it does not exist."""
        return self._read("read ClusterGraphApp", _APP, {"name": name})

    def read_namespace(self, name: str) -> dict[str, Any] | None:
        """A Namespace as JSON (its labels are what an app's policy selects on), None if it does not exist."""
        return self._read("read Namespace", "/api/v1/namespaces/{name}", {"name": name})

    def patch_app_status(self, name: str, status: dict[str, Any]) -> None:
        """Merge-patch a ClusterGraphApp's status; Gone if it no longer exists."""
        try:
            self._call("patch ClusterGraphApp status", "PATCH", _APP + "/status", {"name": name},
                       body={"status": status}, content_type=MERGE_PATCH, parse=_nothing)
        except NotFound as exc:
            raise Gone(exc.call, exc.status, exc.reason) from exc

    # --- restart targets: Deployments, StatefulSets, DaemonSets (and a ReplicaSet's owner)
    def read_workload(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A Deployment, StatefulSet, DaemonSet or ReplicaSet as JSON, None if it does not exist."""
        return self._read(f"read {kind}", _WORKLOAD, {"namespace": namespace, "plural": _WORKLOADS[kind],
                                                      "name": name})

    def patch_workload(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        """Merge-patch a workload (its pod template's annotations); the workload as patched, None if it does not
        exist."""
        try:
            return self._call(f"patch {kind}", "PATCH", _WORKLOAD,
                              {"namespace": namespace, "plural": _WORKLOADS[kind], "name": name}, body=patch,
                              query=_FIELD_MANAGER, content_type=MERGE_PATCH, parse=_object)
        except NotFound:
            return None

    def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        self._call("create Event", "POST", _EVENTS, {"namespace": namespace}, body=body, parse=_nothing)

    def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> bool:
        """Merge-patch an Event; False if it no longer exists (the apiserver drops Events after --event-ttl)."""
        try:
            self._call("patch Event", "PATCH", _EVENT, {"namespace": namespace, "name": name}, body=patch,
                       content_type=MERGE_PATCH, parse=_nothing)
        except NotFound:
            return False
        return True

    def delete_secret(self, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete a Secret, only the very one that was read (uid precondition); gone already is fine."""
        try:
            self._delete_secret(namespace, name, {"uid": uid} if uid else None)
        except (NotFound, Conflict):
            return

    def delete_secret_unchanged(self, namespace: str, name: str, uid: str, resource_version: str) -> None:
        """Delete a Secret only if it is still the very one read, unchanged (Conflict otherwise); gone is fine."""
        try:
            self._delete_secret(namespace, name, {"uid": uid, "resourceVersion": resource_version})
        except NotFound:
            return

    def _delete_secret(self, namespace: str, name: str, preconditions: dict[str, str] | None) -> None:
        self._call("delete Secret", "DELETE", _SECRET, {"namespace": namespace, "name": name},
                   body=delete_options(preconditions), parse=_nothing)


def refused(answer: rest.RESTResponse) -> NoReturn:
    """Raise the client's ApiException for an answer other than 2xx, read to its end (its connection goes back to
    the pool): its status and reason, never its body."""
    answer.read()  # type: ignore[no-untyped-call]
    raise client.ApiException.from_response(http_resp=answer, body=None, data=None)


def delete_options(preconditions: dict[str, str] | None) -> dict[str, Any] | None:
    """The body of a delete that applies only to the very object read (uid, resourceVersion); None: no condition."""
    return {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": preconditions} if preconditions else None
