from __future__ import annotations

import asyncio
import base64
import datetime as dt
import uuid
from typing import Any

import pytest

from graphcred.api.model import SecretTemplate
from graphcred.api.template import TemplateError
from graphcred.reconcile.memory import Memory
from graphcred.reconcile.snapshot import Snapshot
from graphcred.tokensecret import render as secret
from graphcred.tokensecret.render import Owner, TemplateKeys, TokenFacts

from .fakes import gac, merge_patch, secret_spec
from .harness import NS, Rig

OWNER = Owner("mail", "batch", "uid-1")
EXP = dt.datetime(2026, 11, 24, 21, 3, 11, tzinfo=dt.UTC)
TOKEN = "eyJ0.eyJ1.sig"


def decoded(body: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in body["data"].items()}


def test_render_matches_the_design_layout() -> None:
    body = secret.render("mail-token", OWNER, TOKEN, EXP)
    assert body["type"] == "Opaque"
    meta = body["metadata"]
    assert meta["labels"] == {"app.kubernetes.io/managed-by": "graphcred"}
    assert meta["annotations"] == {"graphcred.io/credential": "mail", "graphcred.io/expires-on": "2026-11-24T21:03:11Z"}
    assert meta["ownerReferences"] == [{"apiVersion": "graphcred.io/v1alpha1", "kind": "GraphAppCredential",
                                        "name": "mail", "uid": "uid-1", "controller": True,
                                        "blockOwnerDeletion": True}]
    assert decoded(body) == {"access_token": TOKEN, "token_type": "Bearer", "expires_on": "2026-11-24T21:03:11Z",
                             "authorization": f"Bearer {TOKEN}"}


def test_only_a_secret_controlled_by_this_credential_is_ours() -> None:
    ours = secret.render("t", OWNER, "x", EXP)["metadata"]
    assert secret.is_ours(ours, OWNER)
    # same name, another uid: left by a deleted namesake, pending garbage collection: adopted
    assert secret.is_ours(ours, Owner("mail", "batch", "uid-2"))
    assert not secret.is_ours(ours, Owner("other", "batch", "uid-2"))  # another credential's Secret
    assert not secret.is_ours({}, OWNER)
    not_controller = {"ownerReferences": [{**ours["ownerReferences"][0], "controller": False}]}
    assert not secret.is_ours(not_controller, OWNER)


def test_stored_expiry_round_trips() -> None:
    meta = secret.render("t", OWNER, "x", EXP)["metadata"]
    assert secret.stored_expiry(meta) == EXP
    assert secret.stored_expiry({"annotations": {"graphcred.io/expires-on": "garbage"}}) is None


# --- secretTemplate -------------------------------------------------------------------------------------------------
TEMPLATE = SecretTemplate.model_validate({
    "metadata": {"labels": {"team": "mail"}, "annotations": {"reloader.stakater.com/match": "true"}},
    "type": "example.com/graph-token",
    "data": {"GRAPH_TOKEN_HEADER": "Authorization: Bearer {{ .accessToken }}",
             "sdk.json": '{"access_token": {{ .accessToken | json }}, "expires_on": {{ .expiresOnUnix }}, '
                         '"tenant": "{{ .tenantId }}", "app": "{{ .clientId }}", "aud": "{{ .audience }}"}'},
})
FACTS = TokenFacts(TOKEN, EXP, tenant_id="tid", client_id="app", audience="https://graph.microsoft.com")


