"""The Helm chart: lint, CRD identical to crds/, every documented option set accepted by the real apiserver
(server-side dry run), least-privilege RBAC (ServiceAccount access only with workloadIdentity.enabled, pod access
only with consumerWarnings.enabled, workload access only with restartTargets.enabled), and the operator really
working with exactly that RBAC, cluster-wide and in watchNamespaces mode. The values schema (bad values refused by
helm itself, every documented example accepted), kubeVersion, the view/edit/admin aggregated roles on the bed, the
PodDisruptionBudget and the NetworkPolicy. Cluster apps: the operator's rules for ClusterGraphApps in every mode,
and who may write them (an authorizer matrix, -s)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from graphcred.api.keys import RESTARTED_AT_ANNOTATION
from graphcred_testbed import issuer as bed_issuer
from graphcred_testbed.bed import Bed, wait_for
from graphcred_testbed.binaries import binary, kube_flavour, kube_version
from graphcred_testbed.operator_process import OperatorProcess

from ..helpers import Env, helm_env

pytestmark = pytest.mark.bed

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "graphcred"
RELEASE_NS = "graphcred-system"
PLATFORM_NS = "platform-apps"  # a cluster resource namespace other than the release's

OPTION_SETS: dict[str, list[str]] = {
    "defaults": [],
    "namespaced": ["--set", "watchNamespaces={team-a,team-b}"],
    "high-availability": ["--set", "replicaCount=2", "--set", "podDisruptionBudget.enabled=true"],
    "service-monitor": ["--set", "metrics.serviceMonitor.enabled=true",
                        "--set", "metrics.serviceMonitor.labels.release=prometheus"],
    "private-authority-ca": ["--set", "caBundle.configMapName=corp-ca", "--set", "caBundle.key=bundle.pem"],
    "workload-identity": ["--set", "workloadIdentity.enabled=true"],
    "workload-identity-namespaced": ["--set", "workloadIdentity.enabled=true",
                                     "--set", "watchNamespaces={team-a,team-b}"],
    "consumer-warnings": ["--set", "consumerWarnings.enabled=true"],
    "consumer-warnings-namespaced": ["--set", "consumerWarnings.enabled=true",
                                     "--set", "watchNamespaces={team-a,team-b}"],
    "restart-targets": ["--set", "restartTargets.enabled=true"],
    "restart-targets-namespaced": ["--set", "restartTargets.enabled=true",
                                   "--set", "watchNamespaces={team-a,team-b}"],
    "no-crds-no-service": ["--set", "crds.install=false", "--set", "metrics.service.enabled=false"],
    "scheduling": ["--set", "nodeSelector.kubernetes\\.io/os=linux",
                   "--set", "priorityClassName=system-cluster-critical",
                   "--set", "tolerations[0].key=dedicated", "--set", "tolerations[0].operator=Exists",
                   "--set", "resources.limits.cpu=500m", "--set", "logFormat=text", "--set", "logLevel=DEBUG",
                   "--set", "affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight=1",
                   "--set", "affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0]"
                            ".podAffinityTerm.topologyKey=kubernetes.io/hostname"],
    "existing-service-account": ["--set", "serviceAccount.create=false", "--set", "serviceAccount.name=ops",
                                 "--set", "rbac.create=false"],
    "no-aggregated-roles": ["--set", "rbac.aggregateToDefaultRoles=false"],
    "pdb-one-replica": ["--set", "podDisruptionBudget.enabled=true", "--set", "podDisruptionBudget.maxUnavailable=50%",
                        "--set", "podDisruptionBudget.unhealthyPodEvictionPolicy=IfHealthyBudget"],
    "network-policy": ["--set", "networkPolicy.enabled=true"],
    "network-policy-narrowed": [
        "--set", "networkPolicy.enabled=true", "--set", "metrics.port=9090",
        "--set", "networkPolicy.apiServer.ports={6443}",
        "--set-json", 'networkPolicy.apiServer.to=[{"ipBlock":{"cidr":"10.0.0.1/32"}}]',
        "--set-json", 'networkPolicy.dns.to=[{"ipBlock":{"cidr":"169.254.20.10/32"}}]',
        "--set-json", 'networkPolicy.tokenEndpoint.to=[{"ipBlock":{"cidr":"0.0.0.0/0","except":["10.0.0.0/8"]}}]',
        "--set-json", 'networkPolicy.metrics.from=[{"namespaceSelector":{"matchLabels":'
                      '{"kubernetes.io/metadata.name":"monitoring"}}}]'],
    "no-admission-policy": ["--set", "admissionPolicy.enabled=false"],
    "metrics-network-policy": [
        "--set", "metrics.networkPolicy.enabled=true",
        "--set-json", 'metrics.networkPolicy.from=[{"namespaceSelector":{"matchLabels":'
                      '{"kubernetes.io/metadata.name":"monitoring"}},"podSelector":{"matchLabels":'
                      '{"app.kubernetes.io/name":"prometheus"}}}]'],
    "metrics-network-policy-closed": ["--set", "metrics.networkPolicy.enabled=true"],
    "cluster-apps-resource-namespace": ["--set", f"clusterApps.resourceNamespace={PLATFORM_NS}"],
    "cluster-apps-namespaced": ["--set", "watchNamespaces={team-a,team-b}",
                                "--set", f"clusterApps.resourceNamespace={PLATFORM_NS}"],
    "workload-identity-cluster-apps-namespaced": ["--set", "workloadIdentity.enabled=true",
                                                  "--set", "watchNamespaces={team-a,team-b}",
                                                  "--set", f"clusterApps.resourceNamespace={PLATFORM_NS}"],
    "no-platform-admin-role": ["--set", "clusterApps.platformAdminRole.create=false"],
}

SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
             "names": {"kind": "ServiceMonitor", "plural": "servicemonitors"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
}


def bed_kube_version() -> str:
    """The bed's kube-apiserver version (v1.37.2, or the floor's on the compat bed): what the chart is rendered for.
    Without a cluster, helm assumes the version its build was stamped with (v1.20 for the bed's helm, built without
    release ldflags), which the chart's kubeVersion refuses."""
    return kube_version()


def helm_run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("helm"), *args], capture_output=True, text=True, check=False, env=env)


def helm(*args: str) -> str:
    out = helm_run(*args)
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def render(*args: str, release: str = "graphcred") -> list[dict[str, Any]]:
    text = helm("template", release, str(CHART), "--namespace", RELEASE_NS, "--kube-version", bed_kube_version(),
                *args)
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="module")
def release_namespace(bed: Bed) -> str:
    for ns in (RELEASE_NS, "team-a", "team-b", PLATFORM_NS):
        try:
            bed.create_namespace(ns)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
    try:
        client.ApiextensionsV1Api(bed.api).create_custom_resource_definition(SERVICE_MONITOR_CRD)  # type: ignore[arg-type]
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    bed.kubectl("wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com")
    return RELEASE_NS


@pytest.mark.compat
def test_helm_lint_is_clean() -> None:
    out = helm("lint", "--strict", "--kube-version", bed_kube_version(), str(CHART))
    assert "0 chart(s) failed" in out


