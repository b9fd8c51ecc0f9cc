"""The CRD is generated from the models, committed, and strict enough that kubectl refuses bad manifests."""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from graphcred.api.crd import crd_yaml
from graphcred.api.keys import GROUP, KIND, PLURAL, VERSION
from graphcred_testbed.bed import Bed, wait_for
from graphcred_testbed.binaries import kube_minor

from ..helpers import Env

pytestmark = [pytest.mark.bed, pytest.mark.compat]  # make test-compat runs it all

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("plural", ["graphappcredentials", "clustergraphapps"])
def test_committed_crd_is_the_generated_one(plural: str) -> None:
    committed = (ROOT / "crds" / f"{plural}.yaml").read_text()
    assert committed == crd_yaml(plural), "crds/ drifted from the models: run `make crd`"


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
    # issue 24: durations are bounded (99999999999h was accepted, then overflowed in the operator)
    "duration over a day": (_manifest(refreshBeforeExpiry="24h1s"), "refreshBeforeExpiry must be at most 24h"),
    "duration overflowing": (_manifest(refreshBeforeExpiry="99999999999h"), "spec.refreshBeforeExpiry"),
    "name too long for the default Secret": (
        {**_manifest(), "metadata": {"name": "n" * 248}},
        "metadata.name longer than 247 characters needs spec.secretName"),
    "no spec": ({"apiVersion": "graphcred.io/v1alpha1", "kind": "GraphAppCredential",
                 "metadata": {"name": "bad"}}, "spec: Required value"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_kubectl_apply_refuses_malformed_manifests(bed: Bed, namespace: str, case: str) -> None:
    manifest, expected = BAD[case]
    result = bed.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode != 0, f"{case}: accepted"
    assert expected in result.stderr, result.stderr


def test_the_longest_names_and_durations_are_accepted(bed: Bed, namespace: str) -> None:
    for manifest in ({**_manifest(refreshBeforeExpiry="24h"), "metadata": {"name": "n" * 247}},
                     {**_manifest(secretName="short", refreshBeforeExpiry="23h59m59.999s"),
                      "metadata": {"name": "m" * 253}}):
        bed.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def test_valid_manifest_with_defaults_is_accepted(bed: Bed, namespace: str) -> None:
    bed.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_manifest(tenantId="contoso.onmicrosoft.com")))
    obj = yaml.safe_load(bed.kubectl("get", "gac", "bad", "-n", namespace, "-o", "yaml").stdout)
    # no default for cloud in the schema (an appRef takes the app's): absent means AzurePublic, as documented
    assert "cloud" not in obj["spec"]
    assert obj["spec"]["scopes"] == ["https://graph.microsoft.com/.default"]
    assert obj["spec"]["credential"]["clientSecret"]["key"] == "clientSecret"


def test_an_app_ref_and_an_own_identity_together_are_refused(bed: Bed, namespace: str) -> None:
    manifest = _manifest(appRef={"name": "platform"})
    result = bed.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode != 0 and "set either appRef" in result.stderr, result.stderr
    only_ref = {**manifest, "spec": {"appRef": {"name": "platform"}}}
    bed.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(only_ref))


def test_a_cluster_app_needs_a_policy_and_may_use_a_managed_identity(bed: Bed) -> None:
    app: dict[str, Any] = {"apiVersion": "graphcred.io/v1alpha1", "kind": "ClusterGraphApp",
                           "metadata": {"name": "platform"},
                           "spec": {"tenantId": str(uuid.uuid4()), "clientId": str(uuid.uuid4()),
                                    "credential": {"managedIdentity": {}}}}
    result = bed.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(app), check=False)
    assert result.returncode != 0 and "policy" in result.stderr, result.stderr
    app["spec"]["policy"] = {"namespaceSelector": {"matchLabels": {"graph": "yes"}},
                             "allowedScopes": ["https://graph.microsoft.com/.default"]}
    bed.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(app))
    app["spec"]["policy"]["namespaceSelector"] = {"matchExpressions": [{"key": "a", "operator": "In"}]}
    result = bed.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(app), check=False)
    assert result.returncode != 0 and "In and NotIn need values" in result.stderr, result.stderr


