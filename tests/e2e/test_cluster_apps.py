"""ClusterGraphApp on the real bed: one app identity for many namespaces, under the admin's policy. The app's client
secret lives in the operator's namespace (graphcred-system on the bed); tenants name the app in spec.appRef and get
tokens only while its policy selects their namespace and allows their scopes."""

from __future__ import annotations

import base64
import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from graphcred.api.keys import APP_PLURAL, GROUP, PLURAL, VERSION
from graphcred_testbed.bed import Bed, wait_for
from graphcred_testbed.issuer import App

from ..helpers import GRAPH, Env

pytestmark = [pytest.mark.bed]

APPS_NS = "graphcred-system"  # the session operator's cluster resource namespace (its default outside a pod)
SCOPE = f"{GRAPH}/.default"


@pytest.fixture
def apps_namespace(bed: Bed) -> str:
    with contextlib.suppress(client.ApiException):
        bed.create_namespace(APPS_NS)
    return APPS_NS


@contextlib.contextmanager
def cluster_app(env: Env, *, selector: dict[str, Any], scopes: tuple[str, ...] = (SCOPE,),
                roles: list[str] | None = None) -> Iterator[tuple[str, App]]:
    """An app registered with the issuer, its client secret in the operator's namespace, and a ClusterGraphApp for
    it (a name of this test's own); deleted afterwards."""
    name = f"platform-{uuid.uuid4().hex[:8]}"
    app = env.register_app(secret=name, roles=roles)
    bed = env.bed
    with contextlib.suppress(client.ApiException):
        bed.create_namespace(APPS_NS)
    bed.core.create_namespaced_secret(APPS_NS, client.V1Secret(metadata=client.V1ObjectMeta(name=name),
                                                               string_data={"clientSecret": env.sv(name)}))
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterGraphApp", "metadata": {"name": name},
            "spec": {"tenantId": app.tenant_id, "clientId": app.client_id, "authorityHost": bed.authority_host,
                     "credential": {"clientSecret": {"name": name}},
                     "policy": {"namespaceSelector": selector, "allowedScopes": list(scopes)}}}
    bed.custom.create_cluster_custom_object(GROUP, VERSION, APP_PLURAL, body)
    try:
        yield name, app
    finally:
        with contextlib.suppress(client.ApiException):
            bed.custom.delete_cluster_custom_object(GROUP, VERSION, APP_PLURAL, name)
        with contextlib.suppress(client.ApiException):
            bed.core.delete_namespaced_secret(name, APPS_NS)


def label(bed: Bed, namespace: str, labels: dict[str, str | None]) -> None:
    bed.core.patch_namespace(namespace, {"metadata": {"labels": labels}})


def use(env: Env, name: str, app: str, namespace: str | None = None, scopes: tuple[str, ...] = (SCOPE,)) -> None:
    env.bed.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace or env.namespace, PLURAL,
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GraphAppCredential", "metadata": {"name": name},
         "spec": {"appRef": {"name": app}, "scopes": list(scopes)}})


def test_a_selected_namespace_gets_the_apps_token_and_a_relabelled_one_loses_it(env: Env) -> None:
    bed = env.bed
    key = f"graph-{uuid.uuid4().hex[:6]}"
    label(bed, env.namespace, {key: "allowed"})
    with cluster_app(env, selector={"matchLabels": {key: "allowed"}}, roles=["Mail.Read"]) as (name, app):
        use(env, "mail", name)
        obj = env.wait_ready("mail")
        assert obj["status"]["appId"] == app.client_id and obj["status"]["roles"] == ["Mail.Read"]
        secret = env.secret("mail-token")
        assert secret is not None
        token = base64.b64decode(secret.data["access_token"]).decode()
        assert env.verified_claims(token)["appid"] == app.client_id
        # the app's secret never entered the tenant's namespace
        assert [s.metadata.name for s in bed.core.list_namespaced_secret(env.namespace).items] == ["mail-token"]
        label(bed, env.namespace, {key: None})
        wait_for(lambda: env.secret("mail-token") is None, timeout=15, what="the token Secret deleted")
        cond = env.wait_condition("mail", "False", "NotPermitted", timeout=15)["status"]["conditions"][0]
        assert name in cond["message"] and env.namespace in cond["message"], cond


def test_a_namespace_the_policy_does_not_select_gets_no_token_request(env: Env) -> None:
    with cluster_app(env, selector={"matchLabels": {"nobody": "here"}}) as (name, app):
        use(env, "mail", name)
        env.wait_condition("mail", "False", "NotPermitted")
        assert env.bed.issuer.token_requests(app.client_id) == 0
        assert env.secret("mail-token") is None


def test_an_app_created_after_its_users_is_picked_up(env: Env) -> None:
    missing = f"later-{uuid.uuid4().hex[:6]}"
    use(env, "mail", missing)
    env.wait_condition("mail", "False", "AppNotFound")
    with cluster_app(env, selector={}) as (name, _):
        env.patch_spec("mail", {"appRef": {"name": name}})
        env.wait_ready("mail")