def test_chart_crds_are_the_committed_crds() -> None:
    crds = {d["spec"]["names"]["plural"]: d for d in render() if d["kind"] == "CustomResourceDefinition"}
    assert sorted(crds) == ["clustergraphapps", "graphappcredentials"]
    for plural, crd in crds.items():
        assert crd["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
        assert crd == yaml.safe_load((ROOT / "crds" / f"{plural}.yaml").read_text())
    assert not [d for d in render("--set", "crds.install=false") if d["kind"] == "CustomResourceDefinition"]


@pytest.mark.compat
@pytest.mark.parametrize("option_set", sorted(OPTION_SETS))
def test_option_set_is_accepted_by_the_apiserver(bed: Bed, release_namespace: str, option_set: str) -> None:
    manifest = yaml.safe_dump_all(render(*OPTION_SETS[option_set]))
    result = bed.kubectl("apply", "--dry-run=server", "--server-side", "--field-manager=helm-dry-run",
                         "-f", "-", input=manifest, check=False)
    assert result.returncode == 0, result.stderr


def test_restricted_security_context_by_default() -> None:
    [deploy] = [d for d in render() if d["kind"] == "Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_probes_give_a_starved_node_time() -> None:
    """On the bed's node (tests/node) the kubelet's defaults (1 s timeout, probing from the first second) killed
    a standby twice while a busy 2-core node started it: a start-up probe, then 5 s timeouts and 6 failures."""
    [deploy] = [d for d in render() if d["kind"] == "Deployment"]
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    startup, liveness = container["startupProbe"], container["livenessProbe"]
    assert startup["httpGet"]["path"] == "/healthz" and startup["periodSeconds"] * startup["failureThreshold"] >= 120
    assert liveness["timeoutSeconds"] >= 5 and liveness["periodSeconds"] * liveness["failureThreshold"] >= 60
    assert container["readinessProbe"]["timeoutSeconds"] >= 5


def _user_facing(doc: dict[str, Any]) -> bool:
    """A ClusterRole aggregated into view/edit/admin: granted to users bound to those, not to the operator."""
    labels = doc["metadata"].get("labels") or {}
    return any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in labels)


def _operators(docs: list[dict[str, Any]]) -> set[tuple[str, str | None, str]]:
    """(kind, namespace, name) of the roles bound to the operator's ServiceAccount: its grants, and not those the
    chart ships for people (aggregated into view/edit/admin, or the unbound platform-admin role)."""
    bound = set()
    for doc in docs:
        if doc["kind"] in ("ClusterRoleBinding", "RoleBinding") and any(
                s["kind"] == "ServiceAccount" and s["namespace"] == RELEASE_NS for s in doc["subjects"]):
            ref = doc["roleRef"]
            bound.add((ref["kind"], doc["metadata"].get("namespace") if ref["kind"] == "Role" else None, ref["name"]))
    return bound


def _operator_role(doc: dict[str, Any], bound: set[tuple[str, str | None, str]]) -> bool:
    return doc["kind"] in ("ClusterRole", "Role") and \
        (doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"]) in bound


def _rules(docs: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """(kind of role, apiGroup, resource, verb) for every rule the chart grants the operator."""
    granted = set()
    bound = _operators(docs)
    for doc in docs:
        if _operator_role(doc, bound):
            assert not _user_facing(doc), doc["metadata"]["name"]
            for rule in doc["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for verb in rule["verbs"]:
                            granted.add((doc["kind"], group, resource, verb))
    return granted


NAMESPACED = {("graphcred.io", "graphappcredentials", v) for v in ("get", "list", "watch")} | \
    {("graphcred.io", "graphappcredentials/status", "patch")} | \
    {("graphcred.io", "graphappcredentials/finalizers", "update")} | \
    {("", "secrets", v) for v in ("get", "list", "watch", "create", "patch", "delete")} | \
    {("", "events", v) for v in ("create", "patch")}
CRD_READ = {("ClusterRole", "apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("get", "list", "watch")}
# ClusterGraphApps and the namespace labels their policies select: cluster-wide in every mode
CLUSTER_APPS = {("ClusterRole", "graphcred.io", "clustergraphapps", v) for v in ("get", "list", "watch")} | \
    {("ClusterRole", "graphcred.io", "clustergraphapps/status", v) for v in ("patch",)} | \
    {("ClusterRole", "", "namespaces", v) for v in ("get", "list", "watch")}
# with watchNamespaces: the cluster resource namespace, read only, and Events about ClusterGraphApps in `default`
CLUSTER_RESOURCES = {("", "secrets", v) for v in ("get", "list", "watch")}
CLUSTER_EVENTS = {("", "events", "create"), ("", "events", "patch")}
LEASES = {("Role", "coordination.k8s.io", "leases", v) for v in ("get", "create", "update")}


def test_the_lease_is_read_and_renewed_by_name_only() -> None:
    """Leader election reads and renews the one Lease graphcred-leader (operator/graphcred/app/config.py); only create,
    which names no existing object, cannot be limited to it."""
    from graphcred.app.config import RunConfig

    [role] = [d for d in render() if d["kind"] == "Role" and d["metadata"]["name"].endswith("-leader-election")]
    assert role["rules"][1] == {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                                "resourceNames": [RunConfig().leader_election_name], "verbs": ["get", "update"]}
    assert role["rules"][0]["verbs"] == ["create"] and "resourceNames" not in role["rules"][0]


def test_default_rbac_grants_nothing_beyond_the_list() -> None:
    assert _rules(render()) == CRD_READ | CLUSTER_APPS | LEASES | {("ClusterRole", *r) for r in NAMESPACED}


def test_namespaced_rbac_uses_roles_only() -> None:
    docs = render(*OPTION_SETS["namespaced"])
    assert _rules(docs) == CRD_READ | CLUSTER_APPS | LEASES | {("Role", *r) for r in NAMESPACED}
    assert sorted(d["metadata"]["namespace"] for d in docs if d["kind"] == "RoleBinding"
                  and d["metadata"]["name"] == "graphcred") == ["team-a", "team-b"]


WORKLOAD_IDENTITY = {("", "serviceaccounts", v) for v in ("get", "list", "watch")} | \
    {("", "serviceaccounts/token", "create")}


def _rules_by_scope(docs: list[dict[str, Any]]) -> dict[str, set[tuple[str, str, str]]]:
    """(apiGroup, resource, verb) granted the operator, by where: "cluster" (ClusterRoles) or a Role's namespace."""
    granted: dict[str, set[tuple[str, str, str]]] = {}
    bound = _operators(docs)
    for doc in docs:
        if _operator_role(doc, bound):
            scope = "cluster" if doc["kind"] == "ClusterRole" else doc["metadata"]["namespace"]
            granted.setdefault(scope, set()).update(
                (group, resource, verb) for rule in doc["rules"] for group in rule["apiGroups"]
                for resource in rule["resources"] for verb in rule["verbs"])
    return granted


def test_workload_identity_rbac_cluster_wide() -> None:
    docs = render(*OPTION_SETS["workload-identity"])
    assert _rules(docs) == CRD_READ | CLUSTER_APPS | LEASES | \
        {("ClusterRole", *r) for r in NAMESPACED | WORKLOAD_IDENTITY}


def test_workload_identity_rbac_in_watch_namespaces_only() -> None:
    by_scope = _rules_by_scope(render(*OPTION_SETS["workload-identity-namespaced"]))
    assert by_scope["team-a"] == by_scope["team-b"] == NAMESPACED | WORKLOAD_IDENTITY
    assert {r[1:] for r in CRD_READ | CLUSTER_APPS} == by_scope["cluster"], "the CRD read and cluster apps only"
    assert {r[1:] for r in LEASES} | CLUSTER_RESOURCES | WORKLOAD_IDENTITY == by_scope[RELEASE_NS], \
        "the release namespace: the Lease, and the cluster resource namespace's read (with its ServiceAccounts)"
    assert by_scope["default"] == CLUSTER_EVENTS
    assert set(by_scope) == {"cluster", "team-a", "team-b", RELEASE_NS, "default"}


@pytest.mark.parametrize("option_set", sorted(s for s in OPTION_SETS if not s.startswith("workload-identity")))
def test_no_service_account_access_without_workload_identity(option_set: str) -> None:
    """Not in any rule, and not in the text either (a wildcard or a stray comment would show there too)."""
    docs = render(*OPTION_SETS[option_set])
    assert not [r for r in _rules(docs) if r[2].startswith("serviceaccounts") or "*" in r[1:]]
    text = yaml.safe_dump_all([d for d in docs if d["kind"] in ("ClusterRole", "Role")])
    assert "serviceaccounts" not in text  # nor, so, serviceaccounts/token


@pytest.mark.parametrize(("values", "expected"), [([], "false"), (OPTION_SETS["workload-identity"], "true")])
def test_the_deployment_tells_the_operator_whether_workload_identity_is_on(values: list[str], expected: str) -> None:
    [deploy] = [d for d in render(*values) if d["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GRAPHCRED_WORKLOAD_IDENTITY"] == expected
    assert "GRAPHCRED_WORKLOAD_IDENTITY_AUTHORITIES" not in env  # no host besides Entra's unless listed


def test_allowed_authority_hosts_reach_the_operator() -> None:
    [deploy] = [d for d in render(*OPTION_SETS["workload-identity"], "--set",
                                  "workloadIdentity.authorityHosts={https://a.example,https://b.example:8443}")
                if d["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GRAPHCRED_WORKLOAD_IDENTITY_AUTHORITIES"] == "https://a.example,https://b.example:8443"


def test_allowed_authority_hosts_for_every_credential_reach_the_operator() -> None:
    [plain] = [d for d in render() if d["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in plain["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "GRAPHCRED_AUTHORITY_HOSTS" not in env  # no host besides the clouds' unless listed
    [deploy] = [d for d in render("--set", "authorityHosts={https://a.example,https://b.example:8443}")
                if d["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GRAPHCRED_AUTHORITY_HOSTS"] == "https://a.example,https://b.example:8443"


PODS = {("", "pods", v) for v in ("get", "list", "watch")}


def test_consumer_warnings_rbac_cluster_wide() -> None:
    docs = render(*OPTION_SETS["consumer-warnings"])
    assert _rules(docs) == CRD_READ | CLUSTER_APPS | LEASES | {("ClusterRole", *r) for r in NAMESPACED | PODS}


def test_consumer_warnings_rbac_in_watch_namespaces_only() -> None:
    by_scope = _rules_by_scope(render(*OPTION_SETS["consumer-warnings-namespaced"]))
    assert by_scope["team-a"] == by_scope["team-b"] == NAMESPACED | PODS
    assert {r[1:] for r in CRD_READ | CLUSTER_APPS} == by_scope["cluster"], "the CRD read and cluster apps only"
    assert {r[1:] for r in LEASES} | CLUSTER_RESOURCES == by_scope[RELEASE_NS], "no pods in the resource namespace"


@pytest.mark.parametrize("option_set", sorted(s for s in OPTION_SETS if not s.startswith("consumer-warnings")))
def test_no_pod_access_without_consumer_warnings(option_set: str) -> None:
    """Not in any rule, and not in the text either (a wildcard or a stray comment would show there too)."""
    docs = render(*OPTION_SETS[option_set])
    assert not [r for r in _rules(docs) if r[2] == "pods" or "*" in r[1:]]
    text = yaml.safe_dump_all([d for d in docs if d["kind"] in ("ClusterRole", "Role")])
    assert "pods" not in text


@pytest.mark.parametrize(("values", "expected"), [([], "false"), (OPTION_SETS["consumer-warnings"], "true")])
def test_the_deployment_tells_the_operator_whether_consumer_warnings_are_on(values: list[str], expected: str) -> None:
    [deploy] = [d for d in render(*values) if d["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GRAPHCRED_WATCH_CONSUMERS"] == expected


# restart targets (spec.restartTargets): read each workload by name and patch its pod template; a ReplicaSet only
# read, for the Deployment behind a flagged pod (restartUnrefreshable). No list, watch, create or delete.
WORKLOADS = {("apps", r, v) for r in ("deployments", "statefulsets", "daemonsets") for v in ("get", "patch")} | \
    {("apps", "replicasets", "get")}


def test_restart_targets_rbac_cluster_wide() -> None:
    docs = render(*OPTION_SETS["restart-targets"])
    assert _rules(docs) == CRD_READ | CLUSTER_APPS | LEASES | {("ClusterRole", *r) for r in NAMESPACED | WORKLOADS}


def test_restart_targets_rbac_in_watch_namespaces_only() -> None:
    docs = render(*OPTION_SETS["restart-targets-namespaced"])
    by_scope = _rules_by_scope(docs)
    assert by_scope["team-a"] == by_scope["team-b"] == NAMESPACED | WORKLOADS
    assert {r[1:] for r in CRD_READ | CLUSTER_APPS} == by_scope["cluster"], "the CRD read and cluster apps only"
    assert {r[1:] for r in LEASES} | CLUSTER_RESOURCES == by_scope[RELEASE_NS], "no workloads in the resource namespace"
    assert by_scope["default"] == CLUSTER_EVENTS
    assert not [d for d in docs if d["kind"] == "ClusterRole" and any(
        "apps" in rule["apiGroups"] for rule in d["rules"])], "no ClusterRole, bound or not, names a workload"


@pytest.mark.parametrize("option_set", sorted(s for s in OPTION_SETS if not s.startswith("restart-targets")))
def test_no_workload_access_without_restart_targets(option_set: str) -> None:
    """Not in any rule, and not in the text either (a wildcard or a stray comment would show there too)."""
    docs = render(*OPTION_SETS[option_set])
    assert not [r for r in _rules(docs) if r[1] == "apps" or "*" in r[1:]]
    text = yaml.safe_dump_all([d for d in docs if d["kind"] in ("ClusterRole", "Role")])
    for resource in ("deployments", "statefulsets", "daemonsets", "replicasets"):
        assert resource not in text


RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
POLICY_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
# an HTTP 403 however it is logged ("HTTP 403", "ApiException 403", "(403)"), not a port, time or uid that holds
# "403" (a client id "aab485fe-3ad4-403d-..." in a message failed a run)
FORBIDDEN = re.compile(r"Forbidden|(?<![\w.:-])403(?![\w-])")


@contextmanager
def chart_operator(env: Env, logdir: Path, release: str, values: list[str], *args: str,
                   denied: re.Pattern[str] | None = None) -> Iterator[OperatorProcess]:
    """The operator running as the chart's ServiceAccount with exactly the chart's RBAC and admission policy for
    `values` (a release of its own: no other release's grants apply), instead of the session's operator. Removes
    the grants and the policy afterwards. Fails on a refusal in the log, but for log lines matching `denied` (a
    test of what the chart leaves out)."""
    docs = [d for d in render(*values, release=release) if d["kind"] in RBAC_KINDS + POLICY_KINDS]
    manifest = yaml.safe_dump_all(docs)
    env.bed.kubectl("apply", "--server-side", "-f", "-", input=manifest)
    [account] = [d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"]
    if any(d["kind"] == "ValidatingAdmissionPolicy" for d in docs):
        wait_policy_enforced(env.bed, f"system:serviceaccount:{RELEASE_NS}:{account}", env.namespace)
    token = env.bed.core.create_namespaced_service_account_token(
        account, RELEASE_NS, client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))).status.token
    kubeconfig = logdir / f"chart-{release}.kubeconfig"
    cp = env.bed.control_plane
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "bed", "cluster": {"server": cp.server,
                                                 "certificate-authority": str(cp.dir / "pki" / "ca.crt")}}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "bed", "context": {"cluster": "bed", "user": account}}],
        "current-context": "bed"}))
    env.operator.stop()
    chart_op = OperatorProcess(env.bed, logdir, "--leader-election", f"--leader-election-namespace={RELEASE_NS}",
                               *args, name=f"graphcred-chart-{release}", log_format="json")
    chart_op.process.argv[chart_op.process.argv.index(f"--kubeconfig={env.bed.kubeconfig}")] = \
        f"--kubeconfig={kubeconfig}"
    try:
        chart_op.start()
        yield chart_op
        refused = [line for line in chart_op.logs(this_run=True).splitlines()
                   if FORBIDDEN.search(line) and not (denied and denied.search(line))]
        assert not refused, f"the chart's RBAC refused the operator something: {refused[:3]}"
    finally:
        chart_op.stop()
        env.operator.start()
        env.bed.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=manifest, check=False)


def as_user(bed: Bed, user: str, *args: str, manifest: dict[str, Any] | None = None
            ) -> subprocess.CompletedProcess[str]:
    """kubectl impersonating `user` (a ServiceAccount: system:serviceaccount:NS:NAME), `manifest` on stdin."""
    return bed.kubectl(f"--as={user}", *args, input=json.dumps(manifest) if manifest else None, check=False)


def refused_by_policy(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode != 0 and "ValidatingAdmissionPolicy" in result.stderr


def _policy_probe(bed: Bed, user: str, namespace: str) -> subprocess.CompletedProcess[str]:
    """`user` creating a ServiceAccount token Secret in `namespace` (a dry run), which the chart's policy refuses."""
    probe = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
             "metadata": {"name": "policy-probe", "namespace": namespace,
                          "annotations": {"kubernetes.io/service-account.name": "default"}}}
    return as_user(bed, user, "create", "--dry-run=server", "-f", "-", manifest=probe)


def wait_policy_enforced(bed: Bed, user: str, namespace: str) -> None:
    """Wait until the admission policy just applied refuses `user` a ServiceAccount token Secret (a dry run): the
    apiserver loads policies asynchronously, a second or so after they are created."""
    wait_for(lambda: refused_by_policy(_policy_probe(bed, user, namespace)),
             timeout=30, what=f"the admission policy enforced for {user}")


def wait_policy_lifted(bed: Bed, user: str, namespace: str) -> None:
    """Wait until the admission policy just deleted no longer refuses `user` (who must still have the chart's RBAC,
    or RBAC would refuse first): the apiserver unloads it asynchronously too, and a test that applies the same
    release's RBAC next must not meet it."""
    wait_for(lambda: not refused_by_policy(_policy_probe(bed, user, namespace)),
             timeout=30, what=f"the admission policy lifted for {user}")


def _scope(scope: str, env: Env) -> tuple[list[str], tuple[str, ...]]:
    """Chart values and operator flags for watching the whole cluster, or only the test's namespace."""
    if scope == "cluster":
        return [], ()
    return ["--set", f"watchNamespaces={{{env.namespace}}}"], (f"--namespace={env.namespace}",)


# on the compat bed cluster-wide only: the namespaced case differs in Roles, not in what the apiserver version decides
@pytest.mark.parametrize("scope", [pytest.param("cluster", marks=pytest.mark.compat), "namespaced"])
def test_operator_works_with_exactly_the_charts_rbac(env: Env, release_namespace: str, operator_logdir: Path,
                                                      scope: str) -> None:
    values, args = _scope(scope, env)
    with chart_operator(env, operator_logdir, f"rbac-{scope}", values, *args):
        app = env.secret_app("rbac", secret_name="cred")
        env.create("rbac", app, {"clientSecret": {"name": "cred"}})
        env.wait_ready("rbac", timeout=60)
        wait_for(lambda: ("Normal", "TokenIssued") in [(t, r) for t, r, _ in env.events("rbac")], timeout=15,
                 what="the TokenIssued event, posted with the chart's RBAC")


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_workload_identity_works_with_exactly_the_charts_rbac(env: Env, release_namespace: str,
                                                               operator_logdir: Path, scope: str) -> None:
    """Reads the ServiceAccount, watches it (the annotation added later makes it Ready within seconds, not at the
    needs-the-user retry minutes later) and requests its token, with the chart's rules and nothing more."""
    values, args = _scope(scope, env)
    account = "graph-reader"
    app = env.register_app(federated=[bed_issuer.FederatedCredential(
        issuer=env.bed.control_plane.sa_issuer, subject=f"system:serviceaccount:{env.namespace}:{account}",
        audiences=["api://AzureADTokenExchange"])])
    env.bed.core.create_namespaced_service_account(env.namespace, client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name=account)))
    with chart_operator(env, operator_logdir, f"wi-{scope}", ["--set", "workloadIdentity.enabled=true", *values],
                        "--workload-identity", f"--workload-identity-authority={env.bed.authority_host}", *args):
        env.create("wi", app, {"workloadIdentity": {"serviceAccountName": account}})
        env.wait_condition("wi", "False", "ServiceAccountNotAuthorized", timeout=60)
        env.bed.core.patch_namespaced_service_account(account, env.namespace, {"metadata": {"annotations": {
            "azure.workload.identity/client-id": app.client_id}}})
        env.wait_ready("wi", timeout=20)
        token = env.token("wi-token")
        assert token is not None
        assert env.verified_claims(token)["appid"] == app.client_id


def _leaf_keys(values: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in ("resources", "podSecurityContext", "securityContext"):
            keys.extend(_leaf_keys(value, path + "."))
        else:
            keys.append(path)
    return keys


def test_every_value_is_documented() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    text = (CHART / "values.yaml").read_text()
    alert = re.compile(r"metrics\.prometheusRule\.alerts\.([A-Za-z]+)\.(enabled|for|severity)")

    def documented(key: str) -> bool:  # per-alert keys: one `<Alert>` row, and each alert named in it
        match = alert.fullmatch(key)
        if match:
            return "`metrics.prometheusRule.alerts.<Alert>`" in readme and f"`{match.group(1)}`" in readme
        return f"`{key}`" in readme

    missing = [k for k in _leaf_keys(values) if not documented(k)]
    assert not missing, f"values missing from charts/graphcred/README.md: {missing}"
    # the per-alert keys share the one comment above `alerts:`
    commented = [k for k in _leaf_keys(values) if not alert.fullmatch(k)]
    assert text.count("# -- ") >= len(commented) + 1, "every value has a `# --` comment in values.yaml"


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_consumer_warnings_work_with_exactly_the_charts_rbac(env: Env, release_namespace: str,
                                                             operator_logdir: Path, scope: str) -> None:
    """Lists and watches pods (a pod created after the credential, and one created before it, found by a rescan of
    its namespace) with the chart's rules and nothing more; chart_operator fails on any 403 in the log."""
    values, args = _scope(scope, env)
    pod = {"apiVersion": "v1", "kind": "Pod",
           "spec": {"automountServiceAccountToken": False, "containers": [{"name": "app", "image": "app", "env": [
               {"name": "T", "valueFrom": {"secretKeyRef": {"name": "rbac-token", "key": "access_token"}}}]}]}}
    wait_for(lambda: _created(env, {**pod, "metadata": {"name": "before"}}), timeout=15, what="a pod created")
    with chart_operator(env, operator_logdir, f"consumers-{scope}", ["--set", "consumerWarnings.enabled=true", *values],
                        "--watch-consumers", *args):
        app = env.secret_app("rbac", secret_name="cred")
        env.create("rbac", app, {"clientSecret": {"name": "cred"}})
        env.wait_ready("rbac", timeout=60)
        env.bed.core.create_namespaced_pod(env.namespace, {**pod, "metadata": {"name": "after"}})
        wait_for(lambda: len([r for _, r, _ in env.events("rbac") if r == "UnrefreshableConsumer"]) == 2, timeout=20,
                 what="an UnrefreshableConsumer Event for each pod, found with the chart's RBAC")
        wait_for(lambda: env.get("rbac")["status"].get("unrefreshableConsumers") == 2, timeout=10,
                 what="the count patched with the chart's RBAC")


def _deployment(env: Env, name: str) -> None:
    """A Deployment that reads the token from an environment variable (this bed runs no Deployment controller: the
    test looks at the pod template graphcred patches, not at pods)."""
    labels = {"app": name}
    client.AppsV1Api(env.bed.api).create_namespaced_deployment(env.namespace, {
        "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"automountServiceAccountToken": False, "containers": [{"name": "app", "image": "app", "env": [
                {"name": "T", "valueFrom": {"secretKeyRef": {"name": "rbac-token", "key": "access_token"}}}]}]}}}})


