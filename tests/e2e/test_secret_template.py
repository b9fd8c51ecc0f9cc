"""The token Secret fits other tools (issue 11, item 1), on the real bed: what other tools put on it survives every
refresh, spec.secretTemplate adds labels, annotations, keys rendered from the token and a type, and the rendered
keys work with the tools they are for (curl against the bed's Graph API, git's credential helper protocol, a JSON
parser), mounted the way the kubelet mounts a Secret volume. The examples are those of examples/secret-template.yaml.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from graphcred.api.keys import GROUP, PLURAL, RENEW_ANNOTATION, VERSION
from graphcred_testbed import jose
from graphcred_testbed.bed import wait_for
from graphcred_testbed.volume import SecretVolume

from ..helpers import Env

pytestmark = pytest.mark.bed
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "secret-template.yaml"
CREDENTIAL = {"clientSecret": {"name": "cred"}}
FINALIZER = "backup.example.com/protect"
AZURE_DEVOPS = "499b84ac-1321-427f-aa17-267ca6975798"


def example_template(name: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d and d["kind"] == "GraphAppCredential"]
    spec: dict[str, Any] = next(d["spec"] for d in docs if d["metadata"]["name"] == name)
    return spec


def decoded(env: Env, name: str) -> dict[str, str]:
    secret = env.secret(name)
    assert secret is not None, f"no Secret {name}"
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def uti(token: str) -> str:
    return str(jose.parse(token)[1]["uti"])


def assert_absent(token: str, text: str, where: str) -> None:
    # not `assert token not in text`: pytest's report of a failing assert would print the token
    if token in text:
        pytest.fail(f"the token appeared in {where}", pytrace=False)


def same(actual: object, expected: object, what: str) -> None:
    """An equality check whose failure report shows neither value: they hold tokens."""
    if actual != expected:
        pytest.fail(f"{what}: not as expected (values not shown: they hold tokens)", pytrace=False)


def renew(env: Env, name: str, secret_name: str) -> str:
    """Ask for a new token (the renew annotation) and wait until the Secret holds it."""
    before = env.token(secret_name)
    env.bed.custom.patch_namespaced_custom_object(GROUP, VERSION, env.namespace, PLURAL, name, {"metadata": {
        "annotations": {RENEW_ANNOTATION: dt.datetime.now(dt.UTC).isoformat()}}})
    token: str = wait_for(lambda: (t := env.token(secret_name)) != before and t, timeout=30, what="a new token")
    return token


def tool_patch(env: Env, name: str, patch: dict[str, Any], manager: str = "some-tool") -> None:
    """Another tool's write, made as its own field manager."""
    env.bed.core.patch_namespaced_secret(name, env.namespace, patch, field_manager=manager)


def release(env: Env, name: str) -> None:
    """The tool lets go of the Secret: its finalizer removed (else the namespace could never be deleted)."""
    secret = env.secret(name)
    if secret is not None and FINALIZER in (secret.metadata.finalizers or []):
        kept = [f for f in secret.metadata.finalizers if f != FINALIZER]
        env.bed.core.patch_namespaced_secret(name, env.namespace, {"metadata": {"finalizers": kept or None}})


def no_token_in_reports(env: Env, name: str, tokens: list[str]) -> None:
    texts = [json.dumps(env.get(name)), *(m for _, _, m in env.events(name)), env.operator.logs()]
    for token in tokens:
        for text in texts:
            assert_absent(token, text, "the status, Events or operator log")


# --- others' metadata -------------------------------------------------------------------------------------------
def test_what_other_tools_put_on_the_token_secret_survives_refreshes(env: Env) -> None:
    app = env.secret_app("s")
    env.create("tools", app, CREDENTIAL, secretTemplate={"metadata": {"labels": {"team": "mail"}}})
    env.wait_ready("tools")
    # Reloader-style annotation, Argo CD's tracking label and annotation, a backup tool's finalizer and key; and
    # edits of graphcred's own label and of the template's
    tool_patch(env, "tools-token", {
        "metadata": {"labels": {"app.kubernetes.io/instance": "graph-daemon", "team": "edited",
                                "app.kubernetes.io/managed-by": "someone-else"},
                     "annotations": {"reloader.stakater.com/match": "true",
                                     "argocd.argoproj.io/tracking-id": "graph-daemon:/Secret:ns/tools-token"},
                     "finalizers": [FINALIZER]},
        "data": {"backup.conf": base64.b64encode(b"keep=7d").decode()}})
    tokens = []
    try:
        for _ in range(2):
            tokens.append(renew(env, "tools", "tools-token"))
            secret = env.secret("tools-token")
            assert secret is not None
            meta = secret.metadata
            assert meta.labels == {"app.kubernetes.io/instance": "graph-daemon", "team": "mail",
                                   "app.kubernetes.io/managed-by": "graphcred"}, "graphcred's own keys win"
            assert meta.annotations["reloader.stakater.com/match"] == "true"
            assert meta.annotations["argocd.argoproj.io/tracking-id"] == "graph-daemon:/Secret:ns/tools-token"
            assert meta.finalizers == [FINALIZER]
            data = decoded(env, "tools-token")
            assert data["backup.conf"] == "keep=7d"
            same(data["access_token"], tokens[-1], "access_token")
            same(data["authorization"], f"Bearer {tokens[-1]}", "authorization")
        assert len(set(tokens)) == 2
        env.wait_ready("tools")
    finally:
        release(env, "tools-token")
    no_token_in_reports(env, "tools", tokens)


