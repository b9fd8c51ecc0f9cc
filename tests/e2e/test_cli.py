"""`graphcred status`, `renew` and `inspect secret` on the real bed, run as a user runs them (a child process with a
kubeconfig), and as `kubectl graphcred ...` through the bed's kubectl. `renew` also shows the operator waking on the
renew annotation alone: a credential whose app is fixed in Entra is retried by itself only minutes later."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from graphcred.api.keys import APP_PLURAL, GROUP, PLURAL, VERSION
from graphcred_testbed.bed import wait_for
from graphcred_testbed.binaries import binary

from ..helpers import GRAPH, Env
from .clusterapps import cluster_app, label, material_name, use
from .test_consumer_warnings import create_pod, env_pod, ready_credential, sub_path_pod

pytestmark = pytest.mark.bed

ROOT = Path(__file__).resolve().parents[2]
RENEW = "graphcred.io/renew-requested-at"


def cli(env: Env, *args: str, kubeconfig: Path | None = None, namespace: bool = True,
        timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """`graphcred ARGS` as a user runs it, with the bed's kubeconfig (and -n the test's namespace)."""
    argv = [sys.executable, "-m", "graphcred", *args, f"--kubeconfig={kubeconfig or env.bed.kubeconfig}"]
    if namespace:
        argv.append(f"--namespace={env.namespace}")
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _annotation(env: Env, name: str) -> str | None:
    return (env.get(name)["metadata"].get("annotations") or {}).get(RENEW)


def _volume_pod(env: Env, name: str, secret: str = "mail-token") -> None:
    create_pod(env, name, {"volumeMounts": [{"name": "token", "mountPath": "/var/run/graphcred"}]},
               [{"name": "token", "secret": {"secretName": secret}}])


# --- status -------------------------------------------------------------------------------------------------------
def test_status_shows_condition_token_consumers_and_events(env: Env) -> None:
    token = ready_credential(env)
    _volume_pod(env, "web")
    env_pod(env, "legacy")
    sub_path_pod(env, "pinned")
    result = cli(env, "status", "mail")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    status = env.get("mail")["status"]
    assert "Ready:          True, TokenIssued, since " in text
    assert f"Expires:      {status['expiresOn']} (in 5" in text  # the bed's tokens live an hour: in 59m, 58m...
    assert f"Next refresh: {status['refreshAt']} (in " in text
    assert f"App:          {status['appId']}" in text and f"Tenant:       {status['tenantId']}" in text
    assert "Audience:     https://graph.microsoft.com" in text and "Secret:       mail-token" in text
    consumers = text[text.index("Consumers"):text.index("Events")]
    assert "web (Pending)\n    container app: volume mount at /var/run/graphcred\n" in consumers
    assert "legacy (Pending)\n    container app: environment variable ACCESS_TOKEN  -- never sees a refresh" \
        in consumers
    assert "pinned (Pending)\n    container app: subPath mount at /etc/graphcred/token  -- never sees a refresh" \
        in consumers
    events = text[text.index("Events (newest first):"):]
    assert "TokenIssued" in events and "graphcred/" in events
    assert token not in text

    as_json = cli(env, "status", "mail", "-o", "json")
    doc = json.loads(as_json.stdout)
    assert doc["ready"]["reason"] == "TokenIssued" and 3000 < doc["secondsLeft"] <= 3600
    assert sorted(c["pod"] for c in doc["consumers"]) == ["legacy", "pinned", "web"]
    assert doc["events"][0]["reason"] == "TokenIssued" and token not in as_json.stdout


def test_status_reads_the_namespace_from_the_kubeconfig_context(env: Env, tmp_path: Path) -> None:
    ready_credential(env)
    config = yaml.safe_load(env.bed.kubeconfig.read_text())
    config["contexts"][0]["context"]["namespace"] = env.namespace
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    result = cli(env, "status", "mail", kubeconfig=kubeconfig, namespace=False)
    assert result.returncode == 0, result.stderr
    assert f"Namespace:      {env.namespace}" in result.stdout


def test_status_of_what_is_missing_or_forbidden_exits_4(env: Env, tmp_path: Path) -> None:
    missing = cli(env, "status", "nothing-here")
    assert missing.returncode == 4
    assert f"get graphappcredential {env.namespace}/nothing-here: HTTP 404" in missing.stderr
    plane = env.bed.control_plane
    nobody = plane.write_kubeconfig(tmp_path / "nobody", plane.ca.issue("nobody", client=True), user="nobody")
    forbidden = cli(env, "status", "mail", kubeconfig=nobody)
    assert forbidden.returncode == 4 and "HTTP 403" in forbidden.stderr and 'User "nobody"' in forbidden.stderr


def test_status_of_a_cluster_app_lists_its_policy_and_users_and_a_user_names_its_app(env: Env) -> None:
    bed = env.bed
    key = f"graph-{uuid.uuid4().hex[:6]}"
    label(bed, env.namespace, {key: "allowed"})
    with cluster_app(env, selector={"matchExpressions": [{"key": key, "operator": "In", "values": ["allowed"]}]},
                     ) as (name, app):
        use(env, "mail", name)
        use(env, "outlook", name, scopes=("https://outlook.office365.com/.default",))
        env.wait_ready("mail")
        env.wait_condition("outlook", "False", "NotPermitted")

        def counted() -> dict[str, Any] | None:
            status = bed.custom.get_cluster_custom_object(GROUP, VERSION, APP_PLURAL, name).get("status") or {}
            ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
            return status if (status.get("users"), status.get("permitted"), ready.get("reason")) == \
                (2, 1, "TokenIssued") else None
        status = wait_for(counted, timeout=30, what="the app's status counting both users")

        result = cli(env, "status", f"cga/{name}", namespace=False)
        assert result.returncode == 0, result.stderr
        text = result.stdout
        assert f"Name:           {name}\nKind:           ClusterGraphApp (cluster-scoped)\n" in text
        assert "Ready:          True, TokenIssued, since " in text
        assert f"Tenant:         {app.tenant_id}\nClient:         {app.client_id}\n" in text
        assert f"Authority:      {bed.authority_host} (authorityHost)" in text
        assert f"Credential:     clientSecret\n  Secret:       {material_name(name)}, key clientSecret, in " in text
        assert f"  Namespaces:   {key} in (allowed)\n  Scopes:       {GRAPH}/.default\n" in text
        assert "Users:          2 GraphAppCredential(s), 1 permitted" in text
        assert f"  Last token:   {status['lastTokenTime']} (" in text
        rows = text[text.index("Credentials using it"):text.index("Events")].splitlines()[2:]
        assert [r.split() for r in rows] == [[env.namespace, "outlook", "False", "NotPermitted"],
                                             [env.namespace, "mail", "True", "TokenIssued"]]
        assert env.sv(material_name(name)) not in text  # the app's client secret is never shown

        doc = json.loads(cli(env, "status", f"clustergraphapps.graphcred.io/{name}", "-o", "json").stdout)
        assert doc["credential"] == {"kind": "clientSecret", "secret": material_name(name), "key": "clientSecret"}
        assert (doc["users"], doc["permitted"]) == (2, 1) and len(doc["credentials"]) == 2

        user = cli(env, "status", "gac/mail")
        assert user.returncode == 0, user.stderr
        assert f"App:            {name} (ClusterGraphApp: graphcred status cga/{name})" in user.stdout
        assert f"  App:          {app.client_id}" in user.stdout  # the token's appid claim

    gone = cli(env, "status", f"cga/{name}")
    assert gone.returncode == 4 and f"get clustergraphapp {name}: HTTP 404" in gone.stderr


# --- renew --------------------------------------------------------------------------------------------------------
def test_renew_acquires_a_new_token_at_once_and_prints_its_expiry(env: Env) -> None:
    first = ready_credential(env)
    app_id = env.get("mail")["status"]["appId"]
    requests = env.bed.issuer.token_requests(app_id)
    started = time.monotonic()
    result = cli(env, "renew", "mail")
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started < 30
    value = _annotation(env, "mail")
    assert value is not None
    assert f"{env.namespace}/mail: renew requested ({RENEW}={value})" in result.stdout
    status = env.get("mail")["status"]
    assert f"{env.namespace}/mail: renewed: the new token expires {status['expiresOn']} (in " in result.stdout
    assert status["lastRenewRequest"] == value
    assert env.token("mail-token") not in (None, first)
    assert env.bed.issuer.token_requests(app_id) == requests + 1
    assert first not in result.stdout + result.stderr


def test_renew_after_a_fix_in_entra_fails_then_succeeds_within_seconds(env: Env) -> None:
    """The operator retries an Unauthorized credential by itself only after minutes; renew wakes it at once, for
    an answer either way."""
    app = env.register_app(secret="registered", roles=["Mail.Send"])
    env.client_secret("cred", "added-later")
    env.create("fixed", app, {"clientSecret": {"name": "cred"}})
    env.wait_condition("fixed", "False", "Unauthorized")
    failed = cli(env, "renew", "fixed", "--timeout=20s")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert f"{env.namespace}/fixed: not renewed: Unauthorized: " in failed.stdout
    assert env.bed.issuer.token_requests(app.client_id) == 2
    app.secrets.append(env.sv("added-later"))  # the secret is registered in Entra now
    renewed = cli(env, "renew", "fixed", "--timeout=20s")
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    assert "renewed: the new token expires" in renewed.stdout
    assert env.get("fixed")["status"]["roles"] == ["Mail.Send"]


def test_renew_without_a_running_operator_times_out_and_is_served_when_it_starts(env: Env) -> None:
    ready_credential(env)
    env.operator.stop()
    try:
        waited = cli(env, "renew", "mail", "--timeout=2")
        assert waited.returncode == 3, waited.stdout + waited.stderr
        assert "no answer from the operator within 2 s" in waited.stdout
        queued = cli(env, "renew", "mail", "--no-wait")
        assert queued.returncode == 0 and "renew requested" in queued.stdout and ": renewed" not in queued.stdout
    finally:
        env.operator.start()
    value = _annotation(env, "mail")
    wait_for(lambda: env.get("mail")["status"].get("lastRenewRequest") == value, timeout=30,
             what="the request served by the operator once started")


def test_renew_all_or_by_label(env: Env) -> None:
    for name, team in (("a", "red"), ("b", "blue")):
        app = env.secret_app(f"{name}-secret", secret_name=f"{name}-cred")
        manifest = env.manifest(name, app, {"clientSecret": {"name": f"{name}-cred"}})
        manifest["metadata"]["labels"] = {"team": team}
        env.bed.custom.create_namespaced_custom_object(GROUP, VERSION, env.namespace, PLURAL, manifest)
    env.wait_ready("a")
    env.wait_ready("b")
    red = cli(env, "renew", "-l", "team=red")
    assert red.returncode == 0, red.stdout + red.stderr
    assert (_annotation(env, "a") is not None, _annotation(env, "b")) == (True, None)
    everything = cli(env, "renew", "--all")
    assert everything.returncode == 0, everything.stdout + everything.stderr
    assert everything.stdout.count(": renewed: the new token expires") == 2
    nothing = cli(env, "renew", "-l", "team=green")
    assert nothing.returncode == 0 and "no GraphAppCredentials found" in nothing.stderr


# --- inspect secret -----------------------------------------------------------------------------------------------
def test_inspect_secret_shows_header_and_claims_never_the_token(env: Env) -> None:
    app = env.secret_app("pw", secret_name="cred", roles=["Mail.Send", "User.Read.All"])
    env.create("mail", app, {"clientSecret": {"name": "cred"}})
    env.wait_ready("mail")
    token = env.token("mail-token")
    assert token is not None
    claims = env.verified_claims(token)
    # another tool's key holding the token (as a secretTemplate could render): named, never shown
    env.bed.core.patch_namespaced_secret("mail-token", env.namespace, {"stringData": {".env": f"TOKEN={token}"}})
    result = cli(env, "inspect", "secret", "mail-token")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for secret_part in (token, token.split(".")[2], token.split(".")[1], "Bearer", env.sv("pw")):
        assert secret_part not in text + result.stderr
    assert f"Secret:       {env.namespace}/mail-token (Opaque)" in text
    assert "Written by:   GraphAppCredential mail" in text
    assert "Keys:         .env, access_token, authorization, expires_on, token_type (values not shown)" in text
    shown = {m[0]: m[1] for m in re.findall(r"^  (\w+):\s+(.*)$", text, re.MULTILINE)}
    assert (shown["aud"], shown["tid"], shown["appid"], shown["alg"]) == (GRAPH, app.tenant_id, app.client_id,
                                                                          "RS256")
    assert shown["roles"] == '["Mail.Send", "User.Read.All"]'
    assert shown["exp"].startswith(f"{claims['exp']} (") and "in 5" in shown["exp"]
    as_json = cli(env, "inspect", "secret", "mail-token", "-o", "json")
    assert json.loads(as_json.stdout)["claims"] == claims
    assert token not in as_json.stdout and token.split(".")[2] not in as_json.stdout

    not_a_token = cli(env, "inspect", "secret", "cred")
    assert not_a_token.returncode == 1
    assert "no access_token or authorization key" in not_a_token.stderr
    assert env.sv("pw") not in not_a_token.stdout + not_a_token.stderr


# --- kubectl plugin -----------------------------------------------------------------------------------------------
def _plugin_dir(tmp_path: Path) -> Path:
    """A directory with `kubectl-graphcred` as pip installs the declared console script (taken from the venv if it
    is installed there)."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["kubectl-graphcred"].split(":")
    installed = Path(sys.executable).parent / "kubectl-graphcred"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if installed.exists():
        shutil.copy(installed, bin_dir)
    else:
        script = bin_dir / "kubectl-graphcred"
        script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\n"
                          f"sys.exit({function}())\n")
        script.chmod(0o755)
    return bin_dir


