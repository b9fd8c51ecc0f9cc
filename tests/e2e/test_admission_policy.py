"""The chart's ValidatingAdmissionPolicy on the real apiserver (issue 24 item 6; security review §9). Requests made as
the operator's ServiceAccount (impersonated: kubectl --as) may create and change only the Secrets the operator
writes, never a kubernetes.io/service-account-token Secret, and, with workload identity, request ServiceAccount
tokens only for Entra's exchange audiences. Every refusal is first shown allowed by the chart's RBAC alone (a server
dry run): the policy, not RBAC, refuses it. What the real operator does (create, merge patch, a namesake's Secret
adopted, delete and create on a type change, delete after a rename) passes, with exactly the chart's RBAC and
policy."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from graphcred.api.keys import GROUP, KIND, VERSION
from graphcred_testbed.bed import Bed, wait_for

from ..helpers import Env
from .test_chart import (  # noqa: F401 - release_namespace: a fixture
    POLICY_KINDS,
    RBAC_KINDS,
    RELEASE_NS,
    as_user,
    chart_operator,
    refused_by_policy,
    release_namespace,
    render,
    wait_policy_enforced,
    wait_policy_lifted,
)

pytestmark = [pytest.mark.bed, pytest.mark.compat]

RELEASE = "vap"
USER = f"system:serviceaccount:{RELEASE_NS}:{RELEASE}-graphcred"
LABELS = {"app.kubernetes.io/managed-by": "graphcred"}


class Chart:
    """The chart's RBAC for `values`, applied for release `vap`; its admission policy applied by `enforce`."""

    def __init__(self, bed: Bed, values: list[str]) -> None:
        self.bed = bed
        docs = render(*values, release=RELEASE)
        self.rbac = yaml.safe_dump_all([d for d in docs if d["kind"] in RBAC_KINDS])
        self.policy = yaml.safe_dump_all([d for d in docs if d["kind"] in POLICY_KINDS])
        assert "kind: ValidatingAdmissionPolicyBinding" in self.policy
        self.enforced_in: str | None = None
        bed.kubectl("apply", "--server-side", "-f", "-", input=self.rbac)

    def enforce(self, namespace: str) -> None:
        self.bed.kubectl("apply", "--server-side", "-f", "-", input=self.policy)
        wait_policy_enforced(self.bed, USER, namespace)
        self.enforced_in = namespace

    def remove(self) -> None:
        """The policy, then the RBAC: the next test applies the same release's RBAC and must not meet this policy
        (unloaded asynchronously: its dry runs, seen refused by it, failed on a busy bed)."""
        self.bed.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=self.policy, check=False)
        if self.enforced_in is not None:
            wait_policy_lifted(self.bed, USER, self.enforced_in)
        self.bed.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=self.rbac, check=False)


@pytest.fixture
def chart(bed: Bed, release_namespace: str, request: pytest.FixtureRequest) -> Iterator[Chart]:  # noqa: F811
    values: list[str] = getattr(request, "param", [])
    installed = Chart(bed, values)
    try:
        yield installed
    finally:
        installed.remove()


def owner(env: Env, name: str) -> dict[str, Any]:
    """A controller owner reference to a real GraphAppCredential (it names a Secret that does not exist, so the
    session's operator writes no token Secret for it)."""
    app = env.register_app(secret="s")
    obj = env.create(name, app, {"clientSecret": {"name": "absent"}})
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": name, "uid": obj["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}


def secret(env: Env, name: str, *, type_: str = "Opaque", labels: dict[str, str] | None = None,
           owners: list[dict[str, Any]] | None = None, annotations: dict[str, str] | None = None,
           data: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": env.namespace, "labels": labels or {},
                            "annotations": annotations or {}}
    if owners:
        meta["ownerReferences"] = owners
    return {"apiVersion": "v1", "kind": "Secret", "type": type_, "metadata": meta,
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in (data or {"access_token": "x"}).items()}}


Request = tuple[str, list[str], dict[str, Any] | None]


def run(env: Env, request: Request, *, dry_run: bool = False) -> subprocess.CompletedProcess[str]:
    _, args, manifest = request
    # `kubectl create token` has no dry run: those tokens are really issued (10 minutes, bound to nothing, unprinted)
    dry = ["--dry-run=server"] if dry_run and args[:2] != ["create", "token"] else []
    return as_user(env.bed, USER, *args, "-n", env.namespace, *dry, manifest=manifest)