# --- rendered keys, used by the tools they are for ------------------------------------------------------------
def curl_graph(env: Env, directory: Path) -> subprocess.CompletedProcess[str]:
    curl = shutil.which("curl")
    assert curl is not None, "curl is needed to check the GRAPH_TOKEN_HEADER example"
    argv = [curl, "-sS", "--fail-with-body", "-H", f"@{directory}/GRAPH_TOKEN_HEADER",
            f"{env.bed.graph.url}/v1.0/users?$select=displayName"]
    environment = {"PATH": os.environ.get("PATH", ""), "CURL_CA_BUNDLE": str(env.bed.issuer_ca_file)}
    return subprocess.run(argv, env=environment, capture_output=True, text=True, timeout=30)


def test_the_graph_example_keys_follow_the_token_and_work_with_curl_and_json(env: Env, tmp_path: Path) -> None:
    template = example_template("graph-daemon")["secretTemplate"]
    app = env.secret_app("s", roles=["User.Read.All"])
    env.create("graph-daemon", app, CREDENTIAL, secretTemplate=template)
    env.wait_ready("graph-daemon")
    secret = env.secret("graph-daemon-token")
    assert secret is not None and secret.type == "Opaque"
    assert secret.metadata.labels["app.kubernetes.io/part-of"] == "graph-daemon"
    assert secret.metadata.annotations["reloader.stakater.com/ignore"] == "true"
    volume = SecretVolume(tmp_path / "graphcred")
    tokens = []
    for round_ in range(2):
        data = decoded(env, "graph-daemon-token")
        token = data["access_token"]
        tokens.append(token)
        claims = jose.parse(token)[1]
        same(data["GRAPH_TOKEN_HEADER"], f"Authorization: Bearer {token}", "GRAPH_TOKEN_HEADER")
        same(data["graph.env"], f"GRAPH_TOKEN={token}\nGRAPH_TOKEN_EXPIRES_ON={data['expires_on']}\n"
             f"AZURE_TENANT_ID={claims['tid']}\nAZURE_CLIENT_ID={app.client_id}\n", "graph.env")
        rendered = json.loads(data["token.json"])
        # expires_on is the expiry graphcred computed (its request's start + expires_in, whole seconds): at most a
        # few seconds before the token's exp, which the issuer computed from its own clock a moment later
        expires_on = rendered.pop("expires_on", None)
        assert isinstance(expires_on, int) and claims["exp"] - 5 <= expires_on <= claims["exp"], "token.json expiry"
        same(rendered, {"access_token": token, "token_type": "Bearer", "resource": "https://graph.microsoft.com"},
             "token.json")
        # curl reads the header line from the mounted file: the token is never on its command line
        secret = env.secret("graph-daemon-token")
        assert secret is not None
        volume.write_secret(secret)
        before = len(env.bed.graph.calls())
        result = curl_graph(env, volume.directory)
        assert result.returncode == 0, result.stderr
        assert "Adele Vance" in result.stdout
        calls = env.bed.graph.calls()[before:]
        assert [(c.status, c.token_id) for c in calls] == [(200, uti(token))]
        if round_ == 0:
            renew(env, "graph-daemon", "graph-daemon-token")
    assert len(set(tokens)) == 2, "the renew request did not replace the token"
    no_token_in_reports(env, "graph-daemon", tokens)