@pytest.mark.parametrize("example", ["client-secret.yaml", "certificate.yaml", "pod.yaml", "workload-identity.yaml",
                                     "certificate-rotation.yaml", "restart-targets.yaml"])
def test_examples_are_accepted_by_the_apiserver(bed: Bed, namespace: str, example: str) -> None:
    result = bed.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(ROOT / "examples" / example),
                         check=False)
    assert result.returncode == 0, result.stderr


def test_the_cluster_app_example_is_accepted_by_the_apiserver(bed: Bed, namespace: str) -> None:
    """It names its namespaces itself (the app's Secret in the cluster resource namespace, the credential in a
    team's) and holds a cluster-scoped object: applied without -n. The team's namespace is this test's."""
    with contextlib.suppress(client.ApiException):
        bed.create_namespace("graphcred-system")
    text = (ROOT / "examples" / "cluster-app.yaml").read_text()
    assert "namespace: team-a" in text and "name: team-a" in text
    text = text.replace("namespace: team-a", f"namespace: {namespace}").replace("name: team-a", f"name: {namespace}")
    result = bed.kubectl("apply", "--dry-run=server", "-f", "-", input=text, check=False)
    assert result.returncode == 0, result.stderr
    assert "clustergraphapp.graphcred.io/mail-platform created (server dry run)" in result.stdout, result.stdout


def test_cli_prints_the_crd() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "graphcred", "crd"], capture_output=True, text=True, check=True)
    assert out.stdout == crd_yaml()


# --- what `kubectl explain` and `kubectl get` show ------------------------------------------------------------------
_FIELD = re.compile(r"^  (\w+)\t<")


def _explain(bed: Bed, path: str) -> str:
    """`kubectl explain path`: the apiserver publishes a CRD's OpenAPI a moment after it is Established."""
    def probe() -> str | None:
        result = bed.kubectl("explain", path, check=False)
        return result.stdout if result.returncode == 0 else None

    return wait_for(probe, timeout=30, what=f"kubectl explain {path}")


def _explained(text: str) -> tuple[str, dict[str, str]]:
    """kubectl explain's output: the field's description, and each sub-field's description by name."""
    description: list[str] = []
    fields: dict[str, list[str]] = {}
    section, current = "", ""
    for line in text.splitlines():
        if line in ("DESCRIPTION:", "FIELDS:"):
            section = line
        elif section == "DESCRIPTION:" and line.startswith("    "):
            description.append(line.strip())
        elif section == "FIELDS:" and (match := _FIELD.match(line)):
            current = match.group(1)
            fields[current] = []
        elif section == "FIELDS:" and current and line.startswith("    "):
            fields[current].append(line.strip())
    return " ".join(description).strip(), {name: " ".join(words) for name, words in fields.items()}