def refused_only_by_the_policy(env: Env, chart: Chart, requests: list[Request]) -> None:
    """Each request passes RBAC (a server dry run before the policy is applied), then the policy refuses it."""
    for request in requests:
        result = run(env, request, dry_run=True)
        assert result.returncode == 0, f"{request[0]}: the chart's RBAC alone refuses it already: {result.stderr}"
    chart.enforce(env.namespace)
    for request in requests:
        result = run(env, request)
        assert refused_by_policy(result), f"{request[0]}: not refused by the policy: {result.returncode} " \
                                          f"{result.stderr}"
        assert f"{RELEASE}-graphcred-operator-writes" in result.stderr, result.stderr


def test_the_operators_identity_may_not_create_a_service_account_token_secret(env: Env, chart: Chart) -> None:
    """The escalation of security review §9: the token controller fills such a Secret with a token of the
    ServiceAccount it names in its namespace (in kube-system, a controller's: cluster-admin-equivalent). Here in the
    test's namespace, labelled and owned like a token Secret, so that its type alone is what the policy refuses."""
    ref = owner(env, "owner")
    sa_token = {"kubernetes.io/service-account.name": "namespace-controller"}
    kinds = {"kubernetes.io/service-account-token": {}, "kubernetes.io/dockerconfigjson": {".dockerconfigjson": "{}"},
             "bootstrap.kubernetes.io/token": {"token-id": "abcdef", "token-secret": "0123456789abcdef"}}
    creates = [(f"a {type_} Secret", ["create", "-f", "-"],
                secret(env, f"t{i}", type_=type_, labels=LABELS, owners=[ref], annotations=sa_token, data=data))
               for i, (type_, data) in enumerate(kinds.items())]
    refused_only_by_the_policy(env, chart, creates)
    result = run(env, creates[0])
    assert "graphcred writes no Secret of type kubernetes.io/service-account-token" in result.stderr, result.stderr
    assert env.secret("t0") is None


def test_the_operators_identity_writes_only_secrets_a_credential_controls(env: Env, chart: Chart) -> None:
    ref = owner(env, "owner")
    # The Secret a credential adopts was controlled by another GraphAppCredential (in the operator: a deleted one of
    # the same name). A real one here: with a dangling owner reference the garbage collector deletes the Secret
    # while the test runs (seen in CI: "secrets left not found").
    namesake = owner(env, "previous")
    env.bed.core.create_namespaced_secret(env.namespace, secret(env, "theirs", labels={"app": "db"}))
    env.bed.core.create_namespaced_secret(env.namespace, secret(env, "labelled-only", labels=LABELS))
    env.bed.core.create_namespaced_secret(env.namespace, secret(env, "left", labels=LABELS, owners=[namesake]))
    not_controller = {**ref, "controller": False}
    refused_only_by_the_policy(env, chart, [
        ("create without the label", ["create", "-f", "-"], secret(env, "a", owners=[ref])),
        ("create without an owner", ["create", "-f", "-"], secret(env, "b", labels=LABELS)),
        ("create owned, not controlled", ["create", "-f", "-"], secret(env, "c", labels=LABELS,
                                                                       owners=[not_controller])),
        ("patch a Secret of someone else", ["patch", "secret", "theirs", "--type=merge", "-p",
                                            '{"metadata":{"labels":{"app.kubernetes.io/managed-by":"graphcred"}}}'],
         None),
        ("patch a Secret that is only labelled", ["patch", "secret", "labelled-only", "--type=merge", "-p",
                                                  '{"data":{"access_token":"eA=="}}'], None),
        ("take a Secret over", ["patch", "secret", "theirs", "--type=merge", "-p", json.dumps(
            {"metadata": {"labels": LABELS, "ownerReferences": [ref]}})], None),
        ("drop the owner reference", ["patch", "secret", "left", "--type=merge", "-p",
                                      '{"metadata":{"ownerReferences":null}}'], None),
        ("delete a Secret of someone else", ["delete", "secret", "theirs"], None),
    ])
    assert env.secret("theirs") is not None and env.secret("a") is None
    # what the operator does (operator/graphcred/tokensecret/render.py, reconciler.py): all allowed
    for request in [
        ("create a token Secret", ["create", "-f", "-"], secret(env, "own", labels=LABELS, owners=[ref])),
        ("create a basic-auth one", ["create", "-f", "-"], secret(env, "git", type_="kubernetes.io/basic-auth",
                                                                  labels=LABELS, owners=[ref],
                                                                  data={"username": "u", "password": "p"})),
        ("create one of a custom type", ["create", "-f", "-"], secret(env, "custom", type_="example.com/token",
                                                                      labels=LABELS, owners=[ref])),
        ("merge-patch it", ["patch", "secret", "own", "--type=merge", "-p",
                            '{"metadata":{"annotations":{"graphcred.io/expires-on":"2030-01-01T00:00:00Z"}},'
                            '"data":{"access_token":"eQ=="}}'], None),
        ("adopt a namesake's Secret", ["patch", "secret", "left", "--type=merge", "-p", json.dumps(
            {"metadata": {"labels": LABELS, "ownerReferences": [ref]}})], None),
        ("delete its own Secret", ["delete", "secret", "custom"], None),
    ]:
        result = run(env, request)
        assert result.returncode == 0, f"{request[0]}: {result.stderr}"
    wait_for(lambda: env.secret("custom") is None, timeout=10, what="the deleted Secret gone")
    left = env.secret("left")
    assert left is not None and left.metadata.owner_references[0].uid == ref["uid"]


