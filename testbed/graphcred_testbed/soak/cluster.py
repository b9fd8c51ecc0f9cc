"""Cluster apps in the soak: ClusterGraphApps (their client secret in the operator's cluster resource namespace),
tenant namespaces labelled in or out of their policies, GraphAppCredentials naming them in spec.appRef, and the
plan's changes to all of that (namespace relabels, policy edits, app deletion and re-creation, a rotation of the
app's client secret).

The checker judges permission from what it observes in the cluster (namespaces' labels, the app's policy), with a
label-selector evaluation of its own (`selects`), not from the operator's status or code.

Everything here is drawn from a random.Random of its own (seeded from the soak's seed), so that adding cluster apps
leaves the rest of the schedule as it was for the same seed.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..issuer import Issuer
from .config import SoakConfig
from .plan import PlanItem
from .world import GRAPH, _App, _Cred, _Key

VAULT = "https://vault.azure.net"
CLUSTER_RESOURCES = (GRAPH, VAULT)  # what appRef credentials ask for; a policy allows Graph always, Vault by turns
LABEL = "soak.graphcred.io"  # label prefix on tenant namespaces: app-<i> = in | out, zone = z0 | z1
RUN_LABEL = f"{LABEL}/run"  # the soak's run id, to list its tenant namespaces
ZONES = ("z0", "z1")
SELECTORS = ("label", "zone", "notin")  # the policy's namespaceSelector, cycled by policy_selector
CLUSTER_FAULTS = ("ns_relabel", "policy_scopes", "policy_selector", "app_recreate", "app_rotation")


def app_label(index: int) -> str:
    return f"{LABEL}/app-{index}"


@dataclass
class _ClusterApp:
    """A ClusterGraphApp of the soak: its Entra registration, its client secret (a key in the cluster resource
    namespace) and its policy as the harness last set it."""

    index: int
    name: str
    app: _App
    key: _Key
    vault: bool  # policy.allowedScopes includes Vault (Graph is always allowed)
    selector: str  # one of SELECTORS
    zone: str  # the zone the "zone" selector picks
    exists: bool = True

    def allowed_scopes(self) -> list[str]:
        return [f"{GRAPH}/.default", *([f"{VAULT}/.default"] if self.vault else [])]

    def namespace_selector(self) -> dict[str, Any]:
        own = app_label(self.index)
        if self.selector == "label":
            return {"matchLabels": {own: "in"}}
        if self.selector == "zone":  # a different set of namespaces: those of one zone
            return {"matchExpressions": [{"key": f"{LABEL}/zone", "operator": "In", "values": [self.zone]},
                                         {"key": own, "operator": "Exists"}]}
        # the same set as "label", spelled with NotIn and DoesNotExist
        return {"matchExpressions": [{"key": own, "operator": "NotIn", "values": ["out"]},
                                     {"key": own, "operator": "Exists"},
                                     {"key": f"{LABEL}/frozen", "operator": "DoesNotExist"}]}

    def manifest(self, authority_host: str) -> dict[str, Any]:
        return {"apiVersion": "graphcred.io/v1alpha1", "kind": "ClusterGraphApp", "metadata": {"name": self.name},
                "spec": {"tenantId": self.app.tenant, "clientId": self.app.client_id, "authorityHost": authority_host,
                         "credential": {"clientSecret": {"name": self.key.name}},
                         "policy": {"namespaceSelector": self.namespace_selector(),
                                    "allowedScopes": self.allowed_scopes()}}}


@dataclass
class _ClusterWorld:
    """The cluster apps, the tenant namespaces' labels and the appRef credentials, drawn from the seed."""

    apps: list[_ClusterApp] = field(default_factory=list)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)  # tenant namespace -> its labels
    creds: list[_Cred] = field(default_factory=list)


def cluster_rng(cfg: SoakConfig) -> random.Random:
    return random.Random(f"cluster-apps-{cfg.seed}")  # a reproducible schedule, not cryptography


