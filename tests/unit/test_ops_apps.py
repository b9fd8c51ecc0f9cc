"""`graphcred status` for ClusterGraphApps, and for GraphAppCredentials that name one in spec.appRef, from API
objects as the apiserver returns them (the same against the real bed: tests/e2e/test_cli.py)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from graphcred.app.cli import main
from graphcred.ops import view as opsview
from graphcred.ops.commands import _resource_namespace_of, typed_name

NOW = dt.datetime(2025, 11, 25, 18, 0, 0, tzinfo=dt.UTC)
SCOPE = "https://graph.microsoft.com/.default"


def _app(credential: dict[str, Any] | None = None, selector: dict[str, Any] | None = None,
         **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "mail-platform", "uid": "a1", "generation": 2,
                     "creationTimestamp": "2025-11-25T10:00:00Z"},
        "spec": {"tenantId": "contoso.onmicrosoft.com", "clientId": "3c9e7a5b-1d2f-4a6b-8c0e-9f1a3b5d7e2c",
                 "credential": credential or {"clientSecret": {"name": "mail-platform", "key": "clientSecret"}},
                 "policy": {"namespaceSelector": {"matchLabels": {"graph-mail": "allowed"}} if selector is None
                            else selector, "allowedScopes": [SCOPE]}},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "TokenIssued",
                                   "message": "tokens issued for 2 credential(s)", "observedGeneration": 2,
                                   "lastTransitionTime": "2025-11-25T17:00:00Z"}],
                   "observedGeneration": 2, "users": 3, "permitted": 2, "lastTokenTime": "2025-11-25T17:50:00Z",
                   **status},
    }


def _user(namespace: str, name: str, app: str = "mail-platform", ready: str | None = "True",
          reason: str = "TokenIssued") -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": ready, "reason": reason}] if ready else []
    return {"metadata": {"name": name, "namespace": namespace}, "spec": {"appRef": {"name": app}},
            "status": {"conditions": conditions}}


USERS = [_user("team-b", "mail"), _user("team-a", "mail"), _user("team-c", "sender", ready="False",
                                                                 reason="NotPermitted"),
         _user("team-d", "other", app="another-app"),
         {"metadata": {"name": "own", "namespace": "team-a"}, "spec": {"tenantId": "t", "clientId": "c"}},
         _user("team-e", "new", ready=None)]


@pytest.mark.parametrize(("selector", "text"), [
    ({}, "{} (every namespace)"),
    ({"matchLabels": {"b": "2", "a": "1"}}, "a=1,b=2"),
    ({"matchLabels": {"graph-mail": "allowed"},
      "matchExpressions": [{"key": "tier", "operator": "In", "values": ["gold", "silver"]},
                           {"key": "env", "operator": "NotIn", "values": ["prod"]},
                           {"key": "team", "operator": "Exists"},
                           {"key": "legacy", "operator": "DoesNotExist"}]},
     "graph-mail=allowed,tier in (gold,silver),env notin (prod),team,!legacy"),
])
def test_a_namespace_selector_reads_as_kubectl_writes_label_selectors(selector: dict[str, Any], text: str) -> None:
    assert opsview.selector_text(selector) == text


def test_app_status_shows_condition_identity_credential_policy_and_users() -> None:
    view = opsview.app_view(_app(), USERS, None, [], "graphcred-system")
    text = opsview.render_app(view, NOW)
    assert "Kind:           ClusterGraphApp (cluster-scoped)" in text
    assert "Ready:          True, TokenIssued, since 2025-11-25T17:00:00Z (1h ago)" in text
    assert "Tenant:         contoso.onmicrosoft.com" in text
    assert "Client:         3c9e7a5b-1d2f-4a6b-8c0e-9f1a3b5d7e2c" in text
    assert "Authority:      https://login.microsoftonline.com (AzurePublic)" in text
    assert "Credential:     clientSecret\n  Secret:       mail-platform, key clientSecret, in namespace " \
        "graphcred-system\n" in text
    assert "  Namespaces:   graph-mail=allowed\n" in text and f"  Scopes:       {SCOPE}\n" in text
    assert "Users:          3 GraphAppCredential(s), 2 permitted" in text
    assert "  Last token:   2025-11-25T17:50:00Z (10m ago)" in text
    lines = text.splitlines()
    head = lines.index("Credentials using it (not Ready first):")
    rows = [line.split() for line in lines[head + 2:head + 6]]
    # those not Ready first, then by namespace; credentials of another app or of their own identity are not listed
    assert rows == [["team-c", "sender", "False", "NotPermitted"], ["team-e", "new", "Unknown", "-"],
                    ["team-a", "mail", "True", "TokenIssued"], ["team-b", "mail", "True", "TokenIssued"]]
    assert lines[head + 6] == "Events:         none"


def test_app_status_lists_a_bounded_number_of_users_and_counts_the_rest() -> None:
    many = [_user(f"team-{i:02d}", "mail") for i in range(25)]
    text = opsview.render_app(opsview.app_view(_app(), many), NOW, limit=20)
    assert "team-19" in text and "team-20" not in text
    assert "  and 5 more\n" in text


@pytest.mark.parametrize(("credential", "expected"), [
    ({"certificate": {"name": "mail-cert", "sendX5c": True}},
     ["Credential:     certificate", "  Secret:       mail-cert (kubernetes.io/tls), in namespace graphcred-system, "
      "sends x5c", "  Expires:      2026-01-01T00:00:00Z (in 36d)"]),
    ({"workloadIdentity": {"serviceAccountName": "mail-platform"}},
     ["Credential:     workloadIdentity", "  Account:      ServiceAccount mail-platform, in namespace graphcred-system",
      "  Audience:     api://AzureADTokenExchange"]),
    ({"managedIdentity": {}},
     ["Credential:     managedIdentity", "  Identity:     system-assigned (the operator's node or pod)"]),
    ({"managedIdentity": {"clientId": "6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b"}},
     ["Credential:     managedIdentity",
      "  Identity:     user-assigned, client ID 6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b"]),
])
def test_app_status_names_what_the_credential_reads_never_its_material(credential: dict[str, Any],
                                                                       expected: list[str]) -> None:
    obj = _app(credential, credentialExpiresOn="2026-01-01T00:00:00Z" if "certificate" in credential else None)
    text = opsview.render_app(opsview.app_view(obj, [], None, [], "graphcred-system"), NOW)
    lines = text.splitlines()
    at = lines.index(expected[0])
    assert lines[at:at + len(expected)] == expected


def test_app_status_says_what_it_cannot_tell() -> None:
    obj = _app()
    obj["status"] = {}
    obj["spec"]["cloud"] = "AzureChina"
    text = opsview.render_app(opsview.app_view(obj, None, "cannot tell (list graphappcredentials: HTTP 403 "
                                               "Forbidden)"), NOW)
    assert "Ready:          Unknown (no status yet: is the operator running?)" in text
    assert "in the operator's cluster resource namespace" in text  # its Deployment was not found
    assert "Authority:      https://login.chinacloudapi.cn (AzureChina)" in text
    assert "Users:          - GraphAppCredential(s), - permitted" in text
    assert "cannot tell (list graphappcredentials: HTTP 403 Forbidden)" in text


def test_an_unused_app_says_so() -> None:
    obj = _app(selector={})
    obj["status"]["conditions"] = [{"type": "Ready", "status": "Unknown", "reason": "Unused",
                                    "message": "no GraphAppCredential uses it yet",
                                    "lastTransitionTime": "2025-11-25T17:00:00Z"}]
    text = opsview.render_app(opsview.app_view(obj, []), NOW)
    assert "Ready:          Unknown, Unused, since" in text and "no GraphAppCredential uses it yet" in text
    assert "  Namespaces:   {} (every namespace)" in text
    assert "Credentials using it (not Ready first):\n  none found\n" in text


def test_app_status_json_has_the_same_facts_for_scripts() -> None:
    doc = opsview.app_json(opsview.app_view(_app(), USERS, None, [], "graphcred-system"), NOW)
    json.dumps(doc)
    assert doc["kind"] == "ClusterGraphApp" and doc["ready"]["reason"] == "TokenIssued"
    assert doc["credential"] == {"kind": "clientSecret", "secret": "mail-platform", "key": "clientSecret"}
    assert doc["resourceNamespace"] == "graphcred-system"
    assert doc["policy"] == {"namespaceSelector": "graph-mail=allowed", "allowedScopes": [SCOPE]}
    assert (doc["users"], doc["permitted"], doc["lastTokenTime"]) == (3, 2, "2025-11-25T17:50:00Z")
    assert [(c["namespace"], c["name"], c["reason"]) for c in doc["credentials"]][:1] == \
        [("team-c", "sender", "NotPermitted")]


def test_app_status_escapes_control_characters() -> None:
    obj = _app()
    obj["status"]["conditions"][0]["message"] = "bad \x1b[2J news"
    hostile = _user("team-a", "x", ready="False", reason="\x1b]0;pwned\x07")
    text = opsview.render_app(opsview.app_view(obj, [hostile]), NOW)
    assert "\x1b" not in text and "\x07" not in text and "\\x1b[2J" in text


def test_a_credential_with_an_app_ref_names_its_app() -> None:
    obj = {"metadata": {"name": "mail", "namespace": "team-a", "uid": "u1", "generation": 1},
           "spec": {"appRef": {"name": "mail-platform"}, "scopes": [SCOPE]},
           "status": {"tenantId": "t1", "appId": "a1", "secretName": "mail-token"}}
    view = opsview.status_view(obj)
    text = opsview.render_status(view, NOW)
    assert "App:            mail-platform (ClusterGraphApp: graphcred status cga/mail-platform)" in text
    assert "  Tenant:       t1" in text and "  App:          a1" in text  # the token's claims
    assert opsview.status_json(view, NOW)["appRef"] == "mail-platform"
    del obj["status"]  # before the first token: no tenant or client in the spec to fall back on
    text = opsview.render_status(opsview.status_view(obj), NOW)
    assert "  Tenant:       -" in text and "  App:          -" in text
    assert opsview.status_json(opsview.status_view(obj), NOW)["tenantId"] is None


# --- names and where the material lives ------------------------------------------------------------------------------
@pytest.mark.parametrize(("given", "expected"), [
    ("mail", ("credential", "mail")), ("gac/mail", ("credential", "mail")),
    ("cga/mail-platform", ("app", "mail-platform")), ("CGA/mail-platform", ("app", "mail-platform")),
    ("clustergraphapp/mail-platform", ("app", "mail-platform")),
    ("clustergraphapps.graphcred.io/mail-platform", ("app", "mail-platform")),
])
def test_status_takes_a_credential_or_an_app_as_kubectl_names_them(given: str, expected: tuple[str, str]) -> None:
    assert typed_name(given, ("credential", "app")) == expected


@pytest.mark.parametrize("argv", [["status", "cgx/x"], ["status", "cga/x/y"], ["status", "cga/Not_A_Name"]])
def test_a_wrong_type_or_name_is_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Usage: graphcred status" in err


def _deployment(namespace: str, env: list[dict[str, Any]] | None = None,
                args: list[str] | None = None) -> dict[str, Any]:
    container = {"name": "graphcred", "image": "graphcred:0.1.0", "env": env or [], "args": args or []}
    return {"metadata": {"namespace": namespace}, "spec": {"template": {"spec": {"containers": [container]}}}}


def test_the_cluster_resource_namespace_is_read_as_the_operator_reads_it() -> None:
    assert _resource_namespace_of(_deployment("graphcred-system")) == "graphcred-system"
    env = [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
           {"name": "GRAPHCRED_CLUSTER_RESOURCE_NAMESPACE", "value": "platform-apps"}]
    assert _resource_namespace_of(_deployment("graphcred-system", env)) == "platform-apps"
    assert _resource_namespace_of(_deployment("graphcred-system", env, ["run", "--cluster-resource-namespace",
                                                                       "flagged"])) == "flagged"
    assert _resource_namespace_of(_deployment("x", env, ["--cluster-resource-namespace=flagged"])) == "flagged"