def _objects(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object in the schema with fields of its own (list items included), by its `kubectl explain` path."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        node = sub.get("items", {}) if sub.get("type") == "array" else sub
        if "properties" in node:
            yield from _objects(node, f"{path}.{name}")


def test_kubectl_explain_describes_every_status_field(bed: Bed) -> None:
    served = json.loads(bed.kubectl("get", "crd", f"{PLURAL}.{GROUP}", "-o", "json").stdout)
    status = served["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    paths = dict(_objects(status, "gac.status"))
    assert {"gac.status", "gac.status.conditions"} <= set(paths)
    for path, node in paths.items():
        description, fields = _explained(_explain(bed, path))
        assert description and description != "<empty>", f"{path} has no description"
        assert set(fields) == set(node["properties"]), path  # every field was read from the output
        undescribed = sorted(name for name, text in fields.items() if text in ("", "<no description>"))
        assert not undescribed, f"{path}: no description for {undescribed}"


_COLUMN = re.compile(r"\S+(?: \S+)*")  # a header: words one space apart ("REFRESH AT"); columns are 3+ apart


def _table(text: str) -> list[dict[str, str]]:
    """kubectl's table as rows of header -> cell, cut where each header starts (a message cell holds spaces)."""
    header, *rows = text.rstrip("\n").splitlines()
    columns = [(m.group(), m.start()) for m in _COLUMN.finditer(header)]
    ends = [start for _, start in columns[1:]] + [None]
    return [{name: row[start:end].strip() for (name, start), end in zip(columns, ends, strict=True)} for row in rows]


def _ready_credential(env: Env, name: str = "app") -> None:
    app = env.secret_app(f"{name}-secret", secret_name=f"{name}-cred")
    env.create(name, app, {"clientSecret": {"name": f"{name}-cred"}})
    env.wait_ready(name)


def _rows(env: Env, name: str, *args: str) -> tuple[dict[str, str], str]:
    out = env.bed.kubectl("get", "gac", name, "-n", env.namespace, *args).stdout
    [row] = _table(out)
    return row, out


def test_get_shows_the_ready_summary_and_wide_adds_refresh_audience_and_message(env: Env) -> None:
    _ready_credential(env)
    plain, _ = _rows(env, "app")
    wide, out = _rows(env, "app", "-o", "wide")
    status = env.get("app")["status"]
    ready = env.ready_condition("app")
    assert ready is not None
    assert list(plain) == ["NAME", "READY", "REASON", "EXPIRES", "SECRET", "AGE"]
    assert list(wide) == [*plain, "REFRESH AT", "AUDIENCE", "CREDENTIAL EXPIRES", "MESSAGE"]
    assert {k: v for k, v in wide.items() if k != "AGE"} == {
        "NAME": "app", "READY": "True", "REASON": "TokenIssued", "EXPIRES": status["expiresOn"],
        "SECRET": "app-token", "REFRESH AT": status["refreshAt"], "AUDIENCE": "https://graph.microsoft.com",
        "CREDENTIAL EXPIRES": "", "MESSAGE": ready["message"]}  # a client secret without its end date: unknown
    assert "valid until" in wide["MESSAGE"]
    token = env.token("app-token")
    assert token and token not in out


def test_the_ready_condition_is_replaced_never_duplicated(env: Env) -> None:
    """The operator's status writes (merge patches) pass the list-map schema; Ready stays one entry as it flips."""
    _ready_credential(env)
    first = env.ready_condition("app")
    assert first is not None
    env.bed.core.delete_namespaced_secret("app-cred", env.namespace)
    failed = env.wait_condition("app", "False", "CredentialNotFound")["status"]["conditions"]
    assert [c["type"] for c in failed] == ["Ready"]
    assert failed[0]["lastTransitionTime"] >= first["lastTransitionTime"]
    wide, out = _rows(env, "app", "-o", "wide")
    assert (wide["READY"], wide["REASON"], wide["MESSAGE"]) == ("False", "CredentialNotFound", failed[0]["message"])
    assert "app-cred" in wide["MESSAGE"]  # says which Secret to create
    assert env.sv("app-secret") not in out
    env.client_secret("app-cred", "app-secret")
    again = env.wait_ready("app")["status"]["conditions"]
    assert [(c["type"], c["status"]) for c in again] == [("Ready", "True")]
    assert again[0]["lastTransitionTime"] >= failed[0]["lastTransitionTime"]


# --- conditions: metav1.Condition fields, a list-map keyed by type --------------------------------------------------
_WHEN = "2026-01-01T00:00:00Z"


def _condition(**fields: Any) -> dict[str, Any]:
    base = {"type": "Ready", "status": "True", "reason": "TokenIssued", "message": "", "lastTransitionTime": _WHEN}
    return {k: v for k, v in {**base, **fields}.items() if v is not None}


REFUSED_CONDITIONS = {
    "two Ready conditions": ([_condition(), _condition(status="False")], 'Duplicate value: {"type":"Ready"}'),
    "no type": ([_condition(type=None)], "status.conditions[0].type: Required value"),
    "no lastTransitionTime": ([_condition(lastTransitionTime=None)], "lastTransitionTime: Required value"),
    "lastTransitionTime not a date-time": ([_condition(lastTransitionTime="yesterday")], "type date-time"),
    "no message": ([_condition(message=None)], "status.conditions[0].message: Required value"),
    "reason not CamelCase": ([_condition(reason="token issued")], "status.conditions[0].reason"),
    "status not True/False/Unknown": ([_condition(status="Yes")], "status.conditions[0].status"),
}


def _worded_by_the_bed(expected: str) -> str:
    """`expected` as the bed's apiserver words it. Before 1.31 (the compat bed runs 1.30) a status subresource
    update's schema errors lack the `status.` prefix (apiextensions-apiserver's customResourceValidator passes a nil
    path) and a duplicate list-map key prints as a Go map, not JSON (apimachinery's field.Error); the refusal and the
    field it names are the same."""
    if kube_minor() >= 31:
        return expected
    return expected.replace("status.conditions[", "conditions[").replace(
        'Duplicate value: {"type":"Ready"}', 'Duplicate value: map[string]interface {}{"type":"Ready"}')


def _credential(bed: Bed, namespace: str) -> None:
    manifest = _manifest(authorityHost=bed.authority_host)
    manifest["metadata"]["name"] = "conds"
    bed.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


@pytest.mark.parametrize("case", sorted(REFUSED_CONDITIONS))
def test_the_apiserver_refuses_malformed_conditions(bed: Bed, namespace: str, case: str) -> None:
    conditions, expected = REFUSED_CONDITIONS[case]
    _credential(bed, namespace)
    result = bed.kubectl("patch", "gac", "conds", "-n", namespace, "--subresource=status", "--type=merge",
                         "-p", json.dumps({"status": {"conditions": conditions}}), check=False)
    assert result.returncode != 0, f"{case}: accepted"
    assert _worded_by_the_bed(expected) in result.stderr, result.stderr


def test_another_tool_applies_its_own_condition_beside_ready(bed: Bed, namespace: str) -> None:
    """Server-side apply merges conditions by type: a tool owns its condition without taking Ready's."""
    _credential(bed, namespace)
    bed.kubectl("patch", "gac", "conds", "-n", namespace, "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": {"conditions": [_condition()]}}))
    audited = _condition(type="example.com/Audited", reason="Checked", message="reviewed")
    applied = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": "conds"},
               "status": {"conditions": [audited]}}
    result = bed.kubectl("apply", "--server-side", "--subresource=status", "--field-manager=auditor", "-o", "json",
                         "-n", namespace, "-f", "-", input=json.dumps(applied), check=False)
    assert result.returncode == 0, result.stderr
    conditions = json.loads(result.stdout)["status"]["conditions"]
    assert sorted(c["type"] for c in conditions) == ["Ready", "example.com/Audited"]


