"""The Helm chart: lint, CRD identical to crds/, every documented option set accepted by the real apiserver
(server-side dry run), least-privilege RBAC (ServiceAccount access only with workloadIdentity.enabled, pod access
only with consumerWarnings.enabled), and the operator really working with exactly that RBAC, cluster-wide and in
watchNamespaces mode."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from graphcred_testbed import issuer as bed_issuer
from graphcred_testbed.bed import Bed, wait_for
from graphcred_testbed.binaries import binary
from graphcred_testbed.operator_process import OperatorProcess

from ..helpers import Env

pytestmark = pytest.mark.bed

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "graphcred"
RELEASE_NS = "graphcred-system"

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
}

SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
             "names": {"kind": "ServiceMonitor", "plural": "servicemonitors"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
}


def helm(*args: str) -> str:
    out = subprocess.run([binary("helm"), *args], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def render(*args: str, release: str = "graphcred") -> list[dict[str, Any]]:
    text = helm("template", release, str(CHART), "--namespace", RELEASE_NS, *args)
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="module")
def release_namespace(bed: Bed) -> str:
    for ns in (RELEASE_NS, "team-a", "team-b"):
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


def test_helm_lint_is_clean() -> None:
    out = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in out


def test_chart_crd_is_the_committed_crd() -> None:
    [crd] = [d for d in render() if d["kind"] == "CustomResourceDefinition"]
    assert crd["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
    assert crd == yaml.safe_load((ROOT / "crds" / "graphappcredentials.yaml").read_text())
    assert not [d for d in render("--set", "crds.install=false") if d["kind"] == "CustomResourceDefinition"]


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


def _rules(docs: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """(kind of role, apiGroup, resource, verb) for every rule the chart grants."""
    granted = set()
    for doc in docs:
        if doc["kind"] in ("ClusterRole", "Role"):
            for rule in doc["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for verb in rule["verbs"]:
                            granted.add((doc["kind"], group, resource, verb))
    return granted


NAMESPACED = {("graphcred.io", "graphappcredentials", v) for v in ("get", "list", "watch")} | \
    {("graphcred.io", "graphappcredentials/status", v) for v in ("get", "patch", "update")} | \
    {("graphcred.io", "graphappcredentials/finalizers", "update")} | \
    {("", "secrets", v) for v in ("get", "list", "watch", "create", "update", "delete")} | \
    {("", "events", v) for v in ("create", "patch")}
CRD_READ = {("ClusterRole", "apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("get", "list", "watch")}
LEASES = {("Role", "coordination.k8s.io", "leases", v) for v in ("get", "create", "update")}


def test_default_rbac_grants_nothing_beyond_the_list() -> None:
    assert _rules(render()) == CRD_READ | LEASES | {("ClusterRole", *r) for r in NAMESPACED}


def test_namespaced_rbac_uses_roles_only() -> None:
    docs = render(*OPTION_SETS["namespaced"])
    assert _rules(docs) == CRD_READ | LEASES | {("Role", *r) for r in NAMESPACED}
    assert sorted(d["metadata"]["namespace"] for d in docs if d["kind"] == "RoleBinding"
                  and d["metadata"]["name"] == "graphcred") == ["team-a", "team-b"]


WORKLOAD_IDENTITY = {("", "serviceaccounts", v) for v in ("get", "list", "watch")} | \
    {("", "serviceaccounts/token", "create")}


def _rules_by_scope(docs: list[dict[str, Any]]) -> dict[str, set[tuple[str, str, str]]]:
    """(apiGroup, resource, verb) granted, by where: "cluster" (ClusterRoles) or a Role's namespace."""
    granted: dict[str, set[tuple[str, str, str]]] = {}
    for doc in docs:
        if doc["kind"] in ("ClusterRole", "Role"):
            scope = "cluster" if doc["kind"] == "ClusterRole" else doc["metadata"]["namespace"]
            granted.setdefault(scope, set()).update(
                (group, resource, verb) for rule in doc["rules"] for group in rule["apiGroups"]
                for resource in rule["resources"] for verb in rule["verbs"])
    return granted


