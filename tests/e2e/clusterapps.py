"""Helpers for the ClusterGraphApp tests on the bed: an app registered with the issuer (or a managed identity of the
bed's IMDS) and its ClusterGraphApp, its client secret in the operator's namespace; tenants' GraphAppCredentials
naming it; more namespaces beside the test's own."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from kubernetes import client

from graphcred.api.keys import APP_PLURAL, GROUP, PLURAL, VERSION
from graphcred_testbed.bed import Bed, wait_for
from graphcred_testbed.issuer import App

from ..helpers import GRAPH, Env

if TYPE_CHECKING:
    from ..conftest import LeakCorpus

APPS_NS = "graphcred-system"  # the session operator's cluster resource namespace (its default outside a pod)
SCOPE = f"{GRAPH}/.default"


def material_name(app: str) -> str:
    """The name of the app's client-secret Secret in the operator's namespace: other than the app's own name, so
    that a test can tell whether a tenant ever gets to see it."""
    return f"{app}-material"


def ensure_namespace(bed: Bed, name: str) -> None:
    with contextlib.suppress(client.ApiException):
        bed.create_namespace(name)


def app_manifest(name: str, spec: dict[str, Any], selector: dict[str, Any],
                 scopes: tuple[str, ...] = (SCOPE,)) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterGraphApp", "metadata": {"name": name},
            "spec": {**spec, "policy": {"namespaceSelector": selector, "allowedScopes": list(scopes)}}}


def secret_app_spec(bed: Bed, app: App, secret: str) -> dict[str, Any]:
    return {"tenantId": app.tenant_id, "clientId": app.client_id, "authorityHost": bed.authority_host,
            "credential": {"clientSecret": {"name": secret}}}


def create_app(bed: Bed, body: dict[str, Any]) -> None:
    bed.custom.create_cluster_custom_object(GROUP, VERSION, APP_PLURAL, body)


def delete_app(bed: Bed, name: str) -> None:
    with contextlib.suppress(client.ApiException):
        bed.custom.delete_cluster_custom_object(GROUP, VERSION, APP_PLURAL, name)


@contextlib.contextmanager
def cluster_app(env: Env, *, selector: dict[str, Any], scopes: tuple[str, ...] = (SCOPE,),
                roles: list[str] | None = None, lifetime: int = 3599,
                apps_namespace: str = APPS_NS) -> Iterator[tuple[str, App]]:
    """An app registered with the issuer, its client secret in the operator's namespace (Secret
    `material_name(name)`), and a ClusterGraphApp for it (a name of this test's own); deleted afterwards."""
    name = f"platform-{uuid.uuid4().hex[:8]}"
    secret = material_name(name)
    app = env.register_app(secret=secret, roles=roles, lifetime=lifetime)
    bed = env.bed
    ensure_namespace(bed, apps_namespace)
    bed.core.create_namespaced_secret(apps_namespace, client.V1Secret(metadata=client.V1ObjectMeta(name=secret),
                                                                      string_data={"clientSecret": env.sv(secret)}))
    create_app(bed, app_manifest(name, secret_app_spec(bed, app, secret), selector, scopes))
    try:
        yield name, app
    finally:
        delete_app(bed, name)
        with contextlib.suppress(client.ApiException):
            bed.core.delete_namespaced_secret(secret, apps_namespace)


def get_app(bed: Bed, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = bed.custom.get_cluster_custom_object(GROUP, VERSION, APP_PLURAL, name)
    return obj


def set_policy(bed: Bed, name: str, *, selector: dict[str, Any] | None = None,
               scopes: tuple[str, ...] | None = None) -> None:
    policy: dict[str, Any] = {}
    if selector is not None:
        policy["namespaceSelector"] = selector
    if scopes is not None:
        policy["allowedScopes"] = list(scopes)
    bed.custom.patch_cluster_custom_object(GROUP, VERSION, APP_PLURAL, name, {"spec": {"policy": policy}})


def label(bed: Bed, namespace: str, labels: dict[str, str | None]) -> None:
    bed.core.patch_namespace(namespace, {"metadata": {"labels": labels}})


def use(env: Env, name: str, app: str, namespace: str | None = None, scopes: tuple[str, ...] = (SCOPE,),
        labels: dict[str, str] | None = None, **spec: Any) -> None:
    """A GraphAppCredential `name` naming the app, in the test's namespace or `namespace`."""
    env.bed.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace or env.namespace, PLURAL,
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GraphAppCredential",
         "metadata": {"name": name, "labels": labels or {}},
         "spec": {"appRef": {"name": app}, "scopes": list(scopes), **spec}})


def beside(env: Env, namespace: str) -> Env:
    """An Env for another namespace of the same test (same operator, same secret values)."""
    return Env(env.bed, namespace, env.operator, env._values)


@contextlib.contextmanager
def more_namespaces(env: Env, leak_corpus: LeakCorpus, count: int,
                    labels: dict[str, str] | None = None) -> Iterator[list[Env]]:
    """`count` more namespaces (with `labels`), as Envs; what they held goes to the leak scan, then they are
    deleted."""
    envs: list[Env] = []
    try:
        for _ in range(count):
            name = f"t-{uuid.uuid4().hex[:10]}"
            env.bed.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name,
                                                                                          labels=labels)))
            envs.append(beside(env, name))
        yield envs
    finally:
        for other in envs:
            with contextlib.suppress(client.ApiException):
                leak_corpus.collect(other)
            env.bed.delete_namespace(other.namespace)


def wait_gone(env: Env, secret: str, timeout: float = 15) -> float:
    """Wait until the Secret is deleted; the seconds it took."""
    started = time.monotonic()
    wait_for(lambda: env.secret(secret) is None, timeout=timeout,
             what=f"the token Secret {env.namespace}/{secret} deleted")
    return time.monotonic() - started


@contextlib.contextmanager
def managed_app(env: Env, *, selector: dict[str, Any], client_id: str,
                scopes: tuple[str, ...] = (SCOPE,)) -> Iterator[str]:
    """A ClusterGraphApp for the user-assigned managed identity `client_id` of the bed's IMDS (assigned or not:
    the test decides), with the tenant and client ids the identity's tokens carry; no authorityHost (IMDS is the
    only endpoint asked). Deleted afterwards, and the identity unassigned."""
    name = f"managed-{uuid.uuid4().hex[:8]}"
    bed = env.bed
    spec = {"tenantId": bed.imds.tenant_id, "clientId": client_id,
            "credential": {"managedIdentity": {"clientId": client_id}}}
    create_app(bed, app_manifest(name, spec, selector, scopes))
    try:
        yield name
    finally:
        delete_app(bed, name)
        bed.imds.unassign(client_id)
