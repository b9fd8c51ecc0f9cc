"""The plan's faults, acted out on the bed (issuer faults, apiserver restarts, leader kills, key rotations,
sharing partners' churn, spec changes), and the windows in which they broke something a credential needs."""

from __future__ import annotations

import functools
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubernetes import client

from graphcred.api.keys import APP_PLURAL, GROUP, PLURAL, VERSION

from ..issuer import Fault
from ..operator_process import OperatorProcess
from ..pki import self_signed
from .apiserver import apiserver_requests
from .cluster import SELECTORS, app_label
from .plan import PlanItem
from .rotating import inject
from .world import _App, _Cred, _Key

if TYPE_CHECKING:
    from .run import Soak

# Faults whose answer may rightly slow a whole tenant (the operator opens a per-tenant circuit breaker on throttling).
TENANT_WIDE = {"throttle_json", "throttle_html"}


@dataclass
class _Window:
    """A span in which something a credential needs was broken (wall clock)."""

    kind: str
    scope: str  # "app" | "tenant" | "all" | "key" | "apiserver" | "leader"
    target: str
    start: float
    end: float | None = None

    def overlaps(self, start: float, end: float) -> bool:
        return self.start <= end and (self.end is None or self.end >= start)


class _Faults:
    """The actions of the plan's items, by kind (`_do_<kind>`), on the soak's bed and objects."""

    def __init__(self, soak: Soak) -> None:
        self.soak = soak

    def action(self, p: PlanItem) -> Callable[[], None]:
        def act() -> None:
            getattr(self, f"_do_{p.kind}")(p)
            with self.soak.lock:
                self.soak.result.faults[p.kind] += 1
        return act

    def _fail(self, client_id: str, fault: Fault) -> None:
        with self.soak.lock:
            self.soak.active_faults[client_id] = fault
        self.soak.bed.issuer.fail(client_id, fault)

    def _heal(self, client_id: str, window: _Window) -> None:
        with self.soak.lock:
            self.soak.active_faults.pop(client_id, None)
        self.soak.bed.issuer.heal(client_id)
        window.end = time.time()

    def _app_fault(self, p: PlanItem, fault: Fault) -> None:
        app = self.soak.apps[p.arg("app")]
        self._fail(app.client_id, fault)
        window = self.soak.open_window(p.kind, "tenant" if p.kind in TENANT_WIDE else "app",
                                  app.tenant if p.kind in TENANT_WIDE else app.client_id)
        self.soak.later(p.duration, lambda: self._heal(app.client_id, window), f"heal {p.kind}")

    def _do_throttle_json(self, p: PlanItem) -> None:
        self._app_fault(p, Fault(status=429, retry_after=p.arg("retry_after")))

    def _do_throttle_html(self, p: PlanItem) -> None:
        self._app_fault(p, Fault(html=True, status=429, retry_after=p.arg("retry_after")))

    def _do_server_error(self, p: PlanItem) -> None:
        self._app_fault(p, Fault(status=p.arg("status")))

    def _do_slow(self, p: PlanItem) -> None:
        self._app_fault(p, Fault(delay=p.arg("delay")))

    def _do_drop(self, p: PlanItem) -> None:
        self._app_fault(p, Fault(drop=True))

    def _do_garbage(self, p: PlanItem) -> None:
        self._app_fault(p, Fault(garbage=True))

    def _do_outage(self, p: PlanItem) -> None:
        self.soak.bed.issuer.fail_all(Fault(drop=True) if p.arg("drop") else Fault(status=503))
        window = self.soak.open_window("outage", "all", "issuer")

        def heal() -> None:
            # heal() clears every fault: put back the per-app ones still due (the plan keeps discovery apart)
            with self.soak.lock:
                self.soak.bed.issuer.heal()
                for client_id, fault in self.soak.active_faults.items():
                    self.soak.bed.issuer.fail(client_id, fault)
                if self.soak.hostile is not None:
                    self.soak.hostile.throttle()
            window.end = time.time()
        self.soak.later(p.duration, heal, "heal outage")

    def _do_discovery_html(self, p: PlanItem) -> None:
        tenant = p.arg("tenant")
        before = self.soak.bed.issuer.discovery_requests_for(tenant)
        self.soak.bed.issuer.fail_discovery(tenant, html=True, times=1)
        window = self.soak.open_window("discovery_html", "tenant", tenant)
        for cred_index, app_index in zip(p.arg("creds"), p.arg("apps"), strict=True):
            cred, app = self.soak.creds[cred_index], next(a for a in self.soak.spare if a.index == app_index)
            self._move(cred, app)

        def consumed() -> None:
            # the window lasts until the html answer was served, and a retry's worth after it
            if (self.soak.bed.issuer.discovery_requests_for(tenant) > before
                    or self.soak.now() > self.soak.cfg.fault_seconds - 5):
                window.end = time.time() + 2
            else:
                self.soak.later(0.5, consumed, "discovery consumed?")
        self.soak.later(0.5, consumed, "discovery consumed?")

    def _do_apiserver_restart(self, p: PlanItem) -> None:
        with self.soak.lock:
            self.soak.api_counts += apiserver_requests(self.soak.bed) - (self.soak.api_base or Counter())
            self.soak.api_base = Counter()  # a new apiserver counts from zero
        window = self.soak.open_window("apiserver_restart", "apiserver", "kube-apiserver")
        self.soak.restarts.append(time.time())
        self.soak.bed.control_plane.restart_apiserver(downtime=p.arg("downtime"))
        # the leader may have lost its Lease meanwhile: the window lasts until one could have taken it again
        window.end = time.time() + self.soak.cfg.lease_duration + 15

    def _do_leader_kill(self, p: PlanItem) -> None:
        assert self.soak.replicas is not None
        holder = self.soak.checker.lease_holder()
        op = self.soak.replicas.holder(holder)
        if op is None:
            raise RuntimeError(f"no live leader found (Lease holder {holder})")
        window = self.soak.open_window("leader_kill", "leader", holder or "")
        window.end = time.time() + self.soak.cfg.lease_duration + 15
        self.soak.restarts.append(time.time())
        with self.soak.replicas.lock:
            op.kill()
            self.soak.replicas.held.add(op.process.name)
            self.soak.checker.killed(holder or "", time.time())
        self.soak.later(2.0, lambda: self._restart_killed(op), "restart killed leader")

    def _restart_killed(self, op: OperatorProcess) -> None:
        assert self.soak.replicas is not None
        with self.soak.replicas.lock:
            self.soak.replicas.held.discard(op.process.name)
            op.start()
            self.soak.replicas.restarts["leader SIGKILL"] += 1

    def _patch_key(self, key: _Key) -> None:
        self._kube(self.soak.core.patch_namespaced_secret, key.name, key.namespace, {"stringData": key.string_data()})
        self.soak.own_secret_writes += 1

    def _do_rotation(self, p: PlanItem) -> None:
        """good -> bad (a value the app does not know) -> good (the old value or a new registered one)."""
        key = next(k for k in self.soak.keys.values() if k.name == p.arg("key"))
        good_value, good_pair = key.value, key.pair
        if key.kind == "secret":
            key.value = f"wrong~{uuid.uuid4().hex[:16]}"
        else:
            key.pair = self_signed(f"unregistered-{key.name}")
        self._patch_key(key)
        window = self.soak.open_window("rotation_bad", "key", key.ref)

        def restore() -> None:
            if p.arg("new_value"):
                if key.kind == "secret":
                    key.value = f"soak-{key.name}~{uuid.uuid4().hex[:16]}"
                else:
                    key.pair = self_signed(f"soak-{key.name}-rotated")
                for app in list(key.apps):
                    key.register(app)  # Entra first, then the cluster
            else:
                key.value, key.pair = good_value, good_pair
            self._patch_key(key)
            window.end = time.time()
        self.soak.later(p.duration, restore, "rotation back to good")

    def _do_partner_churn(self, p: PlanItem) -> None:
        members = [self.soak.creds[i] for i in self.soak.groups[p.arg("group")]]
        victim = self.soak.creds[p.arg("victim")]
        app, key = members[0].app, members[0].key
        self._fail(app.client_id, Fault(delay=p.arg("delay")))
        window = self.soak.open_window("partner_churn", "app", app.client_id)
        if p.arg("trigger") == "spec":
            self._toggle_roles(victim)
            for m in members:
                if m is not victim:
                    self.soak.later(0.5, functools.partial(self._toggle_roles, m), "partner spec change")
        else:  # a new good value: every partner acquires at once, one request in flight for all of them
            if key.kind == "secret":
                key.value = f"soak-{key.name}~{uuid.uuid4().hex[:16]}"
            else:
                key.pair = self_signed(f"soak-{key.name}-churn")
            for a in list(key.apps):
                key.register(a)
            self._patch_key(key)

        def delete() -> None:
            self._kube(self.soak.custom.delete_namespaced_custom_object, GROUP, VERSION, victim.namespace, PLURAL,
                       victim.name, done=404)
            self.soak.assign(victim, None)

        def recreate() -> None:
            self._kube(self.soak.custom.create_namespaced_custom_object, GROUP, VERSION, victim.namespace, PLURAL,
                       self.soak.manifest(victim), done=409)
            self.soak.assign(victim, victim.app)

        self.soak.later(1.5, delete, "delete partner")
        self.soak.later(3.0, recreate, "recreate partner")
        self.soak.later(p.duration, lambda: self._heal(app.client_id, window), "heal partner churn")

    def _kube(self, call: Callable[..., Any], *args: Any, done: int | None = None) -> None:
        """An API call of the plan, tried again a few times (the apiserver may be slow or just restarted);
        `done`: a status that means an earlier try went through (404 on delete, 409 on create)."""
        for attempt in range(5):
            try:
                call(*args, _request_timeout=15)
                return
            except client.ApiException as exc:
                if exc.status == done and attempt > 0:
                    return
                if attempt == 4 or (exc.status is not None and exc.status < 500 and exc.status != 429):
                    raise
            except Exception:  # connection refused or timed out: try again
                if attempt == 4:
                    raise
            time.sleep(2)

    def _patch_spec(self, cred: _Cred, app: _App, spec: dict[str, Any]) -> None:
        self._kube(self.soak.custom.patch_namespaced_custom_object, GROUP, VERSION, cred.namespace, PLURAL, cred.name,
                   {"spec": spec})
        self.soak.assign(cred, app)

    def _toggle_roles(self, cred: _Cred) -> None:
        cred.require_roles = not cred.require_roles
        self._patch_spec(cred, cred.app, {"requiredRoles": ["Mail.Read"] if cred.require_roles else None})

    def _move(self, cred: _Cred, app: _App) -> None:
        cred.key.register(app)
        self._patch_spec(cred, app, {"tenantId": app.tenant, "clientId": app.client_id})

    def _do_spec_client(self, p: PlanItem) -> None:
        self._move(self.soak.creds[p.arg("cred")], self.soak.apps[p.arg("app")])

    def _do_spec_scopes(self, p: PlanItem) -> None:
        cred = self.soak.creds[p.arg("cred")]
        cred.resource = p.arg("resource")
        self._patch_spec(cred, cred.app, {"scopes": [f"{cred.resource}/.default"]})

    def _do_spec_rbe(self, p: PlanItem) -> None:
        cred = self.soak.creds[p.arg("cred")]
        cred.rbe = f"{cred.app.lifetime - 5}s"
        self._patch_spec(cred, cred.app, {"refreshBeforeExpiry": cred.rbe})

    # --- rotating certificates (rotating.py): Graph's key calls ------------------------------------------------
    def _do_graph_fail(self, p: PlanItem) -> None:
        inject(self.soak, p)

    def _do_graph_lost(self, p: PlanItem) -> None:
        inject(self.soak, p)

    # --- cluster apps (cluster.py) -------------------------------------------------------------------------
    def _patch_app(self, index: int) -> None:
        app = self.soak.cluster.apps[index]
        selector = app.namespace_selector()
        # a merge patch: the form not used now is set to null (removed); lists are replaced whole
        policy = {"namespaceSelector": {"matchLabels": selector.get("matchLabels"),
                                        "matchExpressions": selector.get("matchExpressions")},
                  "allowedScopes": app.allowed_scopes()}
        self._kube(self.soak.custom.patch_cluster_custom_object, GROUP, VERSION, APP_PLURAL, app.name,
                   {"spec": {"policy": policy}})
        self.soak.cluster_changed(app.app)

    def _do_ns_relabel(self, p: PlanItem) -> None:
        """A tenant namespace labelled out of (or back into) a cluster app's policy."""
        app = self.soak.cluster.apps[p.arg("app")]
        ns = self.soak.tenant_namespaces[p.arg("ns")]
        labels = self.soak.cluster.labels[ns]
        key = app_label(app.index)
        labels[key] = "out" if labels.get(key) == "in" else "in"
        self._kube(self.soak.core.patch_namespace, ns, {"metadata": {"labels": {key: labels[key]}}})
        for a in self.soak.cluster.apps:  # a zone selector may concern any app: every app's users may be touched
            self.soak.cluster_changed(a.app)

    def _do_policy_scopes(self, p: PlanItem) -> None:
        """Vault allowed or no longer allowed (the app's Vault users gain or lose permission)."""
        app = self.soak.cluster.apps[p.arg("app")]
        if not app.exists:
            return
        app.vault = not app.vault
        self._patch_app(app.index)

    def _do_policy_selector(self, p: PlanItem) -> None:
        """The next namespaceSelector: by the app's label, by zone, by the app's label with NotIn/DoesNotExist."""
        app = self.soak.cluster.apps[p.arg("app")]
        if not app.exists:
            return
        app.selector = SELECTORS[(SELECTORS.index(app.selector) + 1) % len(SELECTORS)]
        self._patch_app(app.index)

    def _do_app_recreate(self, p: PlanItem) -> None:
        """The ClusterGraphApp deleted (every user loses its token) and created again, same name and policy."""
        app = self.soak.cluster.apps[p.arg("app")]
        self._kube(self.soak.custom.delete_cluster_custom_object, GROUP, VERSION, APP_PLURAL, app.name, done=404)
        app.exists = False
        self.soak.cluster_changed(app.app)

        def recreate() -> None:
            self._kube(self.soak.custom.create_cluster_custom_object, GROUP, VERSION, APP_PLURAL,
                       app.manifest(self.soak.bed.authority_host), done=409)
            app.exists = True
            self.soak.cluster_changed(app.app)
        self.soak.later(p.duration, recreate, "recreate cluster app")

    def _do_app_rotation(self, p: PlanItem) -> None:
        """The app's client secret rotated in the cluster resource namespace: the new value registered on the app
        first, the Secret patched, the old value removed from the app `duration` seconds later (as an admin
        finishing a rotation would: a user still on the old value fails from then on)."""
        app = self.soak.cluster.apps[p.arg("app")]
        key, old = app.key, app.key.value
        key.value = f"soak-app-{app.index}~{uuid.uuid4().hex[:16]}"
        key.register(app.app)
        self._patch_key(key)

        def retire() -> None:
            if old is not None and old in app.app.app.secrets:
                app.app.app.secrets.remove(old)
        self.soak.later(p.duration, retire, "retire the old app secret")
