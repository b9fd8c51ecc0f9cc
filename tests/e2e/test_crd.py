"""The CRD is generated from the models, committed, and strict enough that kubectl refuses bad manifests."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from graphcred.crd import crd_yaml
from graphcred_testbed.bed import Bed

pytestmark = pytest.mark.bed

ROOT = Path(__file__).resolve().parents[2]


def test_committed_crd_is_the_generated_one() -> None:
    committed = (ROOT / "crds" / "graphappcredentials.yaml").read_text()
    assert committed == crd_yaml(), "crds/ drifted from the models: run `graphcred crd > crds/graphappcredentials.yaml`"


def _manifest(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "tenantId": str(uuid.uuid4()),
        "clientId": str(uuid.uuid4()),
        "credential": {"clientSecret": {"name": "app"}},
    }
    base.update(spec)
    return {"apiVersion": "graphcred.io/v1alpha1", "kind": "GraphAppCredential",
            "metadata": {"name": "bad"}, "spec": {k: v for k, v in base.items() if v is not None}}


BAD = {
    "client id not a GUID": (_manifest(clientId="not-a-guid"), "spec.clientId"),
    "tenant neither GUID nor domain": (_manifest(tenantId="contoso"), "spec.tenantId"),
    "scope without /.default": (_manifest(scopes=["https://graph.microsoft.com/Mail.Read"]), "spec.scopes[0]"),
    "scopes for two resources": (
        _manifest(scopes=["https://graph.microsoft.com/.default", "https://vault.azure.net/.default"]),
        "scopes must name exactly one resource"),
    "no credential": (_manifest(credential={}), "exactly one of clientSecret, certificate or workloadIdentity"),
    "two credentials": (_manifest(credential={"clientSecret": {"name": "a"}, "certificate": {"name": "b"}}),
                        "exactly one of clientSecret, certificate or workloadIdentity"),
    "unknown field": (_manifest(clientSecret="oops"), 'unknown field "spec.clientSecret"'),
    "unknown cloud": (_manifest(cloud="Mars"), "spec.cloud"),
    "http authority": (_manifest(authorityHost="http://login.example.com"), "spec.authorityHost"),
    "bad duration": (_manifest(refreshBeforeExpiry="ten minutes"), "spec.refreshBeforeExpiry"),
    "no spec": ({"apiVersion": "graphcred.io/v1alpha1", "kind": "GraphAppCredential",
                 "metadata": {"name": "bad"}}, "spec: Required value"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_kubectl_apply_refuses_malformed_manifests(bed: Bed, namespace: str, case: str) -> None:
    manifest, expected = BAD[case]
    result = bed.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode != 0, f"{case}: accepted"
    assert expected in result.stderr, result.stderr


def test_valid_manifest_with_defaults_is_accepted(bed: Bed, namespace: str) -> None:
    bed.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_manifest(tenantId="contoso.onmicrosoft.com")))
    obj = yaml.safe_load(bed.kubectl("get", "gac", "bad", "-n", namespace, "-o", "yaml").stdout)
    assert obj["spec"]["cloud"] == "AzurePublic"
    assert obj["spec"]["scopes"] == ["https://graph.microsoft.com/.default"]
    assert obj["spec"]["credential"]["clientSecret"]["key"] == "clientSecret"


@pytest.mark.parametrize("example", ["client-secret.yaml", "certificate.yaml", "pod.yaml", "workload-identity.yaml"])
def test_examples_are_accepted_by_the_apiserver(bed: Bed, namespace: str, example: str) -> None:
    result = bed.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(ROOT / "examples" / example),
                         check=False)
    assert result.returncode == 0, result.stderr


def test_cli_prints_the_crd() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "graphcred", "crd"], capture_output=True, text=True, check=True)
    assert out.stdout == crd_yaml()
