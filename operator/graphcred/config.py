"""How `graphcred run` is configured: flags, each also settable by environment variable (for the chart)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
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
        return os.path.exists(os.path.join(SERVICE_ACCOUNT_DIR, "token")) and "KUBERNETES_SERVICE_HOST" in os.environ


def in_cluster_server(environ: Mapping[str, str]) -> str | None:
    """The apiserver's URL as a pod finds it: the `kubernetes` Service's address from the environment the kubelet
    sets, as client-go and the kubernetes client do. Not the DNS name kubernetes.default.svc (kopf's own default):
    that needs cluster DNS, and graphcred must not lose its watches while CoreDNS is down or in a cluster without
    it (found on the bed's node, which has none)."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST", ""), environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def kubeconfig_source(kubeconfig: str | None) -> str:
    """Where the Kubernetes client reads its configuration from, as a user would name it."""
    if kubeconfig:
        return f"kubeconfig {kubeconfig}"
    if os.environ.get("KUBECONFIG"):
        return f"kubeconfig {os.environ['KUBECONFIG']} ($KUBECONFIG)"
    if RunConfig.in_cluster() and not Path("~/.kube/config").expanduser().exists():
        return "the pod's ServiceAccount (in-cluster config)"
    return f"kubeconfig {Path('~/.kube/config').expanduser()}"


# What the kubernetes client raises for a missing, unreadable or malformed kubeconfig (its own ConfigException, an
# OSError, the YAML parser's error, or a lookup in a structure that is not the expected one).
def kubeconfig_errors() -> tuple[type[Exception], ...]:
    import yaml
    from kubernetes.config import ConfigException

    return ConfigException, yaml.YAMLError, OSError, ValueError, TypeError, KeyError, AttributeError


def kubeconfig_problem(exc: Exception) -> str:
    """The cause in words, on one line: the loader's message, or the YAML parser's (no class names)."""
    import yaml

    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"not valid YAML: {exc.problem or exc.context}{where}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = " ".join(str(exc).split())
    if text.startswith("Invalid kube-config file. "):
        text = text.removeprefix("Invalid kube-config file. ")
    return text or "cannot be loaded"


def startup_failed(message: str, code: int, prog: str = "graphcred run") -> int:
    """Why `graphcred run` cannot start, on stderr and in the termination message; the exit code to return."""
    line = f"{prog}: error: {message}"
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    if TERMINATION_LOG.exists():
        with contextlib.suppress(OSError), TERMINATION_LOG.open("a") as log:
            log.write(line + "\n")
    return code