def test_kubectl_graphcred_runs_the_plugin(env: Env, tmp_path: Path) -> None:
    token = ready_credential(env)
    bin_dir = _plugin_dir(tmp_path)
    environ: dict[str, Any] = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                               "KUBECONFIG": str(env.bed.kubeconfig)}

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([binary("kubectl"), *args], env=environ, capture_output=True, text=True, timeout=90,
                              check=False)

    listed = kubectl("plugin", "list")
    assert str(bin_dir / "kubectl-graphcred") in listed.stdout, listed.stdout + listed.stderr
    status = kubectl("graphcred", "status", "mail", "-n", env.namespace)
    assert status.returncode == 0, status.stderr
    assert "Name:           mail" in status.stdout and "Ready:          True, TokenIssued" in status.stdout
    renewed = kubectl("graphcred", "renew", "mail", "-n", env.namespace)
    assert renewed.returncode == 0 and "renewed: the new token expires" in renewed.stdout, renewed.stderr
    inspected = kubectl("graphcred", "inspect", "secret", "mail-token", "-n", env.namespace)
    assert inspected.returncode == 0 and "Claims:" in inspected.stdout
    assert token not in inspected.stdout and (env.token("mail-token") or "-") not in inspected.stdout
    usage = kubectl("graphcred", "renew")
    assert usage.returncode == 2 and "Usage: kubectl graphcred renew" in usage.stderr


