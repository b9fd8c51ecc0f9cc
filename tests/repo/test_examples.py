"""examples/ as a user applies them: to one namespace, one after another."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from graphcred_testbed.demo import EXAMPLES


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_no_two_examples_declare_the_same_object() -> None:
    """Applied to one namespace, a second example with a taken name would silently replace the first (two files
    once both declared GraphAppCredential mail-reader: workload identity quietly replaced the client secret)."""
    seen = Counter((d["kind"], d["metadata"]["name"])
                   for path in sorted(EXAMPLES.glob("*.yaml")) for d in _docs(path))
    assert [key for key, n in seen.items() if n > 1] == []


def test_no_two_example_credentials_write_the_same_token_secret() -> None:
    """Two credentials naming one token Secret: the second gets SecretConflict in the namespace of the first."""
    names = [d["spec"].get("secretName") or f"{d['metadata']['name']}-token"
             for path in sorted(EXAMPLES.glob("*.yaml")) for d in _docs(path) if d["kind"] == "GraphAppCredential"]
    assert len(names) == len(set(names)), names


def test_the_cluster_app_example_permits_its_own_credential() -> None:
    """examples/cluster-app.yaml as a whole: the credential names the app declared beside it, the app's policy
    selects the namespace declared there and allows the credential's scopes, and the app's Secret is in the
    operator's default cluster resource namespace, the credential in the team's. Applied as it is, it works."""
    from graphcred.api.model import ClusterGraphAppSpec, GraphAppCredentialSpec
    from graphcred.reconcile.apps import DEFAULT_CLUSTER_RESOURCE_NAMESPACE

    docs = {d["kind"]: d for d in _docs(EXAMPLES / "cluster-app.yaml")}
    assert sorted(docs) == ["ClusterGraphApp", "GraphAppCredential", "Namespace", "Secret"]
    app, credential, namespace = docs["ClusterGraphApp"], docs["GraphAppCredential"], docs["Namespace"]
    assert "namespace" not in app["metadata"]  # cluster-scoped
    spec = ClusterGraphAppSpec.model_validate(app["spec"])
    wants = GraphAppCredentialSpec.model_validate(credential["spec"])
    assert wants.app_ref is not None and wants.app_ref.name == app["metadata"]["name"]
    assert credential["metadata"]["namespace"] == namespace["metadata"]["name"]
    assert spec.policy.refusal(namespace["metadata"]["name"], namespace["metadata"]["labels"], wants.scopes) is None
    assert spec.policy.refusal(namespace["metadata"]["name"], {}, wants.scopes) is not None  # the label matters
    secret = docs["Secret"]
    assert spec.credential.secret_name == secret["metadata"]["name"]
    assert secret["metadata"]["namespace"] == DEFAULT_CLUSTER_RESOURCE_NAMESPACE


def test_the_restart_targets_example_restarts_the_deployment_that_reads_its_token() -> None:
    """examples/restart-targets.yaml as a whole: the credential's restart target is the Deployment declared beside
    it, whose container reads the credential's token Secret from an environment variable (what a restart is for),
    and the credential's client secret is the Secret declared there."""
    from graphcred.api.model import GraphAppCredentialSpec

    docs = {d["kind"]: d for d in _docs(EXAMPLES / "restart-targets.yaml")}
    assert sorted(docs) == ["Deployment", "GraphAppCredential", "Secret"]
    credential, deployment = docs["GraphAppCredential"], docs["Deployment"]
    spec = GraphAppCredentialSpec.model_validate(credential["spec"])
    assert [(t.kind.value, t.name) for t in spec.restart_targets] == [("Deployment", deployment["metadata"]["name"])]
    assert spec.credential is not None and spec.credential.secret_name == docs["Secret"]["metadata"]["name"]
    refs = [e["valueFrom"]["secretKeyRef"] for c in deployment["spec"]["template"]["spec"]["containers"]
            for e in c.get("env") or [] if "secretKeyRef" in e.get("valueFrom", {})]
    assert refs == [{"name": spec.effective_secret_name(credential["metadata"]["name"]), "key": "access_token"}]
    assert "restartTargets.enabled=true" in (EXAMPLES / "restart-targets.yaml").read_text()