def _restart_record(env: Env, name: str) -> dict[str, Any]:
    """The credential's one status.restarts record ({} before there is one)."""
    records = (env.get(name).get("status") or {}).get("restarts") or [{}]
    assert len(records) == 1, records
    return dict(records[0])


def _credential_restarting_web(env: Env) -> None:
    """Credential `rbac` with Deployment web as its restart target, Ready, the target adopted (the first token
    restarts nothing)."""
    app = env.secret_app("rbac", secret_name="cred")
    env.create("rbac", app, {"clientSecret": {"name": "cred"}}, restartTargets=[{"kind": "Deployment", "name": "web"}])
    env.wait_ready("rbac", timeout=60)
    wait_for(lambda: _restart_record(env, "rbac").get("outcome") == "Current", timeout=15,
             what="the target adopted (the first token restarts nothing)")


def _template_annotations(env: Env, name: str) -> dict[str, str]:
    body = client.AppsV1Api(env.bed.api).read_namespaced_deployment(name, env.namespace)
    return dict(body.spec.template.metadata.annotations or {})


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_restart_targets_work_with_exactly_the_charts_rbac(env: Env, release_namespace: str, operator_logdir: Path,
                                                           scope: str) -> None:
    """Reads the Deployment and patches its pod template for a new token with the chart's rules and nothing more;
    chart_operator fails on any 403 in the log."""
    values, args = _scope(scope, env)
    _deployment(env, "web")
    with chart_operator(env, operator_logdir, f"restarts-{scope}", ["--set", "restartTargets.enabled=true", *values],
                        *args):
        _credential_restarting_web(env)
        token_time = env.renew("rbac")
        wait_for(lambda: _restart_record(env, "rbac").get("outcome") == "Restarted", timeout=20,
                 what="the Deployment restarted with the chart's RBAC")
        assert _restart_record(env, "rbac")["tokenTime"] == token_time
        assert RESTARTED_AT_ANNOTATION in _template_annotations(env, "web")
        wait_for(lambda: ("Normal", "WorkloadRestarted") in [(t, r) for t, r, _ in env.events("rbac")], timeout=10,
                 what="the WorkloadRestarted Event")