def test_the_operators_identity_renews_only_certificates_labelled_for_it(env: Env, chart: Chart) -> None:
    """credential.certificate.rotation: the operator creates a kubernetes.io/tls Secret labelled
    graphcred.io/rotation=enabled and changes one that was so labelled (and stays so); it may not label someone
    else's, change an unlabelled one, or delete one."""
    rotation = {"graphcred.io/rotation": "enabled"}
    tls = {"tls.crt": "c", "tls.key": "k"}
    env.bed.core.create_namespaced_secret(env.namespace, secret(env, "person-tls", type_="kubernetes.io/tls",
                                                                data=tls))
    env.bed.core.create_namespaced_secret(env.namespace, secret(env, "opted-in", type_="kubernetes.io/tls",
                                                                labels=rotation, data=tls))
    refused_only_by_the_policy(env, chart, [
        ("create an unlabelled tls Secret", ["create", "-f", "-"],
         secret(env, "x", type_="kubernetes.io/tls", labels=LABELS, data=tls)),
        ("change an unlabelled tls Secret", ["patch", "secret", "person-tls", "--type=merge", "-p",
                                             '{"data":{"next.crt":"eA=="}}'], None),
        ("label someone else's tls Secret", ["patch", "secret", "person-tls", "--type=merge", "-p", json.dumps(
            {"metadata": {"labels": rotation}})], None),
        ("delete a labelled one", ["delete", "secret", "opted-in"], None),
        ("drop its label", ["patch", "secret", "opted-in", "--type=merge", "-p",
                                                    '{"metadata":{"labels":{"graphcred.io/rotation":null}}}'], None),
    ])
    # what the rotator does (operator/graphcred/reconcile/rotator.py): all allowed
    for request in [
        ("create a generated key pair", ["create", "-f", "-"], secret(env, "generated", type_="kubernetes.io/tls",
                                                                     labels={**LABELS, **rotation}, data=tls)),
        ("store the next pair", ["patch", "secret", "opted-in", "--type=merge", "-p", json.dumps(
            {"data": {"next.crt": "eA==", "next.key": "eQ=="},
             "metadata": {"annotations": {"graphcred.io/next-key-adding": "2026-12-06T00:00:00Z"}}})], None),
        ("switch to it", ["patch", "secret", "opted-in", "--type=merge", "-p", json.dumps(
            {"data": {"tls.crt": "eA==", "tls.key": "eQ==", "next.crt": None, "next.key": None}})], None),
    ]:
        result = run(env, request)
        assert result.returncode == 0, f"{request[0]}: {result.stderr}"
    assert env.secret("opted-in") is not None