def test_the_azure_devops_example_answers_git_credential_fill(env: Env, tmp_path: Path) -> None:
    spec = example_template("azure-devops-git")
    app = env.secret_app("s")
    env.create("devops", app, CREDENTIAL, scopes=spec["scopes"], secretName="devops-git",
               secretTemplate=spec["secretTemplate"])
    env.wait_ready("devops")
    secret = env.secret("devops-git")
    assert secret is not None and secret.type == "kubernetes.io/basic-auth"
    data = decoded(env, "devops-git")
    token = data["access_token"]
    assert jose.parse(token)[1]["aud"] == AZURE_DEVOPS
    assert data["username"] == "graphcred"
    same(data["password"], token, "password")
    volume = SecretVolume(tmp_path / "graphcred")
    volume.write_secret(secret)
    # git itself asks the helper of the example, as it would before a fetch from dev.azure.com
    git = shutil.which("git")
    assert git is not None, "git is needed to check the git credential helper example"
    helper = f'!f() {{ test "$1" = get && cat {volume.directory}/git-credentials; }}; f'
    home = tmp_path / "home"
    home.mkdir()
    result = subprocess.run(
        [git, "-c", f"credential.https://dev.azure.com.helper={helper}", "credential", "fill"],
        input="protocol=https\nhost=dev.azure.com\npath=org/project/_git/repo\n\n",
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(home), "GIT_TERMINAL_PROMPT": "0"},
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    answer = dict(line.split("=", 1) for line in result.stdout.splitlines() if line)
    assert answer["username"] == "graphcred" and answer["host"] == "dev.azure.com"
    same(answer.get("password"), token, "the password in git's credential answer")


@pytest.mark.compat  # the secretTemplate examples pass the oldest Kubernetes' CRD validation too
def test_the_examples_are_accepted_by_the_apiserver(env: Env) -> None:
    result = env.bed.kubectl("apply", "--dry-run=server", "-n", env.namespace, "-f", str(EXAMPLE), check=False)
    assert result.returncode == 0, result.stderr


# --- a change of the template ------------------------------------------------------------------------------------
def test_a_template_change_renders_the_secret_again_without_a_token_request(env: Env) -> None:
    app = env.secret_app("s")
    env.create("change", app, CREDENTIAL, secretTemplate={"data": {"A": "a={{ .accessToken }}"}})
    env.wait_ready("change")
    token = env.token("change-token")
    assert token is not None
    same(decoded(env, "change-token")["A"], f"a={token}", "key A")
    requests = env.bed.issuer.token_requests(app.client_id)
    env.patch_spec("change", {"secretTemplate": {"data": {"A": None, "B": "b={{ .accessToken | base64 }}"},
                                                 "metadata": {"labels": {"tier": "batch"}}}})
    def rendered_again() -> dict[str, str] | None:
        data = decoded(env, "change-token")
        return data if "B" in data and "A" not in data else None

    data = wait_for(rendered_again, timeout=15, what="the Secret rendered with the new template")
    same(data["B"], "b=" + base64.b64encode(token.encode()).decode(), "key B")
    same(data["access_token"], token, "the token (replaced?)")
    assert env.bed.issuer.token_requests(app.client_id) == requests, "a template change requested a token"
    secret = env.secret("change-token")
    assert secret is not None and secret.metadata.labels["tier"] == "batch"
    generation = env.get("change")["metadata"]["generation"]
    obj = wait_for(lambda: (o := env.get("change"))["status"].get("observedGeneration") == generation and o,
                   timeout=10, what="the status for the new generation")
    ready = env.ready_condition("change")
    assert ready is not None and (ready["status"], ready["reason"]) == ("True", "TokenIssued")
    assert obj["status"]["expiresOn"] == data["expires_on"]


def test_a_bad_template_is_invalid_spec_naming_the_key_before_any_token_request(env: Env) -> None:
    app = env.secret_app("s")
    env.create("bad", app, CREDENTIAL, secretTemplate={"data": {"GRAPH_TOKEN_HEADER": "Bearer {{ .accessTokn }}"}})
    cond = env.wait_condition("bad", "False", "InvalidSpec")
    message = cond["status"]["conditions"][0]["message"]
    assert "spec.secretTemplate.data.GRAPH_TOKEN_HEADER" in message and "unknown field .accessTokn" in message
    events = wait_for(lambda: [e for e in env.events("bad") if e[1] == "InvalidSpec"], timeout=10, what="an Event")
    assert events[0][0] == "Warning" and "spec.secretTemplate.data.GRAPH_TOKEN_HEADER" in events[0][2]
    assert env.bed.issuer.token_requests(app.client_id) == 0 and env.secret("bad-token") is None
    # a Ready credential given a bad template keeps its token in the Secret: never blanked
    env.create("good", app, CREDENTIAL)
    env.wait_ready("good")
    before = decoded(env, "good-token")
    env.patch_spec("good", {"secretTemplate": {"data": {"x": "{{ .accessToken | upper }}"}}})
    cond = env.wait_condition("good", "False", "InvalidSpec")
    assert "spec.secretTemplate.data.x" in cond["status"]["conditions"][0]["message"]
    assert "unknown filter upper" in cond["status"]["conditions"][0]["message"]
    same(decoded(env, "good-token"), before, "the token Secret after a bad template")
    no_token_in_reports(env, "good", [before["access_token"]])