def test_restart_targets_are_forbidden_without_the_value(env: Env, release_namespace: str,
                                                         operator_logdir: Path) -> None:
    """The chart's defaults grant no workload access: a new token leaves the Deployment alone, and status says why
    and what to set. The operator's refusals in its log are these and no others."""
    _deployment(env, "web")
    with chart_operator(env, operator_logdir, "restarts-off", [],
                        denied=re.compile(r"Deployment web: read Deployment")):
        _credential_restarting_web(env)
        env.renew("rbac")
        wait_for(lambda: _restart_record(env, "rbac").get("outcome") == "Forbidden", timeout=20,
                 what="the refusal in status")
        assert "restartTargets.enabled" in _restart_record(env, "rbac")["message"]
        assert RESTARTED_AT_ANNOTATION not in _template_annotations(env, "web")
        wait_for(lambda: ("Warning", "RestartForbidden") in [(t, r) for t, r, _ in env.events("rbac")], timeout=10,
                 what="the RestartForbidden Event")


def _created(env: Env, pod: dict[str, Any]) -> bool:
    """Create the pod; False while the new namespace's default ServiceAccount is not there yet."""
    try:
        env.bed.core.create_namespaced_pod(env.namespace, pod)
    except client.ApiException as exc:
        if exc.status == 403 and "serviceaccount" in str(exc.body):
            return False
        raise
    return True


# --- issue 11 item 5: values schema, kubeVersion, aggregated roles, PodDisruptionBudget, NetworkPolicy -------------

SCHEMA_ERROR = "values don't meet the specifications of the schema(s)"

# (values, what helm must say): each would otherwise render, and each but the last two reach the operator as a bad
# env var or a pod the apiserver refuses only at install, or not at all (a typo'd key is silently ignored).
REFUSED = [
    (["--set", "leaderElection.leaseDuration=15s"], "at '/leaderElection/leaseDuration': got string, want integer"),
    (["--set", "leaderElection.leaseDurationSeconds=15"],
     "at '/leaderElection': additional properties 'leaseDurationSeconds' not allowed"),
    (["--set", "watchNamespace={team-a}"], "additional properties 'watchNamespace' not allowed"),
    (["--set", "watchNamespaces=team-a"], "at '/watchNamespaces': got string, want array"),
    (["--set", "watchNamespaces={Team_A}"], "at '/watchNamespaces/0': 'Team_A' does not match pattern"),
    (["--set", "tokenTimeout=30s"], "at '/tokenTimeout'"),
    (["--set", "apiTimeout=0"], "at '/apiTimeout'"),
    (["--set", "tokenConcurrency=0"], "at '/tokenConcurrency': minimum: got 0, want 1"),
    (["--set", "logLevel=TRACE"], "at '/logLevel': value must be one of"),
    (["--set", "logFormat=yaml"], "at '/logFormat': value must be one of"),
    (["--set", "metrics.port=0"], "at '/metrics/port': minimum: got 0, want 1"),
    (["--set", "metrics.serviceMonitor.interval=30"], "at '/metrics/serviceMonitor/interval': got number, want string"),
    (["--set", "podLabels.version=2"], "at '/podLabels/version': got number, want string"),
    (["--set", "workloadIdentity.authorityHosts={login.example.com}"],
     "at '/workloadIdentity/authorityHosts/0': 'login.example.com' does not match pattern"),
    (["--set", "authorityHosts={http://login.example.com}"],
     "at '/authorityHosts/0': 'http://login.example.com' does not match pattern"),
    (["--set", "podDisruptionBudget.minAvailable=1"],
     "at '/podDisruptionBudget': additional properties 'minAvailable' not allowed"),
    (["--set", "podDisruptionBudget.maxUnavailable=one"], "at '/podDisruptionBudget/maxUnavailable'"),
    (["--set", "podDisruptionBudget.unhealthyPodEvictionPolicy=Never"],
     "at '/podDisruptionBudget/unhealthyPodEvictionPolicy': value must be one of"),
    # a rule without ports would allow every port
    (["--set", "networkPolicy.enabled=true", "--set-json", "networkPolicy.apiServer.ports=[]"],
     "at '/networkPolicy/apiServer/ports': minItems: got 0, want 1"),
    (["--set-json", 'networkPolicy.metrics.from=[{"ipblock":{"cidr":"10.0.0.0/8"}}]'],
     "at '/networkPolicy/metrics/from/0': additional properties 'ipblock' not allowed"),
    (["--set", "admissionPolicy.enabled=yes"], "at '/admissionPolicy/enabled': got string, want boolean"),
    (["--set", "restartTargets.enabled=yes"], "at '/restartTargets/enabled': got string, want boolean"),
    (["--set", "restartTargets.kinds={Deployment}"],
     "at '/restartTargets': additional properties 'kinds' not allowed"),
    (["--set", "admissionPolicy.validationActions={Warn}"],
     "at '/admissionPolicy': additional properties 'validationActions' not allowed"),
    (["--set-json", 'metrics.networkPolicy.from=[{"namespaceselector":{}}]'],
     "at '/metrics/networkPolicy/from/0': additional properties 'namespaceselector' not allowed"),
    (["--set", "clusterApps.resourceNamespace=Platform_Apps"],
     "at '/clusterApps/resourceNamespace': 'Platform_Apps' does not match pattern"),
    (["--set", "clusterApps.platformAdminRole.create=yes"],
     "at '/clusterApps/platformAdminRole/create': got string, want boolean"),
    (["--set", "clusterApps.platformAdminRole.subjects={platform-team}"],
     "at '/clusterApps/platformAdminRole': additional properties 'subjects' not allowed"),
]


@pytest.mark.parametrize(("values", "message"), REFUSED, ids=[" ".join(v[1::2]) for v, _ in REFUSED])
def test_schema_refuses_a_bad_value_before_anything_renders(values: list[str], message: str) -> None:
    out = helm_run("template", "graphcred", str(CHART), "--kube-version", bed_kube_version(), *values)
    assert out.returncode == 1, out.stdout[:200]
    assert SCHEMA_ERROR in out.stderr and message in out.stderr, out.stderr
    assert not out.stdout, "nothing rendered"


@pytest.mark.compat
def test_helm_install_refuses_a_duration_for_the_lease_seconds(bed: Bed, release_namespace: str,
                                                               tmp_path: Path) -> None:
    """`helm install` against the real apiserver (its version passes kubeVersion) stops at the schema:
    no release, no Deployment; the operator would otherwise crash-loop on GRAPHCRED_LEASE_DURATION=15s."""
    out = helm_run("install", "lease", str(CHART), "--namespace", RELEASE_NS, "--set", "crds.install=false",
                   "--set", "leaderElection.leaseDuration=15s", env=helm_env(tmp_path, bed))
    assert out.returncode == 1
    assert out.stderr == (f"Error: INSTALLATION FAILED: {SCHEMA_ERROR} in the following chart(s):\ngraphcred:\n"
                          "- at '/leaderElection/leaseDuration': got string, want integer\n\n"), out.stderr
    assert not bed.core.list_namespaced_secret(RELEASE_NS, label_selector="owner=helm,name=lease").items
    assert not client.AppsV1Api(bed.api).list_namespaced_deployment(
        RELEASE_NS, label_selector="app.kubernetes.io/instance=lease").items