def test_a_template_adds_keys_labels_annotations_and_sets_the_type() -> None:
    body = secret.render("mail-token", OWNER, TOKEN, EXP, template=TEMPLATE, facts=FACTS)
    assert body["type"] == "example.com/graph-token"
    assert body["metadata"]["labels"] == {"team": "mail", "app.kubernetes.io/managed-by": "graphcred"}
    assert body["metadata"]["annotations"]["reloader.stakater.com/match"] == "true"
    assert body["metadata"]["annotations"]["graphcred.io/expires-on"] == "2026-11-24T21:03:11Z"
    data = decoded(body)
    assert data["GRAPH_TOKEN_HEADER"] == f"Authorization: Bearer {TOKEN}"
    assert data["sdk.json"] == (f'{{"access_token": "{TOKEN}", "expires_on": {int(EXP.timestamp())}, '
                                '"tenant": "tid", "app": "app", "aud": "https://graph.microsoft.com"}')
    assert data["access_token"] == TOKEN  # the default keys stay
    assert secret.template_keys(body) == TemplateKeys(data=frozenset({"GRAPH_TOKEN_HEADER", "sdk.json"}),
                                                      labels=frozenset({"team"}),
                                                      annotations=frozenset({"reloader.stakater.com/match"}))


def test_token_facts_never_show_the_token() -> None:
    assert TOKEN not in repr(FACTS)


def test_a_secret_larger_than_kubernetes_allows_is_refused_without_the_token() -> None:
    big = SecretTemplate.model_validate({"data": {f"k{i}": "{{ .accessToken }}" * 200 for i in range(32)}})
    token = "t" * 200
    with pytest.raises(TemplateError) as raised:
        secret.render("t", OWNER, token, EXP, template=big)
    assert "1 MiB" in str(raised.value) and token not in str(raised.value)


def test_the_patch_names_only_graphcreds_keys_and_removes_template_keys_no_longer_rendered() -> None:
    body = secret.render("mail-token", OWNER, TOKEN, EXP, template=TEMPLATE, facts=FACTS)
    before = TemplateKeys(data=frozenset({"OLD_KEY", "sdk.json"}), labels=frozenset({"old-label"}),
                          annotations=frozenset({"old/annotation"}))
    patch = secret.update_patch(body, "42", before)
    assert patch["metadata"]["resourceVersion"] == "42"
    assert "ownerReferences" not in patch["metadata"] and "finalizers" not in patch["metadata"]
    assert "type" not in patch  # immutable: a type change is a re-creation
    assert patch["data"]["OLD_KEY"] is None and patch["data"]["sdk.json"] == body["data"]["sdk.json"]
    assert patch["metadata"]["labels"] == {"old-label": None, **body["metadata"]["labels"]}
    assert patch["metadata"]["annotations"]["old/annotation"] is None
    adopted = secret.update_patch(body, "42", TemplateKeys(), owner_references=[{"uid": "x"}])
    assert adopted["metadata"]["ownerReferences"] == [{"uid": "x"}]


def test_applied_the_patch_keeps_what_others_added_and_ours_wins() -> None:
    # the Secret as another tool left it: its own label, annotation, finalizer and key, and an edit of ours
    stored = secret.render("mail-token", OWNER, "old", EXP, template=TEMPLATE, facts=FACTS)
    before = secret.template_keys(stored)
    stored["metadata"]["labels"].update({"argocd.argoproj.io/instance": "app", "team": "edited"})
    stored["metadata"]["annotations"]["backup.example.com/keep"] = "yes"
    stored["metadata"]["finalizers"] = ["backup.example.com/protect"]
    stored["data"]["extra"] = base64.b64encode(b"theirs").decode()
    body = secret.render("mail-token", OWNER, TOKEN, EXP, template=TEMPLATE, facts=FACTS)
    after = merge_patch(stored, secret.update_patch(body, "1", before))
    assert after["metadata"]["labels"] == {"argocd.argoproj.io/instance": "app", "team": "mail",
                                           "app.kubernetes.io/managed-by": "graphcred"}
    assert after["metadata"]["annotations"]["backup.example.com/keep"] == "yes"
    assert after["metadata"]["finalizers"] == ["backup.example.com/protect"]
    assert decoded(after)["extra"] == "theirs" and decoded(after)["access_token"] == TOKEN


