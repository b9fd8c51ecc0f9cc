"""Kubernetes API I/O for the reconciler: Secrets, ServiceAccounts (and their tokens, for workload identity), the
GraphAppCredential status and Events. Blocking; run in threads.

Raw JSON (`_preload_content=False`) instead of the client's model classes: cheaper per call, and Secret data is
read, used and dropped without lingering model objects.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

from kubernetes import client

from graphcred.api.keys import FIELD_MANAGER, GROUP, PLURAL, VERSION


def _body(resp: Any) -> bytes:
    """Read a raw response whole and hand its connection back to the pool. Without the release every call
    would open a new TLS connection (measured: a quarter of the operator's CPU went to handshakes)."""
    try:
        return cast(bytes, resp.data)
    finally:
        resp.release_conn()


def _resource_version(resp: Any) -> str:
    # only metadata is kept from the answer: it also echoes the Secret's data
    return str(json.loads(_body(resp))["metadata"]["resourceVersion"])


def describe_failure(what: str, exc: BaseException) -> str:
    """What failed, for status and logs: the API call and its HTTP status, never a response body (those can echo
    Secret data)."""
    status, reason = getattr(exc, "status", None), getattr(exc, "reason", None)
    if isinstance(status, int):
        return f"{what} failed: HTTP {status}" + (f" {reason}" if isinstance(reason, str) and reason else "")
    return f"{what} failed: {type(exc).__name__}"


class Conflict(Exception):
    """The object changed or appeared under us (HTTP 409)."""


class Gone(Exception):
    """The GraphAppCredential no longer exists (HTTP 404 on its status): its worker must end, not re-create
    a Secret the garbage collector is deleting."""


# (connect, read) seconds for every call: a half-open connection must fail the call, not hang its pass and slot
DEFAULT_TIMEOUT = (10.0, 30.0)
# The shortest lifetime the TokenRequest API accepts (its validation's MinTokenAgeSec, 10 minutes): a federated
# assertion is used once, at once, so it should be worth as little as possible if it ever leaked.
SERVICE_ACCOUNT_TOKEN_SECONDS = 600


class Kube:
    def __init__(self, api: client.ApiClient, timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        self.api = api
        self.timeout = timeout
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read(self.core.read_namespaced_secret, namespace, name)

    def read_service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read(self.core.read_namespaced_service_account, namespace, name)

    def _read(self, read: Callable[..., Any], namespace: str, name: str) -> dict[str, Any] | None:
        """A namespaced object as JSON, None if it does not exist."""
        try:
            resp = read(name, namespace, _preload_content=False, _request_timeout=self.timeout)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        body: dict[str, Any] = json.loads(_body(resp))
        return body

    def request_service_account_token(self, namespace: str, name: str, audience: str) -> str:
        """A new token of the ServiceAccount for `audience` (TokenRequest API), bound to no object, valid for the
        shortest time allowed. The caller uses it at once and drops it; errors (ApiException) carry no token."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": [audience], "expirationSeconds": SERVICE_ACCOUNT_TOKEN_SECONDS}}
        resp = self.core.create_namespaced_service_account_token(name, namespace, cast(Any, body),
                                                                 _preload_content=False,
                                                                 _request_timeout=self.timeout)
        answer = json.loads(_body(resp))
        token = (answer.get("status") or {}).get("token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise ValueError("TokenRequest answered without a token")
        return token

    def create_secret(self, namespace: str, body: dict[str, Any]) -> str:
        """Create only if absent (else Conflict). Returns the new resourceVersion."""
        try:
            resp = self.core.create_namespaced_secret(namespace, cast(Any, body), field_manager=FIELD_MANAGER,
                                                     _preload_content=False, _request_timeout=self.timeout)
        except client.ApiException as exc:
            if exc.status == 409:
                raise Conflict(body["metadata"]["name"]) from None
            raise
        return _resource_version(resp)

    def patch_secret(self, namespace: str, name: str, patch: dict[str, Any]) -> str:
        """A JSON merge patch: it changes the keys it names and nothing else (others' labels, annotations,
        finalizers and keys stay). `patch` carries metadata.resourceVersion, so it applies only if the Secret is
        unchanged since (else Conflict, also if it is gone). Returns the new resourceVersion."""
        try:
            resp = self.core.patch_namespaced_secret(name, namespace, cast(Any, patch), field_manager=FIELD_MANAGER,
                                                    _content_type="application/merge-patch+json",
                                                    _preload_content=False, _request_timeout=self.timeout)
        except client.ApiException as exc:
            if exc.status in (409, 404):
                raise Conflict(name) from None
            raise
        return _resource_version(resp)

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        # A JSON merge patch replaces lists whole, which is what conditions need here.
        try:
            _body(self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": status}, _preload_content=False,
                _content_type="application/merge-patch+json", _request_timeout=self.timeout))
        except client.ApiException as exc:
            if exc.status == 404:
                raise Gone(f"{namespace}/{name}") from None
            raise

    def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        _body(self.core.create_namespaced_event(namespace, cast(Any, body), _preload_content=False,
                                                _request_timeout=self.timeout))

    def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> bool:
        """Merge-patch an Event; False if it no longer exists (the apiserver drops Events after --event-ttl)."""
        try:
            _body(self.core.patch_namespaced_event(name, namespace, patch, _preload_content=False,
                                                   _content_type="application/merge-patch+json",
                                                   _request_timeout=self.timeout))
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def delete_secret(self, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete a Secret, only the very one that was read (uid precondition); gone already is fine."""
        body = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid)) if uid else None
        try:
            _body(self.core.delete_namespaced_secret(name, namespace, body=body, _preload_content=False,
                                                     _request_timeout=self.timeout))
        except client.ApiException as exc:
            if exc.status in (404, 409):
                return
            raise

    def delete_secret_unchanged(self, namespace: str, name: str, uid: str, resource_version: str) -> None:
        """Delete a Secret only if it is still the very one read, unchanged (Conflict otherwise); gone is fine."""
        body = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid, resource_version=resource_version))
        try:
            _body(self.core.delete_namespaced_secret(name, namespace, body=body, _preload_content=False,
                                                     _request_timeout=self.timeout))
        except client.ApiException as exc:
            if exc.status == 404:
                return
            if exc.status == 409:
                raise Conflict(name) from None
            raise