# --- kubectl habits: TYPE/NAME, -o yaml, version --------------------------------------------------------------------
def test_credentials_and_secrets_are_named_as_kubectl_names_them(env: Env) -> None:
    """Before: `status gac/mail` asked for graphappcredentials/gac/mail and answered `"gac" not found`, and -o yaml
    was refused (ux review §2.15, §1 #22)."""
    token = ready_credential(env)
    for name in ("gac/mail", "graphappcredential/mail", "graphappcredentials.graphcred.io/mail"):
        shown = cli(env, "status", name)
        assert shown.returncode == 0, shown.stderr
        assert "Name:           mail" in shown.stdout
    as_yaml = cli(env, "status", "gac/mail", "-o", "yaml")
    assert as_yaml.returncode == 0, as_yaml.stderr
    doc = yaml.safe_load(as_yaml.stdout)
    assert doc["name"] == "mail" and doc["ready"]["reason"] == "TokenIssued"
    assert doc["events"][0]["lastSeen"] and token not in as_yaml.stdout
    renewed = cli(env, "renew", "gac/mail")
    assert renewed.returncode == 0 and "renewed: the new token expires" in renewed.stdout, renewed.stderr
    inspected = cli(env, "inspect", "secret", "secret/mail-token", "-o", "yaml")
    assert inspected.returncode == 0 and yaml.safe_load(inspected.stdout)["claims"]["aud"] == GRAPH
    wrong_kind = cli(env, "status", "pod/mail")
    assert wrong_kind.returncode == 2
    assert "'pod/mail': expected NAME or gac/NAME or graphappcredential/NAME" in wrong_kind.stderr