# managedFields as the apiserver (v1.37) wrote them: graphcred created the Secret with a template key T1 and a
# label, then a tool added its own label, annotation and finalizer.
MANAGED_FIELDS = [
    {"manager": "graphcred", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1",
     "fieldsV1": {"f:data": {".": {}, "f:T1": {}, "f:access_token": {}, "f:authorization": {}},
                  "f:metadata": {"f:annotations": {".": {}, "f:graphcred.io/credential": {}, "f:team/a": {}},
                                 "f:labels": {".": {}, "f:app.kubernetes.io/managed-by": {}, "f:team": {}},
                                 "f:ownerReferences": {".": {}, 'k:{"uid":"u"}': {}}},
                  "f:type": {}}},
    {"manager": "kubectl-edit", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1",
     "fieldsV1": {"f:metadata": {"f:annotations": {"f:reloader": {}}, "f:finalizers": {".": {}, 'v:"tool/f"': {}},
                                 "f:labels": {"f:argocd": {}}}}},
]


def test_the_template_keys_graphcred_wrote_come_from_its_managed_fields() -> None:
    assert secret.written_template_keys({"managedFields": MANAGED_FIELDS}) == TemplateKeys(
        data=frozenset({"T1"}), labels=frozenset({"team"}), annotations=frozenset({"team/a"}))
    assert secret.written_template_keys({}) == TemplateKeys()
    assert secret.written_template_keys({"managedFields": [{"manager": "graphcred", "fieldsV1": "junk"}]}) == \
        TemplateKeys()


def test_a_new_type_carries_other_tools_labels_and_annotations_only() -> None:
    current = secret.render("t", OWNER, "old", EXP, template=TEMPLATE, facts=FACTS)
    before = secret.template_keys(current)
    current["metadata"]["labels"]["argocd"] = "x"
    current["metadata"]["annotations"]["reloader"] = "true"
    current["metadata"]["finalizers"] = ["tool/f"]
    current["data"]["extra"] = "eA=="
    body = secret.render("t", OWNER, TOKEN, EXP, template=SecretTemplate.model_validate({"type": "a.example/b"}))
    replacement = secret.retyped(body, current, before)
    assert replacement["type"] == "a.example/b"
    assert replacement["metadata"]["labels"] == {"argocd": "x", "app.kubernetes.io/managed-by": "graphcred"}
    assert set(replacement["metadata"]["annotations"]) == {"reloader", "graphcred.io/credential",
                                                           "graphcred.io/expires-on"}
    assert "finalizers" not in replacement["metadata"] and "extra" not in replacement["data"]


def test_the_stored_token_is_read_back() -> None:
    assert secret.stored_token(secret.render("t", OWNER, TOKEN, EXP)) == TOKEN
    assert secret.stored_token({"data": {"access_token": "not base64!"}}) is None
    assert secret.stored_token({}) is None


# --- the write path: the real Reconciler over the in-memory Kube ----------------------------------------------------
class OneCredential:
    """Credential "a" of one app, reconciled pass by pass (no controller) by a harness.Rig, with one Memory."""

    def __init__(self) -> None:
        self.rig = Rig()
        self.clock, self.kube, self.tokens = self.rig.clock, self.rig.kube, self.rig.tokens
        self.uid = str(uuid.uuid4())
        self.client = str(uuid.uuid4())
        self.mem = Memory()
        self.kube.objects.add((NS, "a"))

    def run(self, generation: int = 1, **spec: Any) -> None:
        body = gac("a", secret_spec(str(uuid.UUID(int=1)), self.client, **spec), uid=self.uid,
                   generation=generation)
        asyncio.run(self.rig.reconciler.reconcile(Snapshot.of(body), self.mem))

    def renew(self, generation: int = 1, **spec: Any) -> None:
        self.mem.renew.requested, self.mem.renew.value = True, str(self.clock())
        self.run(generation, **spec)

    @property
    def secret(self) -> dict[str, Any]:
        return self.kube.secrets[(NS, "a-token")]

    def data(self) -> dict[str, str]:
        return decoded(self.secret)

    def ready(self) -> dict[str, Any]:
        cond = self.kube.ready(NS, "a")
        assert cond is not None
        return cond

    def tool_edits(self) -> None:
        """Another tool adds metadata and a key, and edits one of graphcred's labels."""
        meta = self.secret["metadata"]
        meta.setdefault("labels", {}).update({"argocd.argoproj.io/instance": "app",
                                              "app.kubernetes.io/managed-by": "someone"})
        meta.setdefault("annotations", {})["reloader.stakater.com/match"] = "true"
        meta["finalizers"] = ["backup.example.com/protect"]
        self.secret["data"]["extra"] = base64.b64encode(b"theirs").decode()
        self.kube.touch(NS, "a-token")