def _values_keys(values: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in values.items():
        keys.add(prefix + key)
        if isinstance(value, dict) and key not in OPEN_OBJECTS:
            keys |= _values_keys(value, f"{prefix}{key}.")
    return keys


def _schema_keys(schema: dict[str, Any], node: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, sub in node.get("properties", {}).items():
        keys.add(prefix + key)
        if "$ref" in sub:
            sub = schema["definitions"][sub["$ref"].rsplit("/", 1)[1]]
        if sub.get("additionalProperties") is False:
            keys |= _schema_keys(schema, sub, f"{prefix}{key}.")
    return keys


# Kubernetes objects passed through as they are (the apiserver checks them), and label/annotation maps.
OPEN_OBJECTS = ("podSecurityContext", "securityContext", "affinity", "nodeSelector", "podAnnotations", "podLabels",
                "annotations", "labels", "requests", "limits")


def test_the_schema_describes_exactly_the_values() -> None:
    """Every key of values.yaml has a schema entry (a value added without one is refused by the schema itself), and
    the schema knows no key values.yaml lacks, but for `global` (what a parent chart passes) and resources.claims."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    values = _values_keys(yaml.safe_load((CHART / "values.yaml").read_text()))
    described = _schema_keys(schema, schema)
    assert not values - described, f"values without a schema entry: {sorted(values - described)}"
    assert described - values == {"global", "resources.claims"}, sorted(described - values)


def _documented_examples() -> list[tuple[str, list[str]]]:
    """Every `--set`/`--set-string`/`--set-json` example in the docs (inline code or a command, continuation lines
    joined), and every ```yaml block in the chart's README (values files), as helm arguments. ```console blocks are
    transcripts (they may show a refusal) and are left out."""
    examples: list[tuple[str, list[str]]] = []
    for doc in [ROOT / "README.md", CHART / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"```console\n.*?```", "", doc.read_text(), flags=re.S)
        snippets = re.findall(r"`([^`\n]*--set[^`\n]*)`", text)
        snippets += [line for line in text.replace("\\\n", " ").splitlines()
                     if "--set" in line and not line.lstrip().startswith("|") and "`" not in line]
        for snippet in snippets:
            words = [*shlex.split(snippet), ""]
            args = [a for w, value in pairwise(words)
                    if w in ("--set", "--set-string", "--set-json") and "=" in value for a in (w, value)]
            if args:  # not a flag named in prose
                examples.append((f"{doc.relative_to(ROOT)}: {snippet.strip()[:60]}", args))
        if doc == CHART / "README.md":
            for n, block in enumerate(re.findall(r"```yaml\n(.*?)```", text, re.S)):
                examples.append((f"{doc.relative_to(ROOT)}: yaml block {n + 1}", ["--values", f"yaml:{block}"]))
    return examples


DOCUMENTED = _documented_examples()


@pytest.mark.compat
@pytest.mark.parametrize("example", [args for _, args in DOCUMENTED], ids=[name for name, _ in DOCUMENTED])
def test_documented_examples_pass_the_schema_and_the_apiserver(bed: Bed, release_namespace: str, tmp_path: Path,
                                                               example: list[str]) -> None:
    args = list(example)
    if args[:1] == ["--values"]:
        values_file = tmp_path / "values.yaml"
        values_file.write_text(args[1].removeprefix("yaml:"))
        args = ["--values", str(values_file)]
    manifest = yaml.safe_dump_all(render(*args))
    result = bed.kubectl("apply", "--dry-run=server", "--server-side", "--field-manager=helm-dry-run",
                         "-f", "-", input=manifest, check=False)
    assert result.returncode == 0, result.stderr


def test_the_docs_have_examples_for_the_new_values() -> None:
    """The examples above really cover the schema's new parts (an extraction that found nothing would pass)."""
    flat = " ".join(a for _, args in DOCUMENTED for a in args)
    for key in ("networkPolicy.enabled", "networkPolicy.apiServer.to", "networkPolicy.metrics.from",
                "podDisruptionBudget", "rbac.aggregateToDefaultRoles", "watchNamespaces", "leaderElection",
                "metrics.networkPolicy.enabled", "metrics.networkPolicy.from", "clusterApps.resourceNamespace"):
        assert key in flat, key


def chart_floor() -> tuple[str, int]:
    """Chart.yaml's kubeVersion (">=1.N.0-0", the only form used) and its minor N."""
    floor = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    match = re.fullmatch(r">=1\.(\d+)\.0-0", floor)
    assert match, floor
    return floor, int(match[1])


@pytest.mark.compat
def test_kube_version_floor_is_enforced() -> None:
    """Chart.yaml's kubeVersion ">=1.N.0-0": 1.N.0 renders, 1.(N-1) is refused with helm's message, and so is
    the v1.20 a helm without a cluster assumes; the tested version is inside the range."""
    floor, minor = chart_floor()
    assert int(bed_kube_version().split(".")[1]) >= minor
    assert helm_run("template", "graphcred", str(CHART), "--kube-version", f"1.{minor}.0").returncode == 0
    for old in (f"1.{minor - 1}.9", "1.20.0"):
        out = helm_run("template", "graphcred", str(CHART), "--kube-version", old)
        assert out.returncode == 1
        assert f"chart requires kubeVersion: {floor} which is incompatible with Kubernetes v{old}" in out.stderr


@pytest.mark.compat
def test_the_bed_serves_the_kubernetes_it_claims(bed: Bed) -> None:
    """The running apiserver's own /version: the floor's minor on the compat bed (or the compat tests would prove
    nothing while passing), the current version otherwise."""
    served = client.VersionApi(bed.api).get_code().git_version
    if kube_flavour() == "compat":
        _, minor = chart_floor()
        assert served.startswith(f"v1.{minor}."), f"the compat bed serves {served}, not the chart's floor 1.{minor}"
    else:
        assert served == kube_version()


def test_the_compat_bed_builds_the_charts_floor() -> None:
    """`make test-compat` proves the floor only if its kube-apiserver is the floor's minor: build-binaries.sh's
    COMPAT_KUBE_VERSION, the k8s.io/kubernetes its module requires, and every staging module pinned to match."""
    script = (ROOT / "testbed" / "build-binaries.sh").read_text()
    found = re.search(r"^COMPAT_KUBE_VERSION=v1\.(\d+)\.(\d+)\b", script, re.M)
    assert found, "COMPAT_KUBE_VERSION in testbed/build-binaries.sh"
    minor, patch = int(found[1]), int(found[2])
    assert minor == chart_floor()[1], "the compat bed must run the chart's kubeVersion floor"
    go_mod = (ROOT / "testbed" / "go" / "kube-compat" / "go.mod").read_text()
    assert re.search(rf"^\tk8s\.io/kubernetes v1\.{minor}\.{patch} ", go_mod, re.M), "kube-compat/go.mod's kubernetes"
    pins = re.findall(r"^\t(k8s\.io/[\w-]+) => k8s\.io/[\w-]+ (v\S+)$", go_mod, re.M)
    assert len(pins) > 20 and {v for _, v in pins} == {f"v0.{minor}.{patch}"}, pins


@pytest.mark.compat
def test_the_apiserver_keeps_the_pdbs_unhealthy_pod_eviction_policy(bed: Bed, release_namespace: str) -> None:
    """The field is beta before 1.31: were its feature gate off, the apiserver would drop it without an error, and the
    server-side dry run above would pass anyway. The object the apiserver returns still has it."""
    [pdb] = [d for d in render(*OPTION_SETS["pdb-one-replica"]) if d["kind"] == "PodDisruptionBudget"]
    result = bed.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(pdb), check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["spec"]["unhealthyPodEvictionPolicy"] == "IfHealthyBudget"


AGGREGATED_VIEW = {("graphcred.io", r, v) for r in ("graphappcredentials", "graphappcredentials/status")
                   for v in ("get", "list", "watch")}
AGGREGATED_EDIT = {("graphcred.io", "graphappcredentials", v)
                   for v in ("create", "update", "patch", "delete", "deletecollection")}


def _aggregated(docs: list[dict[str, Any]]) -> dict[frozenset[str], set[tuple[str, str, str]]]:
    """Rules of the user-facing ClusterRoles, by the set of built-in roles each is aggregated into."""
    out: dict[frozenset[str], set[tuple[str, str, str]]] = {}
    for doc in docs:
        if doc["kind"] == "ClusterRole" and _user_facing(doc):
            into = frozenset(k.rsplit("aggregate-to-", 1)[1] for k, v in doc["metadata"]["labels"].items()
                             if "aggregate-to-" in k and v == "true")
            out[into] = {(g, r, v) for rule in doc["rules"] for g in rule["apiGroups"] for r in rule["resources"]
                         for v in rule["verbs"]}
    return out


@pytest.mark.parametrize("option_set", ["defaults", "namespaced"])
def test_aggregated_roles_grant_exactly_gac_access(option_set: str) -> None:
    assert _aggregated(render(*OPTION_SETS[option_set])) == {
        frozenset({"view", "edit", "admin"}): AGGREGATED_VIEW, frozenset({"edit", "admin"}): AGGREGATED_EDIT}


@pytest.mark.parametrize("option_set", ["no-aggregated-roles", "existing-service-account"])
def test_no_aggregated_roles_when_off_or_without_rbac(option_set: str) -> None:
    assert not _aggregated(render(*OPTION_SETS[option_set]))


def _can(bed: Bed, user: str, verb: str, resource: str, namespace: str, *flags: str) -> bool:
    result = bed.kubectl("auth", "can-i", verb, resource, "--namespace", namespace, "--as", user, *flags, check=False)
    answer: str = result.stdout.strip()
    assert answer in ("yes", "no"), result.stderr
    return answer == "yes"


GAC = "graphappcredentials.graphcred.io"


@pytest.mark.compat
def test_view_edit_and_admin_users_get_gac_access(bed: Bed, release_namespace: str, namespace: str,
                                                  tmp_path: Path) -> None:
    """helm install (CRD left to the session) on the bed; users bound to the built-in roles in one namespace: the
    clusterrole-aggregation controller gives them GraphAppCredential access, no more, and none elsewhere."""
    env = helm_env(tmp_path, bed)
    installed = helm_run("install", "aggregate", str(CHART), "--namespace", RELEASE_NS, "--set", "crds.install=false",
                         env=env)
    assert installed.returncode == 0, installed.stderr
    try:
        for user, role in (("viewer", "view"), ("editor", "edit"), ("owner", "admin")):
            bed.kubectl("create", "rolebinding", user, f"--clusterrole={role}", f"--user={user}", "-n", namespace)
        wait_for(lambda: _can(bed, "viewer", "list", GAC, namespace) and _can(bed, "editor", "create", GAC, namespace),
                 timeout=30, what="the aggregated rules in view and edit")
        for verb in ("get", "list", "watch"):
            assert _can(bed, "viewer", verb, GAC, namespace)
        for verb in ("create", "update", "patch", "delete", "deletecollection"):
            assert not _can(bed, "viewer", verb, GAC, namespace)
            assert _can(bed, "editor", verb, GAC, namespace)
            assert _can(bed, "owner", verb, GAC, namespace)
        assert not _can(bed, "owner", "update", GAC, namespace, "--subresource=status"), "status is the operator's"
        assert _can(bed, "viewer", "get", GAC, namespace, "--subresource=status")
        assert not _can(bed, "viewer", "get", "secrets", namespace), "view still reads no Secret"
        assert not _can(bed, "editor", "list", GAC, RELEASE_NS), "only where the binding is"
        gac = yaml.safe_dump({"apiVersion": "graphcred.io/v1alpha1", "kind": "GraphAppCredential",
                              "metadata": {"name": "by-editor", "namespace": namespace},
                              "spec": {"tenantId": "contoso.onmicrosoft.com",
                                       "clientId": "00000000-0000-0000-0000-000000000001",
                                       "credential": {"clientSecret": {"name": "app"}}}})
        denied = bed.kubectl("create", "--as=viewer", "-f", "-", input=gac, check=False)
        assert denied.returncode == 1 and "Forbidden" in denied.stderr, denied.stderr
        bed.kubectl("create", "--as=editor", "-f", "-", input=gac)
        listed = bed.kubectl("get", "gac", "-n", namespace, "--as=viewer", "-o", "name")
        assert listed.stdout.split() == ["graphappcredential.graphcred.io/by-editor"]
    finally:
        uninstalled = helm_run("uninstall", "aggregate", "--namespace", RELEASE_NS, env=env)
    assert uninstalled.returncode == 0, uninstalled.stderr
    wait_for(lambda: not _can(bed, "viewer", "list", GAC, namespace), timeout=30,
             what="view losing the rules once the release is gone")


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


@pytest.mark.parametrize(("values", "expected"), [
    ([], None),
    (["--set", "replicaCount=2"], {"maxUnavailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow"}),
    (["--set", "podDisruptionBudget.enabled=true"], {"maxUnavailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow"}),
    (OPTION_SETS["pdb-one-replica"], {"maxUnavailable": "50%", "unhealthyPodEvictionPolicy": "IfHealthyBudget"}),
])
def test_pod_disruption_budget(values: list[str], expected: dict[str, Any] | None) -> None:
    """With several replicas (or asked for): one pod down at a time, and a never-Ready (crash-looping) pod may always
    be evicted so it cannot hold up a node drain. Selects exactly the Deployment's pods."""
    docs = render(*values)
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    if expected is None:
        assert not pdbs
        return
    [pdb] = pdbs
    spec = dict(pdb["spec"])
    assert spec.pop("selector") == _one(docs, "Deployment")["spec"]["selector"]
    assert spec == expected, "maxUnavailable, never minAvailable (with one replica that would block every drain)"


def test_network_policy_defaults() -> None:
    docs = render(*OPTION_SETS["network-policy"])
    policy = _one(docs, "NetworkPolicy")["spec"]
    assert policy["podSelector"] == _one(docs, "Deployment")["spec"]["selector"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}]}]
    kube_dns = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                 "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]
    assert policy["egress"] == [
        {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}], "to": kube_dns},
        {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]},
        {"ports": [{"port": 443, "protocol": "TCP"}]},
    ], "DNS, the Kubernetes API and the token endpoint; nothing else"
    assert not [d for d in render() if d["kind"] == "NetworkPolicy"], "opt-in"