def build_cluster(cfg: SoakConfig, rng: random.Random, issuer: Issuer, tenant_namespaces: list[str],
                  resource_namespace: str, prefix: str) -> _ClusterWorld:
    world = _ClusterWorld()
    if cfg.cluster_apps <= 0 or not tenant_namespaces:
        return world

    def new_id() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    tenant = new_id()
    for i in range(cfg.cluster_apps):
        reg = issuer.register_app(tenant, new_id(), roles={GRAPH: ["Mail.Read"]}, lifetime=rng.choice(cfg.lifetimes))
        app = _App(1000 + i, reg, "secret", reg.lifetime)
        key = _Key(resource_namespace, f"{prefix}-app-{i}-secret", "secret",
                   value=f"soak-app-{i}~{uuid.uuid4().hex[:16]}")
        key.register(app)
        world.apps.append(_ClusterApp(i, f"{prefix}-app-{i}", app, key, vault=rng.random() < 0.5,
                                      selector="label", zone=rng.choice(ZONES)))
    for j, ns in enumerate(tenant_namespaces):
        labels = {RUN_LABEL: prefix, f"{LABEL}/zone": ZONES[j % len(ZONES)]}
        for a in world.apps:
            labels[app_label(a.index)] = "in" if rng.random() < 0.75 else "out"
        world.labels[ns] = labels
    for k in range(cfg.cluster_credentials):
        a = world.apps[k % len(world.apps)]
        ns = tenant_namespaces[(k // len(world.apps)) % len(tenant_namespaces)]
        resource = GRAPH if rng.random() < 0.7 else VAULT
        cred = _Cred(ns, f"a-{k:03d}", a.key, a.app, resource=resource, cluster=a.index)
        cred.point_at(a.app)
        world.creds.append(cred)
    return world


def plan_cluster(cfg: SoakConfig, rng: random.Random, world: _ClusterWorld,
                 tenant_namespaces: list[str]) -> list[PlanItem]:
    """The cluster changes: one at a time, in slots of their own (a few seconds apart: the checker's 1 s polls see
    each state), all within the first 85 % of the fault phase (the quiet phase starts from a settled policy); an
    app's policy is edited only while it exists."""
    span = cfg.fault_seconds
    if not world.apps or span < 30:
        return []

    def count(every: float, least: int) -> int:
        return max(least, round(span / every))

    kinds = (["ns_relabel"] * count(20, 6) + ["policy_scopes"] * count(90, 1) + ["policy_selector"] * count(90, 1)
             + ["app_recreate"] * count(200, 1) + ["app_rotation"] * count(150, 1))
    rng.shuffle(kinds)
    lo, hi = 0.03 * span, 0.85 * span
    width = (hi - lo) / len(kinds)
    items: list[PlanItem] = []
    gone: dict[int, tuple[float, float]] = {}  # app -> while it is deleted (and a slot after)
    for i, kind in enumerate(kinds):
        at = lo + (i + rng.uniform(0.2, 0.8)) * width
        free = [a.index for a in world.apps
                if not (gone.get(a.index, (0.0, -1.0))[0] <= at <= gone.get(a.index, (0.0, -1.0))[1])]
        if not free:
            continue
        app = rng.choice(free)
        args: dict[str, Any] = {"app": app}
        duration = 0.0
        if kind == "ns_relabel":
            args["ns"] = rng.randrange(len(tenant_namespaces))
        elif kind == "app_recreate":
            duration = round(min(rng.uniform(5, 15), hi - at), 1)
            gone[app] = (at, at + duration + width)
        elif kind == "app_rotation":
            duration = round(min(20.0, span - 2 - at), 1)  # the old value is removed from the app this much later
        items.append(PlanItem(round(at, 1), kind, duration, tuple(sorted(args.items()))))
    return items


# --- the checker's own reading of a policy ---------------------------------------------------------------------

def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics: every matchLabels pair and every matchExpressions requirement holds."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for req in selector.get("matchExpressions") or []:
        key, op, values = req.get("key"), req.get("operator"), list(req.get("values") or [])
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


def refusal(app: Mapping[str, Any] | None, labels: Mapping[str, str] | None, scopes: list[str]) -> str | None:
    """Why a credential may not use the app, by the cluster's state; None if permitted. "AppNotFound" or
    "NotPermitted: ..." (the reason the credential should report first)."""
    if app is None:
        return "AppNotFound"
    policy = (app.get("spec") or {}).get("policy") or {}
    if labels is None or not selects(policy.get("namespaceSelector") or {}, labels):
        return "NotPermitted: namespace not selected"
    allowed = set(policy.get("allowedScopes") or [])
    if any(s not in allowed for s in scopes):
        return "NotPermitted: scope not allowed"
    return None