def test_a_refresh_keeps_what_other_tools_added() -> None:
    rig = OneCredential()
    rig.run()
    rig.tool_edits()
    first = rig.data()["access_token"]
    for _ in range(2):
        rig.renew()
    meta = rig.secret["metadata"]
    assert rig.data()["access_token"] != first and rig.tokens.requests == 3
    assert meta["labels"] == {"argocd.argoproj.io/instance": "app", "app.kubernetes.io/managed-by": "graphcred"}
    assert meta["annotations"]["reloader.stakater.com/match"] == "true"
    assert meta["finalizers"] == ["backup.example.com/protect"]
    assert rig.data()["extra"] == "theirs"


def test_a_template_change_alone_renders_again_without_a_token_request() -> None:
    rig = OneCredential()
    rig.run(secretTemplate={"data": {"A": "a={{ .accessToken }}"}})
    token = rig.data()["access_token"]
    rig.run(2, secretTemplate={"data": {"B": "b={{ .accessToken }}"}, "metadata": {"labels": {"x": "y"}}})
    assert rig.tokens.requests == 1, "a template change requested a token"
    assert "A" not in rig.data(), "a key no longer in the template stays behind"
    assert rig.data()["B"] == f"b={token}" and rig.data()["access_token"] == token
    assert rig.secret["metadata"]["labels"]["x"] == "y"
    assert rig.ready()["observedGeneration"] == 2 and rig.ready()["reason"] == "TokenIssued"
    # any other change of the spec acquires a new token, as before
    rig.run(3, secretTemplate={"data": {"B": "b={{ .accessToken }}"}}, refreshBeforeExpiry="10m")
    assert rig.tokens.requests == 2 and rig.data()["B"] == f"b={rig.data()['access_token']}"
    assert "x" not in rig.secret["metadata"]["labels"]


def test_a_new_type_recreates_the_secret() -> None:
    rig = OneCredential()
    rig.run()
    rig.tool_edits()
    rig.secret["metadata"].pop("finalizers")  # a finalizer would hold the old Secret: see the e2e test
    rig.run(2, secretTemplate={"type": "kubernetes.io/basic-auth",
                               "data": {"username": "graphcred", "password": "{{ .accessToken }}"}})
    assert rig.secret["type"] == "kubernetes.io/basic-auth" and rig.kube.deletes == [(NS, "a-token")]
    assert rig.data()["password"] == rig.data()["access_token"]
    assert rig.secret["metadata"]["labels"]["argocd.argoproj.io/instance"] == "app"
    assert "extra" not in rig.data()
    assert rig.ready()["status"] == "True"


def test_a_secret_someone_else_controls_is_still_a_conflict() -> None:
    rig = OneCredential()
    rig.kube.create_secret(NS, secret.render("a-token", Owner("other", NS, "uid-x"), "theirs", EXP))
    rig.run(secretTemplate={"data": {"A": "{{ .accessToken }}"}})
    assert rig.ready()["reason"] == "SecretConflict"
    assert rig.data() == decoded(secret.render("a-token", Owner("other", NS, "uid-x"), "theirs", EXP))


def test_a_template_too_large_for_this_token_is_invalid_spec_and_the_last_token_stays() -> None:
    rig = OneCredential()
    rig.run()
    before = rig.data()
    rig.run(2, secretTemplate={"data": {f"k{i}": "{{ .accessToken }}" * 256 for i in range(32)}})
    assert rig.ready()["reason"] == "InvalidSpec" and "1 MiB" in rig.ready()["message"]
    assert rig.data() == before