def test_network_policy_narrowed() -> None:
    policy = _one(render(*OPTION_SETS["network-policy-narrowed"]), "NetworkPolicy")["spec"]
    assert policy["ingress"] == [{"ports": [{"port": 9090, "protocol": "TCP"}], "from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}]
    assert policy["egress"] == [
        {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
         "to": [{"ipBlock": {"cidr": "169.254.20.10/32"}}]},
        {"ports": [{"port": 6443, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}]},
        {"ports": [{"port": 443, "protocol": "TCP"}],
         "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]},
    ]


# --- monitoring (issue 11, item 4): ServiceMonitor knobs, PrometheusRule, Grafana dashboard -------------------------
# Render-only: the Prometheus Operator's CRDs are not on the bed (no network to fetch them), so their schemas are not
# checked here; the alerts themselves are proven with promtool in test_alerts.py.
def test_service_monitor_knobs() -> None:
    docs = render("--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.serviceMonitor.scrapeTimeout=10s",
                  "--set", "metrics.serviceMonitor.honorLabels=false",
                  "--set", "metrics.serviceMonitor.additionalLabels.release=prometheus",
                  "--set", "metrics.serviceMonitor.labels.team=platform",
                  "--set-json", 'metrics.serviceMonitor.relabelings=[{"targetLabel":"cluster","replacement":"c1"}]',
                  "--set-json", 'metrics.serviceMonitor.metricRelabelings=[{"action":"drop",'
                                '"sourceLabels":["__name__"],"regex":"python_gc_.*"}]')
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    assert {"release": "prometheus", "team": "platform"}.items() <= monitor["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s",
                        "honorLabels": False, "relabelings": [{"targetLabel": "cluster", "replacement": "c1"}],
                        "metricRelabelings": [{"action": "drop", "sourceLabels": ["__name__"],
                                               "regex": "python_gc_.*"}]}


def test_service_monitor_honors_the_credentials_namespace_label_by_default() -> None:
    (monitor,) = [d for d in render("--set", "metrics.serviceMonitor.enabled=true") if d["kind"] == "ServiceMonitor"]
    assert monitor["spec"]["endpoints"][0] == {"port": "metrics", "path": "/metrics", "interval": "30s",
                                               "honorLabels": True}


@pytest.mark.parametrize("bad", ["metrics.serviceMonitor.scrapeTimeout=10 seconds",
                                 "metrics.prometheusRule.alerts.GraphcredDown.for=soon",
                                 "metrics.prometheusRule.alerts.GraphcredTypo.for=5m",
                                 "metrics.prometheusRule.refreshFailingThreshold=0",
                                 "metrics.grafanaDashboard.enable=true"])
def test_monitoring_values_are_checked_by_the_schema(bad: str) -> None:
    out = helm_run("template", "g", str(CHART), "--kube-version", bed_kube_version(), "--set", bad)
    assert out.returncode != 0 and "values don't meet the specifications of the schema" in out.stderr, out.stderr


def test_prometheus_rule_is_opt_in_and_overridable() -> None:
    assert not [d for d in render() if d["kind"] in ("PrometheusRule", "ConfigMap")]
    docs = render("--set", "metrics.prometheusRule.enabled=true",
                  "--set", "metrics.prometheusRule.additionalLabels.release=prometheus",
                  "--set", "metrics.prometheusRule.additionalRuleLabels.team=platform",
                  "--set", "metrics.prometheusRule.alerts.GraphcredDown.for=2m",
                  "--set", "metrics.prometheusRule.alerts.GraphcredDown.severity=page",
                  "--set", "metrics.prometheusRule.alerts.GraphcredUnrefreshableConsumer.enabled=false",
                  "--set", "metrics.prometheusRule.refreshFailingThreshold=3")
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    alerts = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert set(alerts) == {"GraphcredCredentialNotReady", "GraphcredTokenExpiresSoon", "GraphcredRefreshFailing",
                           "GraphcredWorkerDead", "GraphcredDown", "GraphcredCredentialExpiresSoon",
                           "GraphcredCertificateRenewalFailing"}
    assert alerts["GraphcredCertificateRenewalFailing"]["for"] == "30m"
    assert alerts["GraphcredDown"]["for"] == "2m"
    assert alerts["GraphcredDown"]["labels"] == {"severity": "page", "team": "platform"}
    assert alerts["GraphcredDown"]["expr"] == 'absent(up{job="graphcred-metrics"} == 1)'  # the metrics Service
    assert alerts["GraphcredRefreshFailing"]["expr"].endswith(">= 3")


def dashboard(*extra: str) -> tuple[dict[str, Any], dict[str, Any]]:
    (configmap,) = [d for d in render("--set", "metrics.grafanaDashboard.enabled=true", *extra)
                    if d["kind"] == "ConfigMap"]
    return configmap, json.loads(configmap["data"]["graphcred.json"])


def test_grafana_dashboard_configmap_for_the_sidecar() -> None:
    configmap, board = dashboard("--set", "metrics.grafanaDashboard.namespace=monitoring",
                                 "--set", "metrics.grafanaDashboard.annotations.grafana_folder=Platform")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Platform"}
    assert board["uid"] == "graphcred" and board["panels"]
    titles = " ".join(p["title"] for p in board["panels"]).lower()
    for topic in ("reason", "expiry", "refresh failures", "latency", "consumers"):
        assert topic in titles, topic


def test_every_dashboard_query_names_a_metric_the_operator_exposes(env: Env) -> None:
    """Scraped from a running operator with a credential: a renamed metric breaks the dashboard, and this."""
    app = env.secret_app("pw", secret_name="cred")
    env.create("scraped", app, {"clientSecret": {"name": "cred"}})
    env.wait_ready("scraped")
    text = requests_get(env.operator.metrics_url() + "/metrics")
    families = set(re.findall(r"^# TYPE (\w+) (\w+)$", text, re.M))
    exposed = {name for name, _ in families}
    exposed |= {f"{n}{s}" for n, kind in families for s in ("_total", "_bucket", "_count", "_sum")
                if kind in ("counter", "histogram")}
    _, board = dashboard()
    queries = [t["expr"] for p in board["panels"] for t in p["targets"]]
    queries += [v["definition"] for v in board["templating"]["list"] if "definition" in v]
    used = {m for q in queries for m in re.findall(r"\bgraphcred_\w+", q)}
    assert len(used) >= 8 and not used - exposed, sorted(used - exposed)


def requests_get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        body: bytes = resp.read()
    return body.decode()


# --- issue 24 item 6: the admission policy and the metrics NetworkPolicy (rendered; enforced: test_admission_policy)
def _policy(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    return _one(docs, "ValidatingAdmissionPolicy"), _one(docs, "ValidatingAdmissionPolicyBinding")


def _expressions(policy: dict[str, Any]) -> str:
    spec = policy["spec"]
    return " ".join([v["expression"] for v in spec["variables"] + spec["validations"]])


def test_admission_policy_is_on_by_default_and_binds_the_operator_only() -> None:
    policy, binding = _policy(render())
    spec = policy["spec"]
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    assert spec["failurePolicy"] == "Fail"
    user = "system:serviceaccount:graphcred-system:graphcred"
    assert spec["matchConditions"] == [{"name": "operator-service-account",
                                        "expression": f'request.userInfo.username == "{user}"'}]
    assert spec["matchConstraints"]["resourceRules"] == [{"apiGroups": [""], "apiVersions": ["*"],
                                                          "resources": ["secrets"],
                                                          "operations": ["CREATE", "UPDATE", "DELETE"]}]
    assert "AzureADTokenExchange" not in _expressions(policy), "no TokenRequest rule without workload identity"
    assert not [d for d in render(*OPTION_SETS["no-admission-policy"]) if d["kind"] in POLICY_KINDS]


def test_admission_policy_names_an_existing_service_account() -> None:
    policy, _ = _policy(render(*OPTION_SETS["existing-service-account"]))
    [condition] = policy["spec"]["matchConditions"]
    assert condition["expression"] == 'request.userInfo.username == "system:serviceaccount:graphcred-system:ops"'


def test_admission_policy_limits_token_requests_with_workload_identity() -> None:
    policy, _ = _policy(render(*OPTION_SETS["workload-identity"]))
    rules = policy["spec"]["matchConstraints"]["resourceRules"]
    assert [r["resources"] for r in rules] == [["secrets"], ["serviceaccounts/token"]]
    assert rules[1]["operations"] == ["CREATE"]
    text = _expressions(policy)
    for audience in ("api://AzureADTokenExchange'", "api://AzureADTokenExchangeUSGov'",
                     "api://AzureADTokenExchangeChina'"):
        assert audience in text


def test_admission_policy_types_are_the_crds_types() -> None:
    """The policy allows exactly the Secret types spec.secretTemplate.type may name (the CRD's CEL rule)."""
    from graphcred.api.model import _CEL_ORDINARY_TYPE

    policy, _ = _policy(render())
    [ordinary] = [v["expression"] for v in policy["spec"]["variables"] if v["name"] == "ordinaryType"]
    assert " ".join(ordinary.split()) == " ".join(_CEL_ORDINARY_TYPE.replace("self", "variables.type").split())


def test_metrics_network_policy_is_ingress_only() -> None:
    docs = render(*OPTION_SETS["metrics-network-policy"])
    policy = _one(docs, "NetworkPolicy")
    assert policy["metadata"]["name"] == "graphcred-metrics"
    spec = policy["spec"]
    assert spec["podSelector"] == _one(docs, "Deployment")["spec"]["selector"]
    assert spec["policyTypes"] == ["Ingress"], "egress left alone"
    assert spec["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}], "from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
         "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]}]
    closed = _one(render(*OPTION_SETS["metrics-network-policy-closed"]), "NetworkPolicy")["spec"]
    assert closed["policyTypes"] == ["Ingress"] and closed["ingress"] == [], "no peer listed: nobody scrapes"


def test_metrics_network_policy_is_not_voided_by_the_full_one() -> None:
    """NetworkPolicies add up: the full policy's default (metrics from anyone) would void the metrics one."""
    out = helm_run("template", "graphcred", str(CHART), "--kube-version", bed_kube_version(),
                   "--set", "metrics.networkPolicy.enabled=true", "--set", "networkPolicy.enabled=true")
    assert out.returncode == 1 and "set networkPolicy.metrics.from" in out.stderr, out.stderr
    both = render(*OPTION_SETS["metrics-network-policy"], "--set", "networkPolicy.enabled=true", "--set-json",
                  'networkPolicy.metrics.from=[{"ipBlock":{"cidr":"10.1.0.0/16"}}]')
    assert sorted(d["metadata"]["name"] for d in both if d["kind"] == "NetworkPolicy") == [
        "graphcred", "graphcred-metrics"]


@pytest.mark.compat
def test_the_quota_in_the_install_guide_is_accepted(bed: Bed, release_namespace: str) -> None:
    """docs/install.md, "Multi-tenant clusters": the per-namespace ResourceQuota on GraphAppCredentials, as printed."""
    text = (ROOT / "docs" / "install.md").read_text()
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "kind: ResourceQuota" in b]
    quota = yaml.safe_load(textwrap.dedent(block))
    assert quota["spec"]["hard"] == {"count/graphappcredentials.graphcred.io": "50"}
    result = bed.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(quota), check=False)
    assert result.returncode == 0, result.stderr


# --- issue 26: cluster apps (ClusterGraphApp): the operator's rules, the platform-admin role, who may write them ------
CGA = "clustergraphapps.graphcred.io"
PLATFORM_ADMIN = {("graphcred.io", "clustergraphapps", v)
                  for v in ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")} | \
    {("graphcred.io", r, v) for r in ("clustergraphapps/status", "graphappcredentials", "graphappcredentials/status")
     for v in ("get", "list", "watch")} | {("", "namespaces", v) for v in ("get", "list", "watch")}


def _named(docs: list[dict[str, Any]], kind: str, suffix: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]


@pytest.mark.parametrize("option_set", sorted(s for s in OPTION_SETS if s != "existing-service-account"))
def test_cluster_app_rules_are_cluster_wide_and_read_only_in_every_mode(option_set: str) -> None:
    """A policy may select any namespace, so ClusterGraphApps and namespace labels are read cluster-wide whatever
    watchNamespaces says; the operator writes only the apps' status, and no namespace."""
    by_scope = _rules_by_scope(render(*OPTION_SETS[option_set]))
    assert {r[1:] for r in CLUSTER_APPS} <= by_scope["cluster"]
    for scope, rules in by_scope.items():
        cga = {r for r in rules if r[1].startswith("clustergraphapps") or r[1] == "namespaces"}
        assert cga == ({r[1:] for r in CLUSTER_APPS} if scope == "cluster" else set()), scope


@pytest.mark.parametrize(("values", "resources", "events"), [
    ([], None, False),  # the ClusterRole covers every namespace
    (OPTION_SETS["cluster-apps-resource-namespace"], None, False),
    (OPTION_SETS["namespaced"], RELEASE_NS, True),
    (OPTION_SETS["cluster-apps-namespaced"], PLATFORM_NS, True),
    (["--set", "watchNamespaces={team-a,graphcred-system}"], None, True),  # the resource namespace is watched
    (["--set", "watchNamespaces={team-a,default}", "--set", f"clusterApps.resourceNamespace={PLATFORM_NS}"],
     PLATFORM_NS, False),  # `default` is watched: its Role already grants Events
], ids=["cluster", "cluster-resource-namespace", "namespaced", "namespaced-resource-namespace",
        "namespaced-resource-namespace-watched", "namespaced-default-watched"])
def test_cluster_resource_namespace_gets_a_role_only_where_not_covered(values: list[str], resources: str | None,
                                                                       events: bool) -> None:
    docs = render(*values)
    roles = _named(docs, "Role", "-cluster-resources")
    assert [r["metadata"]["namespace"] for r in roles] == ([resources] if resources else [])
    if resources:
        assert _rules_by_scope(roles + _named(docs, "RoleBinding", "-cluster-resources"))[resources] == \
            CLUSTER_RESOURCES, "read only, and bound to the operator: graphcred writes nothing there"
    assert [r["metadata"]["namespace"] for r in _named(docs, "Role", "-cluster-events")] == \
        (["default"] if events else [])
    if any(v.startswith("watchNamespaces=") for v in values):  # Events in default: its own Role, or the watched one's
        assert _rules_by_scope(docs)["default"] >= CLUSTER_EVENTS


def test_cluster_resource_namespace_serves_federation_only_with_workload_identity() -> None:
    by_scope = _rules_by_scope(render(*OPTION_SETS["workload-identity-cluster-apps-namespaced"]))
    assert by_scope[PLATFORM_NS] == CLUSTER_RESOURCES | WORKLOAD_IDENTITY
    assert _rules_by_scope(render(*OPTION_SETS["cluster-apps-namespaced"]))[PLATFORM_NS] == CLUSTER_RESOURCES


@pytest.mark.parametrize(("values", "expected"), [([], RELEASE_NS),
                                                  (OPTION_SETS["cluster-apps-resource-namespace"], PLATFORM_NS)])
def test_the_deployment_names_the_cluster_resource_namespace(values: list[str], expected: str) -> None:
    [deploy] = [d for d in render(*values) if d["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GRAPHCRED_CLUSTER_RESOURCE_NAMESPACE"] == expected


def test_platform_admin_role_is_unbound_and_not_aggregated() -> None:
    docs = render()
    [role] = _named(docs, "ClusterRole", "-platform-admin")
    assert role["metadata"]["name"] == "graphcred-platform-admin"
    assert not _user_facing(role), "aggregated into view/edit/admin it would hand tenants every app's policy"
    assert {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]} == PLATFORM_ADMIN
    assert not [d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")
                and d["roleRef"]["name"] == role["metadata"]["name"]], "the cluster admin binds it, to whom they choose"
    for values in (OPTION_SETS["no-platform-admin-role"], OPTION_SETS["existing-service-account"]):
        assert not _named(render(*values), "ClusterRole", "-platform-admin")


@pytest.mark.parametrize("option_set", sorted(OPTION_SETS))
def test_aggregated_roles_grant_nothing_on_cluster_apps(option_set: str) -> None:
    """Not writing, not even reading: whoever holds view/edit/admin (in a namespace, or cluster-wide) gets nothing on
    ClusterGraphApps from the chart."""
    for rules in _aggregated(render(*OPTION_SETS[option_set])).values():
        assert not [r for r in rules if r[1].startswith("clustergraphapps") or r[1] == "namespaces" or "*" in r]


@contextmanager
def cluster_app_crd(bed: Bed) -> Iterator[None]:
    """The ClusterGraphApp CRD on the bed (the session installs crds/, both CRDs)."""
    bed.kubectl("wait", "--for=condition=Established", f"crd/{CGA}")
    yield


def _review(bed: Bed, user: str, verb: str, resource: str, namespace: str = "", subresource: str = "",
            name: str = "") -> bool:
    """A SubjectAccessReview, as `kubectl auth can-i` sends it, but with the namespace exactly as a request would
    carry it: none for a cluster-scoped resource (a RoleBinding can never grant one)."""
    plural, _, group = resource.partition(".")
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{user.split(':')[2]}"] \
        if user.startswith("system:serviceaccount:") else []
    review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=user, groups=[*groups, "system:authenticated"],
        resource_attributes=client.V1ResourceAttributes(group=group, resource=plural, verb=verb, namespace=namespace,
                                                        subresource=subresource, name=name)))
    answer = client.AuthorizationV1Api(bed.api).create_subject_access_review(review)
    return answer.status is not None and answer.status.allowed is True


def _print_matrix(title: str, columns: list[str], rows: dict[str, list[bool]]) -> None:
    width = max(len(r) for r in rows)
    print(f"\n{title}")
    print(" | ".join([" " * width, *columns]))
    for who, answers in rows.items():
        print(" | ".join([who.ljust(width), *[("yes" if a else "no").ljust(len(c)) for c, a in zip(columns, answers,
                                                                                                   strict=True)]]))


def _cga_manifest(name: str) -> dict[str, Any]:
    return {"apiVersion": "graphcred.io/v1alpha1", "kind": "ClusterGraphApp", "metadata": {"name": name},
            "spec": {"tenantId": "contoso.onmicrosoft.com", "clientId": "00000000-0000-0000-0000-000000000001",
                     "credential": {"clientSecret": {"name": "mail-platform", "key": "clientSecret"}},
                     "policy": {"namespaceSelector": {"matchLabels": {"graph-mail": "allowed"}},
                                "allowedScopes": ["https://graph.microsoft.com/.default"]}}}


@pytest.mark.compat
def test_only_the_platform_admin_may_write_cluster_apps(bed: Bed, release_namespace: str, namespace: str,
                                                       tmp_path: Path) -> None:
    """helm install on the bed; users bound to view, edit and admin in one namespace, one bound to edit cluster-wide
    (ClusterRoleBinding: the aggregated roles themselves, not the binding's reach, must keep ClusterGraphApps out),
    and one bound to the platform-admin role. The answers are the apiserver's authorizer's (SubjectAccessReview), and a
    real create (server-side dry run) agrees. Prints the matrix (-s)."""
    env = helm_env(tmp_path, bed)
    release = "cga-roles"
    admin_role = f"{release}-graphcred-platform-admin"
    installed = helm_run("install", release, str(CHART), "--namespace", RELEASE_NS, "--set", "crds.install=false",
                         env=env)
    assert installed.returncode == 0, installed.stderr
    cluster_bindings = {"cga-roles-cluster-editor": ("edit", "cluster-editor"),
                        "cga-roles-platform-admin": (admin_role, "platform-admin")}
    try:
        with cluster_app_crd(bed):
            for user, role in (("viewer", "view"), ("editor", "edit"), ("owner", "admin")):
                bed.kubectl("create", "rolebinding", user, f"--clusterrole={role}", f"--user={user}", "-n", namespace)
            for binding, (role, user) in cluster_bindings.items():
                bed.kubectl("create", "clusterrolebinding", binding, f"--clusterrole={role}", f"--user={user}")
            wait_for(lambda: _review(bed, "viewer", "list", GAC, namespace)
                     and _review(bed, "editor", "create", GAC, namespace), timeout=30,
                     what="the aggregated rules in view and edit")
            # (column, (verb, resource, namespace, subresource, name)); ClusterGraphApps are cluster-scoped: no
            # namespace, as a real request carries none
            checks: list[tuple[str, tuple[str, str, str, str, str]]] = [
                *[(f"cga {v}", (v, CGA, "", "", "")) for v in ("get", "list", "create", "update", "patch", "delete",
                                                                "deletecollection")],
                ("cga/status update", ("update", CGA, "", "status", "")),
                ("gac create", ("create", GAC, namespace, "", "")),
                ("gac list", ("list", GAC, namespace, "", "")),
                ("gac list team-b", ("list", GAC, "team-b", "", "")),
                # a namespace object is authorized in its own namespace: a RoleBinding there could grant relabelling
                # it (and so a policy's reach); the built-in roles do not
                ("label own ns", ("patch", "namespaces", namespace, "", namespace)),
            ]
            users = ["viewer", "editor", "owner", "cluster-editor", "platform-admin"]
            matrix = {u: [_review(bed, u, *attributes) for _, attributes in checks] for u in users}
            columns = [c for c, _ in checks]
            _print_matrix(f"SubjectAccessReview matrix (tenant namespace {namespace}; release {release})", users,
                          {c: [matrix[u][i] for u in users] for i, c in enumerate(columns)})
            expected_tenant = {c: c in ("gac list",) for c in columns}
            expect = {
                "viewer": expected_tenant,
                "editor": {**expected_tenant, "gac create": True},
                "owner": {**expected_tenant, "gac create": True},
                "cluster-editor": {**expected_tenant, "gac create": True, "gac list team-b": True},
                "platform-admin": {c: c.startswith("cga ") or c.startswith("gac list") for c in columns},
            }
            for user in users:
                assert dict(zip(columns, matrix[user], strict=True)) == expect[user], user
            for user in ("editor", "owner", "cluster-editor"):
                refused = bed.kubectl("create", f"--as={user}", "--dry-run=server", "-f", "-",
                                      input=json.dumps(_cga_manifest("by-tenant")), check=False)
                assert refused.returncode == 1 and "Forbidden" in refused.stderr, (user, refused.stderr)
            accepted = bed.kubectl("create", "--as=platform-admin", "--dry-run=server", "-f", "-",
                                   input=json.dumps(_cga_manifest("by-platform")), check=False)
            assert accepted.returncode == 0, accepted.stderr
    finally:
        bed.kubectl("delete", "clusterrolebinding", "--ignore-not-found", *cluster_bindings, check=False)
        uninstalled = helm_run("uninstall", release, "--namespace", RELEASE_NS, env=env)
    assert uninstalled.returncode == 0, uninstalled.stderr


# (what, verb, resource, namespace ("" = cluster-scoped), subresource) -> the answer, per mode
OPERATOR_CHECKS: list[tuple[str, str, str, str, str]] = [
    ("namespaces list", "list", "namespaces", "", ""),
    ("namespaces watch", "watch", "namespaces", "", ""),
    ("namespaces patch", "patch", "namespaces", "", ""),
    ("cga list", "list", CGA, "", ""),
    ("cga watch", "watch", CGA, "", ""),
    ("cga create", "create", CGA, "", ""),
    ("cga update", "update", CGA, "", ""),
    ("cga delete", "delete", CGA, "", ""),
    ("cga/status patch", "patch", CGA, "", "status"),
    ("secrets get (resource ns)", "get", "secrets", PLATFORM_NS, ""),
    ("secrets watch (resource ns)", "watch", "secrets", PLATFORM_NS, ""),
    ("secrets create (resource ns)", "create", "secrets", PLATFORM_NS, ""),
    ("secrets delete (resource ns)", "delete", "secrets", PLATFORM_NS, ""),
    ("sa token (resource ns)", "create", "serviceaccounts", PLATFORM_NS, "token"),
    ("events create (default)", "create", "events", "default", ""),
    ("secrets list (team-b)", "list", "secrets", "team-b", ""),
]
CLUSTER_MODE = {"namespaces list", "namespaces watch", "cga list", "cga watch", "cga/status patch",
                "secrets get (resource ns)", "secrets watch (resource ns)", "events create (default)",
                "secrets list (team-b)",
                # the cluster-wide Secret grant of the GraphAppCredentials' token Secrets (admission narrows writes)
                "secrets create (resource ns)", "secrets delete (resource ns)"}
NAMESPACED_MODE = CLUSTER_MODE - {"secrets list (team-b)", "secrets create (resource ns)",
                                  "secrets delete (resource ns)"}


@pytest.mark.parametrize(("mode", "values", "expected"), [
    pytest.param("cluster", OPTION_SETS["cluster-apps-resource-namespace"], CLUSTER_MODE, marks=pytest.mark.compat),
    ("namespaced", ["--set", "watchNamespaces={team-a}", "--set", f"clusterApps.resourceNamespace={PLATFORM_NS}"],
     NAMESPACED_MODE),
    ("namespaced-wi", ["--set", "watchNamespaces={team-a}", "--set", f"clusterApps.resourceNamespace={PLATFORM_NS}",
                       "--set", "workloadIdentity.enabled=true"], NAMESPACED_MODE | {"sa token (resource ns)"}),
])
def test_the_operators_service_account_may_do_exactly_this_for_cluster_apps(
        bed: Bed, release_namespace: str, mode: str, values: list[str], expected: set[str]) -> None:
    """The chart's RBAC applied to the bed (a release of its own), asked of the authorizer as the operator's
    ServiceAccount: namespace labels and ClusterGraphApps read cluster-wide, only their status written, the cluster
    resource namespace read (with watchNamespaces: through its own Role, nothing else there), Events in default."""
    release = f"cga-sa-{mode}"
    docs = [d for d in render(*values, release=release) if d["kind"] in RBAC_KINDS]
    manifest = yaml.safe_dump_all(docs)
    user = f"system:serviceaccount:{RELEASE_NS}:{release}-graphcred"
    bed.kubectl("apply", "--server-side", "-f", "-", input=manifest)
    try:
        wait_for(lambda: _review(bed, user, "list", "namespaces"), timeout=15, what="the chart's RBAC in effect")
        answers = [_review(bed, user, verb, res, ns, sub) for _, verb, res, ns, sub in OPERATOR_CHECKS]
        _print_matrix(f"the operator's ServiceAccount, {mode} ({' '.join(values[1::2])})", ["allowed"],
                      {what: [a] for (what, *_), a in zip(OPERATOR_CHECKS, answers, strict=True)})
        assert {what for (what, *_), a in zip(OPERATOR_CHECKS, answers, strict=True) if a} == expected
    finally:
        bed.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=manifest, check=False)