@pytest.mark.parametrize(("rotation", "message"), [
    ({"validity": "1m"}, "validity must be between 2m and 17520h"),
    ({"validity": "20000h"}, "validity must be between 2m and 17520h"),
    ({"validity": "1h", "renewBefore": "30s"}, "renewBefore must be at least 1m and shorter than validity"),
    ({"validity": "1h", "renewBefore": "2h"}, "renewBefore must be at least 1m and shorter than validity"),
    ({"renewBefore": "3000h"}, "renewBefore must be at least 1m and shorter than validity"),  # the default: 2160h
])
def test_a_rotation_out_of_bounds_is_refused_by_the_apiserver(bed: Bed, namespace: str, rotation: dict[str, Any],
                                                              message: str) -> None:
    credential = {"certificate": {"name": "cert", "rotation": {"objectId": str(uuid.uuid4()), **rotation}}}
    result = bed.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-",
                         input=json.dumps(_manifest(credential=credential)), check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_a_cluster_app_may_not_rotate_its_certificate_yet(bed: Bed) -> None:
    app: dict[str, Any] = {"apiVersion": "graphcred.io/v1alpha1", "kind": "ClusterGraphApp",
                           "metadata": {"name": "rotating"},
                           "spec": {"tenantId": str(uuid.uuid4()), "clientId": str(uuid.uuid4()),
                                    "credential": {"certificate": {"name": "c", "rotation": {
                                        "objectId": str(uuid.uuid4())}}},
                                    "policy": {"namespaceSelector": {},
                                               "allowedScopes": ["https://graph.microsoft.com/.default"]}}}
    result = bed.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(app), check=False)
    assert result.returncode != 0 and "not supported on a ClusterGraphApp yet" in result.stderr, result.stderr
