"""The control plane is real: CRDs, watches, garbage collection and TokenRequest behave as in a cluster."""

from __future__ import annotations

import base64
import json
import ssl
import threading
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest
from kubernetes import client, watch

from graphcred_testbed.bed import Bed, wait_for

pytestmark = pytest.mark.bed

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.smoke.graphcred.io"},
    "spec": {
        "group": "smoke.graphcred.io",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
        "scope": "Namespaced",
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "properties": {"size": {"type": "integer", "minimum": 1}}}}}},
        }],
    },
}


def test_kubectl_reaches_the_apiserver(bed: Bed) -> None:
    out = bed.kubectl("version", "-o", "json").stdout
    server = json.loads(out)["serverVersion"]
    assert server["gitVersion"].startswith("v1.37.")


def test_custom_resource_is_created_and_watched(bed: Bed, namespace: str) -> None:
    ext = client.ApiextensionsV1Api(bed.api)
    try:
        ext.create_custom_resource_definition(WIDGET_CRD)
    except client.ApiException as exc:
        if exc.status != 409:
            raise

    def established() -> bool:
        crd = ext.read_custom_resource_definition("widgets.smoke.graphcred.io")
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    wait_for(established, what="Widget CRD established")
    seen: list[str] = []
    started = threading.Event()

    def watcher() -> None:
        w = watch.Watch()
        started.set()
        for event in w.stream(bed.custom.list_namespaced_custom_object, "smoke.graphcred.io", "v1",
                              namespace, "widgets", timeout_seconds=20):
            seen.append(f"{event['type']}:{event['object']['metadata']['name']}")
            if event["type"] == "ADDED":
                w.stop()

    t = threading.Thread(target=watcher)
    t.start()
    started.wait(5)
    bed.custom.create_namespaced_custom_object(
        "smoke.graphcred.io", "v1", namespace, "widgets",
        {"apiVersion": "smoke.graphcred.io/v1", "kind": "Widget", "metadata": {"name": "w1"},
         "spec": {"size": 3}})
    t.join(25)
    assert "ADDED:w1" in seen
    # the schema is enforced by the server, not by us
    with pytest.raises(client.ApiException) as refused:
        bed.custom.create_namespaced_custom_object(
            "smoke.graphcred.io", "v1", namespace, "widgets",
            {"apiVersion": "smoke.graphcred.io/v1", "kind": "Widget", "metadata": {"name": "w2"},
             "spec": {"size": 0}})
    assert refused.value.status == 422


def test_owned_secret_is_garbage_collected(bed: Bed, namespace: str) -> None:
    owner = bed.core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner")))
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner",
                                  uid=owner.metadata.uid, controller=True, block_owner_deletion=True)
    bed.core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="owned", owner_references=[ref]), string_data={"k": "v"}))
    bed.core.delete_namespaced_config_map("owner", namespace)

    def gone() -> bool:
        try:
            bed.core.read_namespaced_secret("owned", namespace)
        except client.ApiException as exc:
            return exc.status == 404
        return False

    wait_for(gone, timeout=30, what="garbage collector to delete the owned Secret")


def test_token_request_returns_a_service_account_token(bed: Bed, namespace: str) -> None:
    bed.core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="graph-reader")))
    req = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
        audiences=["api://AzureADTokenExchange"], expiration_seconds=600))
    resp = bed.core.create_namespaced_service_account_token("graph-reader", namespace, req)
    payload = resp.status.token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["iss"] == bed.control_plane.sa_issuer == bed.control_plane.server
    assert claims["aud"] == ["api://AzureADTokenExchange"]
    assert claims["sub"] == f"system:serviceaccount:{namespace}:graph-reader"


def test_namespace_deletion_completes(bed: Bed) -> None:
    name = f"t-{uuid.uuid4().hex[:10]}"
    bed.create_namespace(name)
    bed.core.create_namespaced_config_map(name, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="x")))
    bed.delete_namespace(name)

    def gone() -> bool:
        try:
            bed.core.read_namespace(name)
        except client.ApiException as exc:
            return exc.status == 404
        return False

    wait_for(gone, timeout=60, what="namespace controller to finish deleting the namespace")


def _anonymous_get(bed: Bed, url: str) -> tuple[int, Any]:
    """GET with no credentials at all, trusting only the bed's CA, as Entra fetches an issuer's metadata."""
    ctx = ssl.create_default_context(cafile=str(bed.control_plane.dir / "pki" / "ca.crt"))
    try:
        with urllib.request.urlopen(url, timeout=10, context=ctx) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


def test_issuer_discovery_is_served_anonymously_and_nothing_else(bed: Bed) -> None:
    issuer = bed.control_plane.sa_issuer
    status, config = _anonymous_get(bed, f"{issuer}/.well-known/openid-configuration")
    assert status == 200
    assert config["issuer"] == issuer
    assert config["jwks_uri"] == f"{issuer}/openid/v1/jwks"
    status, jwks = _anonymous_get(bed, config["jwks_uri"])
    assert status == 200
    assert [k["kty"] for k in jwks["keys"]] == ["RSA"] and jwks["keys"][0]["kid"]
    for path in ("/api/v1/namespaces", "/api/v1/namespaces/default/secrets", "/apis"):
        assert _anonymous_get(bed, f"{bed.control_plane.server}{path}")[0] in (401, 403), path


def _bearer_post(bed: Bed, path: str, token: str, body: dict[str, Any]) -> tuple[int, Any]:
    ctx = ssl.create_default_context(cafile=str(bed.control_plane.dir / "pki" / "ca.crt"))
    req = urllib.request.Request(f"{bed.control_plane.server}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


def _token(bed: Bed, namespace: str, name: str, audiences: list[str]) -> str:
    req = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=audiences,
                                                                             expiration_seconds=600))
    token: str = bed.core.create_namespaced_service_account_token(name, namespace, req).status.token
    return token


def test_service_account_tokens_still_authenticate_in_cluster(bed: Bed, namespace: str) -> None:
    bed.core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="in-cluster")))
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    path = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
    status, body = _bearer_post(bed, path, _token(bed, namespace, "in-cluster", []), review)  # the API's audience
    assert status == 201
    assert body["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:in-cluster"
    # a token for Entra is no key to the apiserver: its audience is not the API's
    entra = _token(bed, namespace, "in-cluster", ["api://AzureADTokenExchange"])
    assert _bearer_post(bed, path, entra, review)[0] == 401