def test_workload_identity_rbac_cluster_wide() -> None:
    docs = render(*OPTION_SETS["workload-identity"])
    assert _rules(docs) == CRD_READ | LEASES | {("ClusterRole", *r) for r in NAMESPACED | WORKLOAD_IDENTITY}


def test_workload_identity_rbac_in_watch_namespaces_only() -> None:
    by_scope = _rules_by_scope(render(*OPTION_SETS["workload-identity-namespaced"]))
    assert by_scope["team-a"] == by_scope["team-b"] == NAMESPACED | WORKLOAD_IDENTITY
    assert {r[1:] for r in CRD_READ} == by_scope["cluster"], "nothing but the CRD read cluster-wide"
    assert {r[1:] for r in LEASES} == by_scope[RELEASE_NS], "the release namespace: the Lease only"
    assert set(by_scope) == {"cluster", "team-a", "team-b", RELEASE_NS}


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


PODS = {("", "pods", v) for v in ("get", "list", "watch")}


def test_consumer_warnings_rbac_cluster_wide() -> None:
    docs = render(*OPTION_SETS["consumer-warnings"])
    assert _rules(docs) == CRD_READ | LEASES | {("ClusterRole", *r) for r in NAMESPACED | PODS}


def test_consumer_warnings_rbac_in_watch_namespaces_only() -> None:
    by_scope = _rules_by_scope(render(*OPTION_SETS["consumer-warnings-namespaced"]))
    assert by_scope["team-a"] == by_scope["team-b"] == NAMESPACED | PODS
    assert {r[1:] for r in CRD_READ} == by_scope["cluster"], "nothing but the CRD read cluster-wide"
    assert {r[1:] for r in LEASES} == by_scope[RELEASE_NS], "the release namespace: the Lease only"


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


RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
# an HTTP 403 however it is logged ("HTTP 403", "ApiException 403", "(403)"), not a port or time that holds "403"
FORBIDDEN = re.compile(r"Forbidden|(?<![\d.:])403(?!\d)")


@contextmanager
def chart_operator(env: Env, logdir: Path, release: str, values: list[str], *args: str) -> Iterator[OperatorProcess]:
    """The operator running as the chart's ServiceAccount with exactly the chart's RBAC for `values` (a release of
    its own: no other release's grants apply), instead of the session's operator. Removes the grants afterwards."""
    docs = [d for d in render(*values, release=release) if d["kind"] in RBAC_KINDS]
    manifest = yaml.safe_dump_all(docs)
    env.bed.kubectl("apply", "--server-side", "-f", "-", input=manifest)
    [account] = [d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"]
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
        denied = FORBIDDEN.findall(chart_op.logs(this_run=True))
        assert not denied, f"the chart's RBAC refused the operator something: {denied[:3]}"
    finally:
        chart_op.stop()
        env.operator.start()
        env.bed.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=manifest, check=False)


def _scope(scope: str, env: Env) -> tuple[list[str], tuple[str, ...]]:
    """Chart values and operator flags for watching the whole cluster, or only the test's namespace."""
    if scope == "cluster":
        return [], ()
    return ["--set", f"watchNamespaces={{{env.namespace}}}"], (f"--namespace={env.namespace}",)


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
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
    missing = [k for k in _leaf_keys(values) if f"`{k}`" not in readme]
    assert not missing, f"values missing from charts/graphcred/README.md: {missing}"
    assert text.count("# -- ") >= len(_leaf_keys(values)), "every value has a `# --` comment in values.yaml"


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


def _created(env: Env, pod: dict[str, Any]) -> bool:
    """Create the pod; False while the new namespace's default ServiceAccount is not there yet."""
    try:
        env.bed.core.create_namespaced_pod(env.namespace, pod)
    except client.ApiException as exc:
        if exc.status == 403 and "serviceaccount" in str(exc.body):
            return False
        raise
    return True
