"""Where the Kubernetes API is and how to reach it: in a pod (its ServiceAccount) or through a kubeconfig, and
what a kubeconfig that does not load says, in words."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def in_cluster() -> bool:
    """Running in a pod: its ServiceAccount token is mounted and the kubelet set the apiserver's address."""
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
    if in_cluster() and not Path("~/.kube/config").expanduser().exists():
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