def test_inspecting_a_credential_name_points_to_its_token_secret(env: Env) -> None:
    ready_credential(env)
    slip = cli(env, "inspect", "secret", "mail")
    assert slip.returncode == 4
    assert slip.stderr.endswith("(a GraphAppCredential is named mail: its token Secret is mail-token)\n")


def test_a_selector_the_apiserver_cannot_parse_is_a_usage_error(env: Env) -> None:
    """Before: exit 4, as if the cluster had failed."""
    bad = cli(env, "renew", "-l", "bad selector!!")
    assert bad.returncode == 2 and bad.stderr.startswith("graphcred: --selector 'bad selector!!': ")
    assert "HTTP 400" in bad.stderr


def test_version_shows_the_client_and_the_operators_image_tag(env: Env) -> None:
    from kubernetes import client

    labels = {"app.kubernetes.io/name": "graphcred", "app.kubernetes.io/instance": "v"}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": "graphcred", "labels": {**labels, "app.kubernetes.io/version": "0.0.1"}},
                  "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                           "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                               {"name": "graphcred", "image": "registry.example/graphcred:9.8.7"}]}}}}
    client.AppsV1Api(env.bed.api).create_namespaced_deployment(env.namespace, deployment)
    shown = cli(env, "version")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "Client Version:   0.1.0"
    assert (f"Operator Version: 9.8.7 (Deployment {env.namespace}/graphcred, image registry.example/graphcred:9.8.7, "
            "0/1 ready)") in lines
    doc = json.loads(cli(env, "version", "-o", "json").stdout)
    assert doc["clientVersion"] == "0.1.0"
    assert {"namespace": env.namespace, "name": "graphcred", "image": "registry.example/graphcred:9.8.7",
            "version": "9.8.7", "replicas": 1, "readyReplicas": 0} in doc["operators"]