def test_a_template_bomb_is_invalid_spec_at_once_and_never_retried(env: Env) -> None:
    # security review, finding 1: 26 json filters were accepted and rendered 134 MB after each token request
    app = env.secret_app("s")
    env.create("bomb", app, CREDENTIAL, secretTemplate={"data": {"x": "{{ .accessToken" + " | json" * 26 + " }}"}})
    cond = env.wait_condition("bomb", "False", "InvalidSpec")
    message = cond["status"]["conditions"][0]["message"]
    assert "spec.secretTemplate.data.x" in message and "more than 4 filters in one action" in message, message
    assert "refreshAt" not in cond["status"], "waits for a change of the spec, no retries"
    env.assert_stays(lambda: env.bed.issuer.token_requests(app.client_id) == 0 and env.secret("bomb-token") is None,
                     5.0, "no token request and no Secret for a template that can never be rendered")


@pytest.mark.compat  # the CRD's secretTemplate rules (CEL over map keys) on the oldest Kubernetes
def test_the_apiserver_refuses_graphcreds_own_keys_in_a_template(env: Env) -> None:
    app = env.secret_app("s")
    for template, rule in [
        ({"data": {"access_token": "x"}}, "graphcred's own token keys"),
        ({"metadata": {"labels": {"app.kubernetes.io/managed-by": "me"}}}, "are graphcred's own"),
        ({"metadata": {"annotations": {"graphcred.io/credential": "me"}}}, "are graphcred's own"),
        ({"data": {"no spaces": "x"}}, "keys must match"),
        ({"type": "kubernetes.io/service-account-token"}, "Kubernetes treats specially"),
        ({"type": "kubernetes.io/basic-auth", "data": {"x": "y"}}, "needs data.username or data.password"),
    ]:
        with pytest.raises(client.ApiException) as refused:
            env.create("refused", app, CREDENTIAL, secretTemplate=template)
        assert refused.value.status == 422 and rule in str(refused.value.body), refused.value.body


# --- ownership and the Secret's type -------------------------------------------------------------------------------
def test_a_secret_of_another_owner_is_still_a_conflict(env: Env) -> None:
    env.bed.core.create_namespaced_secret(env.namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="taken", labels={"owner": "someone"}), string_data={"theirs": "1"}))
    version = env.bed.core.read_namespaced_secret("taken", env.namespace).metadata.resource_version
    app = env.secret_app("s")
    env.create("conflict", app, CREDENTIAL, secretName="taken",
               secretTemplate={"data": {"A": "{{ .accessToken }}"}, "metadata": {"labels": {"x": "y"}}})
    env.wait_condition("conflict", "False", "SecretConflict")
    secret = env.bed.core.read_namespaced_secret("taken", env.namespace)
    assert secret.metadata.resource_version == version and secret.metadata.labels == {"owner": "someone"}


def test_a_new_type_recreates_the_secret_once_other_tools_let_go(env: Env) -> None:
    app = env.secret_app("s")
    env.create("typed", app, CREDENTIAL)
    env.wait_ready("typed")
    token = env.token("typed-token")
    assert token is not None
    tool_patch(env, "typed-token", {"metadata": {"labels": {"app.kubernetes.io/instance": "graph-daemon"},
                                                 "finalizers": [FINALIZER]}})
    try:
        env.patch_spec("typed", {"secretTemplate": {
            "type": "kubernetes.io/basic-auth", "data": {"username": "graphcred", "password": "{{ .accessToken }}"}}})
        # deleted, but held by the tool's finalizer: graphcred says so, and the last token stays in place
        cond = env.wait_condition("typed", "False", "SecretConflict")
        message = cond["status"]["conditions"][0]["message"]
        assert FINALIZER in message and "from Opaque to kubernetes.io/basic-auth" in message, message
        secret = env.secret("typed-token")
        assert secret is not None and secret.metadata.deletion_timestamp is not None
        same(env.token("typed-token"), token, "the token in the Secret being deleted")
    finally:
        release(env, "typed-token")
    env.wait_ready("typed", timeout=30)  # the Secret watch saw it go
    secret = env.secret("typed-token")
    assert secret is not None and secret.type == "kubernetes.io/basic-auth"
    data = decoded(env, "typed-token")
    assert data["username"] == "graphcred"
    same(data["password"], data["access_token"], "password")
    assert secret.metadata.labels["app.kubernetes.io/instance"] == "graph-daemon", "the tool's label was dropped"
    assert not secret.metadata.finalizers
    no_token_in_reports(env, "typed", [token, data["access_token"]])
