"""What a reconcile pass needs of the world outside, as Protocols: the Kubernetes calls, the token endpoint, the
Event sink and what the Secret watch knows. `kube.calls.Kube`, `acquire.tokens.TokenClient`,
`kube.events.EventRecorder` and `kube.metawatch.Directory` are the production implementations (the wiring passes
them); unit tests pass in-memory ones. The methods are called in threads (`run_blocking`), except the Event sink
and the directory, which are called on the event loop and must not block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from graphcred.acquire.credentials import Material
from graphcred.acquire.tokens import Token
from graphcred.api.model import AppIdentity
from graphcred.kube.metawatch import Seen


class StatusPort(Protocol):
    """Writes a GraphAppCredential's status (the reconciler's, and the consumer reports' one field)."""

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch the status; raises `Gone` if the object no longer exists."""


class WorkloadPort(StatusPort, Protocol):
    """The restarter's calls (restart targets): a workload read and merge-patched, and the status's restarts."""

    def read_workload(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    def patch_workload(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        """Merge-patch a Deployment, StatefulSet or DaemonSet; the workload as patched, None if it does not exist."""


class KubePort(WorkloadPort, Protocol):
    """The Kubernetes calls of a pass: the credential Secret or ServiceAccount read, the token Secret written, the
    status patched. Expected answers are results (None: absent) or `Conflict` / `Gone`; anything else is a
    `KubeError` (graphcred.kube.errors) naming the call."""

    def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def read_service_account(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def request_service_account_token(self, namespace: str, name: str, audience: str) -> str: ...

    def create_secret(self, namespace: str, body: dict[str, Any]) -> str:
        """Create if absent (else `Conflict`); returns the new resourceVersion."""

    def patch_secret(self, namespace: str, name: str, patch: dict[str, Any]) -> str:
        """A merge patch guarded by the resourceVersion it carries (else `Conflict`); returns the new one."""

    def delete_secret(self, namespace: str, name: str, uid: str | None = None) -> None: ...

    def delete_secret_unchanged(self, namespace: str, name: str, uid: str, resource_version: str) -> None:
        """Delete only the very Secret read, unchanged since (else `Conflict`); gone already is fine."""

    def read_cluster_app(self, name: str) -> dict[str, Any] | None: ...

    def read_namespace(self, name: str) -> dict[str, Any] | None: ...

    def patch_app_status(self, name: str, status: dict[str, Any]) -> None:
        """Merge-patch a ClusterGraphApp's status; raises `Gone` if it no longer exists."""


class TokenPort(Protocol):
    """The token endpoint: one acquisition with the credential's material (blocking; raises AcquisitionError)."""

    def acquire(self, identity: AppIdentity, scopes: Sequence[str], material: Material) -> Token: ...


class EventSink(Protocol):
    """Where a pass's Events go: queued at once, posted elsewhere (never blocks, never raises)."""

    def __call__(self, obj: dict[str, Any], type: str, reason: str, message: str) -> None: ...  # noqa: A002


class SecretDirectory(Protocol):
    """What the Secret watch knows of one Secret: None while it has no whole list (then the Secret may exist)."""

    def lookup(self, namespace: str, name: str) -> Seen | None: ...