# --- connection problems, in words ----------------------------------------------------------------------------------
def test_connection_problems_name_the_server_the_kubeconfig_and_the_cause(env: Env, tmp_path: Path) -> None:
    """Before: `cannot reach the cluster (MaxRetryError)` for a refused connection and an untrusted CA alike."""
    config = yaml.safe_load(env.bed.kubeconfig.read_text())
    server = config["clusters"][0]["cluster"]["server"]
    untrusted = tmp_path / "untrusted.kubeconfig"
    config["clusters"][0]["cluster"].pop("certificate-authority", None)
    config["clusters"][0]["cluster"].pop("certificate-authority-data", None)
    untrusted.write_text(yaml.safe_dump(config))
    tls = cli(env, "status", "mail", kubeconfig=untrusted)
    assert tls.returncode == 4
    assert tls.stderr == (f"graphcred: get graphappcredential {env.namespace}/mail: cannot reach the cluster at "
                          f"{server} (kubeconfig {untrusted}): TLS: the server's certificate is not trusted (unable "
                          "to get local issuer certificate)\n")

    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    nowhere = tmp_path / "nowhere.kubeconfig"
    nowhere.write_text(yaml.safe_dump(config))
    refused = cli(env, "renew", "mail", kubeconfig=nowhere)
    assert (refused.returncode, refused.stderr) == (4, (
        f"graphcred: get graphappcredential {env.namespace}/mail: cannot reach the cluster at https://127.0.0.1:1 "
        f"(kubeconfig {nowhere}): connection refused - is the server address right, and the apiserver running?\n"))