@pytest.mark.parametrize("chart", [["--set", "workloadIdentity.enabled=true"]], indirect=True)
def test_the_operators_identity_requests_tokens_only_for_the_exchange_audiences(env: Env, chart: Chart) -> None:
    """With workload identity the ServiceAccount may create any ServiceAccount's token in scope: for the API's own
    audience that token is the ServiceAccount's identity (cluster-admin for some). Only the audiences Entra
    exchanges pass (the tokens are never printed)."""
    env.bed.core.create_namespaced_service_account(env.namespace, {"metadata": {"name": "app"}})
    token = ["create", "token", "app", "--duration=10m"]
    refused_only_by_the_policy(env, chart, [
        ("the API's audience (the default)", token, None),
        ("another audience", [*token, "--audience=https://vault.example"], None),
        ("an exchange audience and another", [*token, "--audience=api://AzureADTokenExchange",
                                              "--audience=https://vault.example"], None),
    ])
    for audience in ("api://AzureADTokenExchange", "api://AzureADTokenExchangeUSGov", "api://AzureADTokenExchangeChina"):
        result = run(env, ("exchange", [*token, f"--audience={audience}"], None))
        assert result.returncode == 0 and result.stdout.startswith("eyJ"), f"{audience}: {result.stderr}"


@pytest.mark.parametrize("chart", [["--set", "restartTargets.enabled=true", "--set",
                                    "workloadIdentity.enabled=true"]], indirect=True)
def test_the_operators_identity_changes_only_the_restart_annotations_of_a_workload(env: Env, chart: Chart) -> None:
    """restartTargets.enabled grants patch on Deployments, StatefulSets and DaemonSets: with it alone a compromised
    operator could set any image, command or ServiceAccount and run as any workload. The policy lets through only
    what a restart writes (two annotations of the pod template). With workload identity too: its TokenRequest rule
    must not catch workloads."""
    labels = {"app": "web"}
    env.bed.kubectl("apply", "-n", env.namespace, "-f", "-", input=json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels, "annotations": {"team": "a"}},
            "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]}}}}))

    def patch(body: dict[str, Any]) -> list[str]:
        return ["patch", "deployment", "web", "--type=merge", "-p", json.dumps({"spec": body})]

    refused_only_by_the_policy(env, chart, [
        ("another image", patch({"template": {"spec": {"containers": [
            {"name": "app", "image": "example.invalid/evil:1"}]}}}), None),
        ("another ServiceAccount", patch({"template": {"spec": {"serviceAccountName": "admin"}}}), None),
        ("a template label", patch({"template": {"metadata": {"labels": {"role": "db"}}}}), None),
        ("another annotation", patch({"template": {"metadata": {"annotations": {"team": "b"}}}}), None),
        ("an annotation removed", patch({"template": {"metadata": {"annotations": {"team": None}}}}), None),
        ("the replicas", patch({"replicas": 0}), None),
    ])
    result = run(env, ("a restart", patch({"template": {"metadata": {"annotations": {
        "graphcred.io/restarted-at": "2026-12-06T12:00:00.000001Z",
        "graphcred.io/restarted-for": "cred@2026-12-06T12:00:00Z"}}}}), None))
    assert result.returncode == 0, f"a restart: {result.stderr}"
    token = ["create", "token", "default", "--duration=10m", "--audience=api://AzureADTokenExchange"]
    result = run(env, ("exchange", token, None))
    assert result.returncode == 0, f"the workload rule must leave TokenRequests alone: {result.stderr}"


def test_the_real_operator_works_within_the_policy(env: Env, release_namespace: str,  # noqa: F811
                                                   operator_logdir: Path) -> None:
    """The operator as the chart's ServiceAccount, with the chart's RBAC and policy (chart_operator waits until the
    policy refuses that identity a ServiceAccount token Secret, and fails on any 403 the operator logs): it creates
    the token Secret, patches it on a template change, deletes and creates it again for a new type and deletes the
    previous one after a rename."""
    with chart_operator(env, operator_logdir, "vap-op", []):
        app = env.secret_app("s", secret_name="cred")
        env.create("pol", app, {"clientSecret": {"name": "cred"}})
        env.wait_ready("pol", timeout=60)
        env.patch_spec("pol", {"secretTemplate": {"data": {"HEADER": "Bearer {{ .accessToken }}"}}})
        wait_for(lambda: "HEADER" in (((s := env.secret("pol-token")) and s.data) or {}), timeout=20,
                 what="the token Secret patched with the new key")
        env.patch_spec("pol", {"secretTemplate": {"type": "example.com/graph-token"}})
        wait_for(lambda: (s := env.secret("pol-token")) is not None and s.type == "example.com/graph-token",
                 timeout=20, what="the token Secret created again with the new type")
        env.patch_spec("pol", {"secretName": "pol-renamed"})
        wait_for(lambda: env.secret("pol-renamed") is not None and env.secret("pol-token") is None, timeout=20,
                 what="the renamed Secret written and the previous one deleted")
        env.wait_ready("pol", timeout=20)
