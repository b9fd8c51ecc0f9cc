"""How `graphcred run` is configured: flags, each also settable by environment variable (for the chart)."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

from graphcred.kube.connect import in_cluster

TERMINATION_LOG = Path("/dev/termination-log")  # the kubelet shows it as the container's termination message


@dataclass(frozen=True)
class RunConfig:
    kubeconfig: str | None = None
    namespaces: tuple[str, ...] = field(default_factory=tuple)  # empty: all namespaces
    ca_bundle: str | None = None
    log_format: str = "text"
    log_level: str = "INFO"
    token_concurrency: int = 16
    token_timeout: float = 30.0  # seconds to wait for the token endpoint's answer
    api_concurrency: int = 16
    api_timeout: float = 30.0  # seconds to wait for the Kubernetes API's answer to one call
    metrics_port: int = 8080  # /metrics, /healthz, /readyz; -1 disables
    leader_election: bool = False
    leader_election_namespace: str = "default"
    leader_election_name: str = "graphcred-leader"
    lease_seconds: float = 15.0
    # workload identity federation: read and watch ServiceAccounts, request their tokens (needs that RBAC)
    workload_identity: bool = False
    # authority hosts (https://host[:port]) besides the clouds' own login hosts that credentials may name
    authority_hosts: tuple[str, ...] = field(default_factory=tuple)
    # the same, from the older --workload-identity-authority (an alias: its hosts are allowed for every credential)
    workload_identity_authorities: tuple[str, ...] = field(default_factory=tuple)
    # watch pods for consumers of token Secrets that never see a refresh (subPath, env, envFrom; needs that RBAC)
    watch_consumers: bool = False
    # where ClusterGraphApps' Secrets and ServiceAccounts live (the operator's own namespace in a pod)
    cluster_resource_namespace: str = "graphcred-system"
    # Microsoft Graph for certificate rotation (addKey/removeKey), instead of the credential's cloud's own: for a
    # private Graph-protocol endpoint (the test bed's). The admin's choice: never a tenant's.
    graph_endpoint: str | None = None

    @property
    def allowed_authorities(self) -> tuple[str, ...]:
        """Every host an admin allowed, through either flag."""
        return (*self.authority_hosts, *self.workload_identity_authorities)

    @property
    def api_timeouts(self) -> tuple[float, float]:
        """(connect, read) for every Kubernetes call; connecting never needs longer than 10 s."""
        return min(10.0, self.api_timeout), self.api_timeout

    @staticmethod
    def in_cluster() -> bool:
        return in_cluster()


def startup_failed(message: str, code: int, prog: str = "graphcred run") -> int:
    """Why `graphcred run` cannot start, on stderr and in the termination message; the exit code to return."""
    line = f"{prog}: error: {message}"
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    if TERMINATION_LOG.exists():
        with contextlib.suppress(OSError), TERMINATION_LOG.open("a") as log:
            log.write(line + "\n")
    return code
