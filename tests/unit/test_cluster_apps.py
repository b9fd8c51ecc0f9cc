"""ClusterGraphApp: a credential with an appRef gets a token with the app's identity only while the app's policy
permits its namespace and scopes; a withdrawn permission deletes its token Secret; identical requests from many
namespaces share one token request; a managed identity answering the same token twice writes nothing. On the
in-memory rig (the real Controller and Reconciler); the bed's own tests are in tests/e2e/test_cluster_apps.py."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import ValidationError

from graphcred.acquire.credentials import ManagedIdentity, Material
from graphcred.acquire.tokens import Token
from graphcred.api.model import (
    AppIdentity,
    ClusterGraphAppSpec,
    GraphAppCredentialSpec,
    NamespaceSelector,
)

from .fakes import FakeTokens, gac
from .harness import Rig, run, until

APPS_NS = "graphcred-system"  # the rig's cluster resource namespace
GRAPH = "https://graph.microsoft.com/.default"
TENANT = str(uuid.uuid4())
CLIENT = str(uuid.uuid4())


def app_spec(*, selector: dict[str, Any] | None = None, scopes: Sequence[str] = (GRAPH,),
             credential: dict[str, Any] | None = None, client: str = CLIENT) -> dict[str, Any]:
    return {"tenantId": TENANT, "clientId": client,
            "credential": credential or {"clientSecret": {"name": "platform-secret"}},
            "policy": {"namespaceSelector": selector if selector is not None else {"matchLabels": {"graph": "yes"}},
                       "allowedScopes": list(scopes)}}


def uses(app: str = "platform", scopes: Sequence[str] = (GRAPH,)) -> dict[str, Any]:
    return {"appRef": {"name": app}, "scopes": list(scopes)}


def platform(rig: Rig, spec: dict[str, Any] | None = None, name: str = "platform") -> dict[str, Any]:
    """The app created in the cluster and seen by the controller, its client secret in the operator's namespace."""
    rig.kube.put_client_secret(APPS_NS, "platform-secret", "platform-s3cret")
    body = rig.kube.put_app(name, spec or app_spec())
    rig.controller.app_event(body)
    return body


def tenant(rig: Rig, namespace: str, labels: dict[str, str], spec: dict[str, Any] | None = None,
           name: str = "mail") -> dict[str, Any]:
    """A namespace with `labels` and a credential in it naming the app, both seen by the controller."""
    rig.controller.namespace_event(rig.kube.put_namespace(namespace, labels))
    body = gac(name, spec or uses(), namespace=namespace)
    rig.kube.objects.add((namespace, name))
    rig.controller.observe(body)
    return body


def ready(rig: Rig, namespace: str, name: str = "mail") -> str | None:
    cond = rig.kube.ready(namespace, name)
    return cond["reason"] if cond else None


# --- the model ------------------------------------------------------------------------------------------------------
def test_a_credential_names_its_app_or_its_own_identity_never_both() -> None:
    assert GraphAppCredentialSpec.model_validate(uses()).identity() is None
    for mixed in ({"tenantId": TENANT}, {"credential": {"clientSecret": {"name": "x"}}}, {"cloud": "AzureChina"},
                  {"authorityHost": "https://login.example.test"}):
        with pytest.raises(ValidationError, match="set either appRef"):
            GraphAppCredentialSpec.model_validate({**uses(), **mixed})
    # the default older CRDs stored with every object: switching such an object to appRef needs no edit of it
    assert GraphAppCredentialSpec.model_validate({**uses(), "cloud": "AzurePublic"}).app_ref is not None
    with pytest.raises(ValidationError, match="set either appRef"):
        GraphAppCredentialSpec.model_validate({"tenantId": TENANT, "clientId": CLIENT})


def test_managed_identity_is_only_a_cluster_apps_credential() -> None:
    with pytest.raises(ValidationError):
        GraphAppCredentialSpec.model_validate({"tenantId": TENANT, "clientId": CLIENT,
                                               "credential": {"managedIdentity": {}}})
    app = ClusterGraphAppSpec.model_validate(app_spec(credential={"managedIdentity": {"clientId": CLIENT.upper()}}))
    assert app.credential.managed_identity is not None
    assert app.credential.managed_identity.client_id == CLIENT


def test_a_cluster_app_without_a_policy_is_refused() -> None:
    spec = app_spec()
    del spec["policy"]
    with pytest.raises(ValidationError, match="policy"):
        ClusterGraphAppSpec.model_validate(spec)
    with pytest.raises(ValidationError, match="allowedScopes"):
        ClusterGraphAppSpec.model_validate({**app_spec(), "policy": {"namespaceSelector": {}, "allowedScopes": []}})


@pytest.mark.parametrize(("selector", "labels", "selected"), [
    ({}, {}, True),  # {} selects every namespace, as in Kubernetes
    ({"matchLabels": {"graph": "yes"}}, {"graph": "yes", "team": "a"}, True),
    ({"matchLabels": {"graph": "yes"}}, {"graph": "no"}, False),
    ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]}, {"team": "b"}, True),
    ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]}, {}, False),
    ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]}, {}, True),
    ({"matchExpressions": [{"key": "team", "operator": "Exists"}]}, {"team": ""}, True),
    ({"matchExpressions": [{"key": "sandbox", "operator": "DoesNotExist"}]}, {"sandbox": "1"}, False),
    ({"matchLabels": {"graph": "yes"}, "matchExpressions": [{"key": "sandbox", "operator": "DoesNotExist"}]},
     {"graph": "yes", "sandbox": "1"}, False),
])
def test_the_namespace_selector_selects_as_kubernetes_does(selector: dict[str, Any], labels: dict[str, str],
                                                           selected: bool) -> None:
    assert NamespaceSelector.model_validate(selector).selects(labels) is selected


def test_a_selector_requirement_with_the_wrong_values_is_refused() -> None:
    with pytest.raises(ValidationError, match="needs values"):
        NamespaceSelector.model_validate({"matchExpressions": [{"key": "a", "operator": "In"}]})
    with pytest.raises(ValidationError, match="takes no values"):
        NamespaceSelector.model_validate({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]})


def test_a_direct_credentials_digest_is_what_it_was_before_cluster_apps() -> None:
    """status.issuedFor is stored: a new digest for the same spec would re-acquire every token at the upgrade."""
    spec = GraphAppCredentialSpec.model_validate({"tenantId": TENANT, "clientId": CLIENT,
                                                  "credential": {"certificate": {"name": "c"}}})
    identity = spec.identity()
    assert identity is not None
    parts = ["https://login.microsoftonline.com", TENANT, CLIENT, "certificate", GRAPH, "mail-token"]
    assert spec.issued_for("mail", identity) == hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


# --- passes ---------------------------------------------------------------------------------------------------------
def test_a_permitted_namespace_gets_a_token_with_the_apps_identity_and_never_its_secret() -> None:
    rig = Rig()

    async def scenario() -> None:
        platform(rig)
        tenant(rig, "team-a", {"graph": "yes"})
        await until(lambda: ready(rig, "team-a") == "TokenIssued", what="team-a Ready")
        secret = rig.kube.secrets[("team-a", "mail-token")]
        assert set(secret["data"]) == {"access_token", "token_type", "expires_on", "authorization"}
        assert rig.kube.statuses[("team-a", "mail")]["appId"] == CLIENT
        # the app's secret was read where the admin put it, never in the tenant's namespace
        assert (APPS_NS, "platform-secret") in rig.kube.reads
        assert not [r for r in rig.kube.reads if r[0] == "team-a" and r[1] != "mail-token"]

    run(scenario)


def test_a_namespace_the_policy_does_not_select_gets_no_token_request() -> None:
    rig = Rig()

    async def scenario() -> None:
        platform(rig)
        tenant(rig, "team-b", {"graph": "no"})
        await until(lambda: ready(rig, "team-b") == "NotPermitted", what="NotPermitted")
        message = rig.kube.ready("team-b", "mail")["message"]  # type: ignore[index]
        assert "platform" in message and "namespace team-b" in message, message
        assert rig.tokens.requests == 0
        assert ("team-b", "mail-token") not in rig.kube.secrets

    run(scenario)


def test_a_scope_the_policy_does_not_allow_gets_no_token_request() -> None:
    rig = Rig()

    async def scenario() -> None:
        platform(rig)
        tenant(rig, "team-a", {"graph": "yes"}, uses(scopes=["https://vault.azure.net/.default"]))
        await until(lambda: ready(rig, "team-a") == "NotPermitted", what="NotPermitted")
        assert "https://vault.azure.net/.default" in rig.kube.ready("team-a", "mail")["message"]  # type: ignore[index]
        assert rig.tokens.requests == 0

    run(scenario)


def test_twenty_namespaces_on_one_app_make_one_token_request() -> None:
    rig = Rig()

    async def scenario() -> None:
        platform(rig)
        for i in range(20):
            tenant(rig, f"team-{i}", {"graph": "yes"})
        await until(lambda: all(ready(rig, f"team-{i}") == "TokenIssued" for i in range(20)), what="all Ready")
        assert rig.tokens.requests == 1
        tokens = {rig.kube.token_in(f"team-{i}", "mail-token") for i in range(20)}
        assert len(tokens) == 1

    run(scenario)


def test_a_relabelled_namespace_loses_its_token_secret_while_a_selected_one_keeps_it() -> None:
    rig = Rig()

    async def scenario() -> None:
        platform(rig)
        tenant(rig, "team-a", {"graph": "yes"})
        tenant(rig, "team-b", {"graph": "yes"})
        await until(lambda: ready(rig, "team-a") == ready(rig, "team-b") == "TokenIssued", what="both Ready")
        rig.controller.namespace_event(rig.kube.put_namespace("team-b", {"graph": "no"}))
        await until(lambda: ("team-b", "mail-token") not in rig.kube.secrets, what="team-b's Secret deleted")
        await until(lambda: ready(rig, "team-b") == "NotPermitted", what="NotPermitted")
        status = rig.kube.statuses[("team-b", "mail")]
        assert "the token Secret was deleted" in status["conditions"][0]["message"]
        assert "expiresOn" not in status and "secretName" not in status, status
        assert ("team-a", "mail-token") in rig.kube.secrets and ready(rig, "team-a") == "TokenIssued"
        # labelled back: a token again
        rig.controller.namespace_event(rig.kube.put_namespace("team-b", {"graph": "yes"}))
        await until(lambda: ready(rig, "team-b") == "TokenIssued", what="team-b Ready again")

    run(scenario)


def test_a_policy_edit_that_withdraws_a_scope_deletes_the_token_secret() -> None:
    rig = Rig()

    async def scenario() -> None:
        platform(rig)
        tenant(rig, "team-a", {"graph": "yes"})
        await until(lambda: ready(rig, "team-a") == "TokenIssued", what="Ready")
        rig.controller.app_event(rig.kube.put_app("platform", app_spec(scopes=["https://vault.azure.net/.default"])))
        await until(lambda: ("team-a", "mail-token") not in rig.kube.secrets, what="Secret deleted")
        assert ready(rig, "team-a") == "NotPermitted"

    run(scenario)


def test_an_app_created_late_is_picked_up_and_a_deleted_one_takes_its_tokens_along() -> None:
    rig = Rig()

    async def scenario() -> None:
        tenant(rig, "team-a", {"graph": "yes"})
        await until(lambda: ready(rig, "team-a") == "AppNotFound", what="AppNotFound")
        assert rig.tokens.requests == 0
        platform(rig)
        await until(lambda: ready(rig, "team-a") == "TokenIssued", what="Ready once the app exists")
        rig.kube.delete_app("platform")
        rig.controller.app_event({"metadata": {"name": "platform"}}, deleted=True)
        await until(lambda: ("team-a", "mail-token") not in rig.kube.secrets, what="Secret deleted")
        assert ready(rig, "team-a") == "AppNotFound"

    run(scenario)


def test_a_credential_seen_before_its_namespace_or_app_is_judged_on_what_it_reads() -> None:
    """Just after a start, the watches may not have reported the app or the namespace yet: the pass reads them,
    and neither refuses the credential nor deletes its token for want of an event."""
    rig = Rig()

    async def scenario() -> None:
        rig.kube.put_client_secret(APPS_NS, "platform-secret", "platform-s3cret")
        rig.kube.put_app("platform", app_spec())
        rig.kube.put_namespace("team-a", {"graph": "yes"})
        body = gac("mail", uses(), namespace="team-a")
        rig.kube.objects.add(("team-a", "mail"))
        rig.controller.observe(body)
        await until(lambda: ready(rig, "team-a") == "TokenIssued", what="Ready")
        assert rig.kube.app_reads == 1 and rig.kube.namespace_reads == 1

    run(scenario)


def test_the_apps_credential_secret_rotated_reaches_every_user() -> None:
    rig = Rig()

    async def scenario() -> None:
        platform(rig)
        for ns in ("team-a", "team-b"):
            tenant(rig, ns, {"graph": "yes"})
        await until(lambda: ready(rig, "team-a") == ready(rig, "team-b") == "TokenIssued", what="Ready")
        before = {ns: rig.kube.token_in(ns, "mail-token") for ns in ("team-a", "team-b")}
        rig.clock.advance(60)
        rig.kube.put_client_secret(APPS_NS, "platform-secret", "rotated")
        version = rig.kube.secrets[(APPS_NS, "platform-secret")]["metadata"]["resourceVersion"]
        rig.controller.secret_event(APPS_NS, "platform-secret", version, False)
        await until(lambda: all(rig.kube.token_in(ns, "mail-token") != before[ns] for ns in before),
                    what="new tokens")
        assert rig.tokens.requests == 2  # one for both, before and after

    run(scenario)


def test_the_apps_status_counts_its_users_and_says_whether_its_credential_works() -> None:
    rig = Rig()

    async def scenario() -> None:
        rig.controller.app_status.start()
        try:
            platform(rig)
            tenant(rig, "team-a", {"graph": "yes"})
            tenant(rig, "team-b", {"graph": "no"})
            await until(lambda: rig.kube.app_statuses.get("platform", {}).get("permitted") == 1, timeout=10,
                        what="app status")
            status = rig.kube.app_statuses["platform"]
            assert status["users"] == 2
            assert status["conditions"][0]["status"] == "True", status
            assert ("platform", "Normal", "TokenIssued") in rig.events
        finally:
            await rig.controller.app_status.stop()

    run(scenario)


class SameTokenTwice(FakeTokens):
    """A managed identity's endpoint: answers its cached token again until a test says otherwise."""

    cached: Token | None = None

    def acquire(self, spec: AppIdentity, scopes: Sequence[str], material: Material) -> Token:
        assert isinstance(material, ManagedIdentity)
        if self.cached is None:
            token = super().acquire(spec, scopes, material)
            self.cached = dataclasses.replace(token, refresh_on=token.issued_at + dt.timedelta(minutes=20))
        else:
            self.requests += 1
        return self.cached


def test_a_managed_identity_answering_the_same_token_writes_nothing_and_follows_its_refresh_hint() -> None:
    rig = Rig()
    rig.tokens = tokens = SameTokenTwice(rig.clock)
    rig.reconciler.acquirer.tokens = tokens

    async def scenario() -> None:
        body = rig.kube.put_app("platform", app_spec(credential={"managedIdentity": {}}))
        rig.controller.app_event(body)
        tenant(rig, "team-a", {"graph": "yes"})
        await until(lambda: ready(rig, "team-a") == "TokenIssued", what="Ready")
        writes = rig.kube.writes
        status = rig.kube.statuses[("team-a", "mail")]
        assert tokens.cached is not None and tokens.cached.refresh_on is not None
        # the refresh follows the hint (20 minutes), not half the lifetime (30)
        assert status["refreshAt"] <= tokens.cached.refresh_on.strftime("%Y-%m-%dT%H:%M:%SZ")
        key = ("team-a", "mail")
        rig.controller._workers[key].memory.renew.requested = True  # ask again now
        rig.controller._workers[key].wake.set()
        await until(lambda: tokens.requests == 2, what="asked again")
        await until(lambda: rig.kube.statuses[key]["refreshAt"] != status["refreshAt"], what="next attempt")
        assert rig.kube.writes == writes  # nothing written: the same token
        assert ready(rig, "team-a") == "TokenIssued"

    run(scenario)


def test_after_a_restart_a_namespaces_credentials_read_it_once_and_the_app_counts_them_without_a_token_request(
        ) -> None:
    """A new process (a restart, a leader change) sees the credentials before the watches report the app and the
    namespace: one read of each for all of them, no token request (the tokens are valid), and the app's status
    counts them from their first pass, never saying it is unused in between."""
    rig = Rig()

    async def first() -> None:
        platform(rig)
        rig.controller.namespace_event(rig.kube.put_namespace("team-a", {"graph": "yes"}))
        for i in range(10):
            body = gac(f"mail{i}", uses(), namespace="team-a")
            rig.kube.objects.add(("team-a", f"mail{i}"))
            rig.controller.observe(body)
        await until(lambda: all(ready(rig, "team-a", f"mail{i}") == "TokenIssued" for i in range(10)), what="Ready")
        await rig.controller.stop()

    run(first)
    requests = rig.tokens.requests
    successor = rig.successor()
    kube = successor.kube
    kube.app_reads = kube.namespace_reads = 0
    kube.app_statuses["platform"] = {"users": 10, "permitted": 10, "observedGeneration": 1, "conditions": [
        {"type": "Ready", "status": "True", "reason": "TokenIssued", "message": "tokens issued for 10 credential(s)",
         "observedGeneration": 1, "lastTransitionTime": "2026-11-25T12:00:00Z"}]}
    written: list[dict[str, Any]] = []
    patch = kube.patch_app_status

    def recording(name: str, status: dict[str, Any]) -> None:
        written.append(status)
        patch(name, status)

    kube.patch_app_status = recording  # type: ignore[method-assign]

    async def second() -> None:
        successor.controller.app_status.start()
        try:
            for i in range(10):
                successor.controller.observe(gac(f"mail{i}", uses(), namespace="team-a", uid=f"uid-{i}",
                                                 status=kube.statuses[("team-a", f"mail{i}")]))
            app = {**kube.apps["platform"], "status": kube.app_statuses["platform"]}
            await until(lambda: kube.namespace_reads == 1, what="the namespace read")
            successor.controller.app_event(app)  # the watch reports the app late
            await until(lambda: all(successor.controller._workers[("team-a", f"mail{i}")].memory.report.last_status
                                    for i in range(10)), what="every credential resumed")
            writer = successor.controller.app_status
            await until(lambda: not writer._dirty and not writer._wake.is_set(), what="the status writer idle")
        finally:
            await successor.controller.app_status.stop()
            await successor.controller.stop()

    run(second)
    assert successor.tokens.requests == 0 and rig.tokens.requests == requests
    assert kube.app_reads <= 1 and kube.namespace_reads == 1
    assert not [w for w in written if w.get("conditions", [{}])[0].get("reason") == "Unused"], written
    assert kube.app_statuses["platform"]["users"] == 10


def test_a_tenants_own_mistake_does_not_make_the_app_unready() -> None:
    rig = Rig()

    async def scenario() -> None:
        rig.controller.app_status.start()
        try:
            platform(rig)
            tenant(rig, "team-a", {"graph": "yes"})
            await until(lambda: ready(rig, "team-a") == "TokenIssued", what="Ready")
            # another tenant's token Secret name is taken by a Secret of someone else's: SecretConflict, theirs
            rig.kube.put_client_secret("team-b", "mail-token", "not-a-token")
            tenant(rig, "team-b", {"graph": "yes"})
            await until(lambda: ready(rig, "team-b") == "SecretConflict", what="SecretConflict")
            await until(lambda: rig.kube.app_statuses.get("platform", {}).get("users") == 2, timeout=10,
                        what="two users")
            assert rig.kube.app_statuses["platform"]["conditions"][0]["status"] == "True"
        finally:
            await rig.controller.app_status.stop()

    run(scenario)


def test_a_namespace_of_credentials_lacking_a_role_of_a_shared_app_does_not_multiply_its_requests(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """While a required role is missing, each credential checks again with a new token; a token another credential
    of the same app got after its own answers that check as well: forty credentials of one namespace requiring a
    role the app lacks make about one request per round of checks, not forty (which would have the shared app
    throttled by Entra for every namespace)."""
    from graphcred.reconcile import policy
    monkeypatch.setattr(policy, "MISSING_ROLES_RETRY", (0.2, 0.2))  # a round of checks every 0.2 s
    rig = Rig()

    async def scenario() -> None:
        async def clock() -> None:  # the token endpoint's and the operator's time goes on: 10 s per 0.05 s
            while True:
                await asyncio.sleep(0.05)
                rig.clock.advance(10)

        ticking = asyncio.create_task(clock())
        try:
            platform(rig)
            rig.controller.namespace_event(rig.kube.put_namespace("team-h", {"graph": "yes"}))
            for i in range(40):
                rig.kube.objects.add(("team-h", f"c{i}"))
                rig.controller.observe(gac(f"c{i}", {**uses(), "requiredRoles": ["Mail.Send"]}, namespace="team-h"))
            workers = [rig.controller._workers[("team-h", f"c{i}")] for i in range(40)]
            await until(lambda: all(w.memory.report.missing_roles_checks >= 4 for w in workers), timeout=20,
                        what="four rounds of checks")
            checks = sum(w.memory.report.missing_roles_checks for w in workers)
            print(f"{checks} checks, {rig.tokens.requests} token requests")
            assert rig.tokens.requests * 5 <= checks, (rig.tokens.requests, checks)
        finally:
            ticking.cancel()

    run(scenario, timeout=40)


def test_renew_requests_of_a_namespace_for_a_shared_app_are_served_together_beyond_its_budget() -> None:
    """A namespace renewing its forty credentials of one shared app one after the other: each renew wants a token
    issued after its request, so each used to make a token request of its own (forty for the shared app, which
    Entra would throttle for every namespace). Beyond the namespace's budget they wait together and one request
    answers them all."""
    from graphcred.reconcile import controller as controller_module
    rig = Rig()

    async def scenario() -> None:
        platform(rig)
        rig.controller.namespace_event(rig.kube.put_namespace("team-h", {"graph": "yes"}))
        bodies = []
        for i in range(40):
            rig.kube.objects.add(("team-h", f"c{i}"))
            bodies.append(gac(f"c{i}", uses(), namespace="team-h"))
            rig.controller.observe(bodies[-1])
        await until(lambda: all(ready(rig, "team-h", f"c{i}") == "TokenIssued" for i in range(40)), what="Ready")
        before = rig.tokens.requests
        for i, body in enumerate(bodies):  # one at a time, each after the last one's request is served or queued
            rig.clock.advance(1)
            meta = {**body["metadata"], "annotations": {"graphcred.io/renew-requested-at": f"r{i}"}}
            rig.controller.observe({**body, "metadata": meta})
            await until(lambda w=rig.controller._workers[("team-h", f"c{i}")]: w.renew_timer is not None or (  # type: ignore[misc]
                not w.renewing and not w.memory.renew.requested), what=f"c{i}'s renew served or queued")
        served_at_once = rig.tokens.requests - before
        waiting = sum(len(b) for b in rig.controller._renew_batches.values())
        assert served_at_once <= controller_module.RENEW_BURST + 1 and waiting >= 35, (served_at_once, waiting)
        # the batch's time comes (its timer, brought forward): one request for all of them
        [batch] = list(rig.controller._renew_batches)
        rig.controller._renew_batch(batch)
        await until(lambda: all(rig.kube.statuses[("team-h", f"c{i}")].get("lastRenewRequest") == f"r{i}"
                                for i in range(40)), what="every renew answered")
        assert rig.tokens.requests - before <= served_at_once + 1, rig.tokens.requests - before

    run(scenario)


def test_an_apps_broken_credential_is_the_admins_to_read_and_its_users_are_told_whom_to_ask() -> None:
    rig = Rig()

    async def scenario() -> None:
        rig.controller.app_status.start()
        try:
            body = rig.kube.put_app("platform", app_spec())  # its Secret was never created
            rig.controller.app_event(body)
            tenant(rig, "team-a", {"graph": "yes"})
            await until(lambda: ready(rig, "team-a") == "CredentialNotFound", what="CredentialNotFound")
            message = rig.kube.ready("team-a", "mail")["message"]  # type: ignore[index]
            assert "platform-secret" not in message and APPS_NS not in message, message
            assert "cluster admin" in message and "graphcred status cga/platform" in message, message
            await until(lambda: rig.kube.app_statuses.get("platform", {}).get("conditions"), timeout=10,
                        what="the app's status")
            cond = rig.kube.app_statuses["platform"]["conditions"][0]
            assert cond["reason"] == "CredentialNotFound" and "platform-secret" in cond["message"], cond
        finally:
            await rig.controller.app_status.stop()

    run(scenario)


# --- found by review (each failed before its fix) ----------------------------------------------------------------
def _edit(rig: Rig, body: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    meta = {**body["metadata"], "generation": body["metadata"]["generation"] + 1}
    new = {**body, "metadata": meta, "spec": spec}
    rig.controller.observe(new)
    return new


def test_a_spec_made_invalid_does_not_keep_a_token_the_policy_withdrew() -> None:
    """A tenant makes its spec invalid (keeping appRef): its pass fails at parsing, before _identity, so a
    later relabel never deletes the token Secret."""
    rig = Rig()

    async def scenario() -> None:
        platform(rig)
        body = tenant(rig, "team-a", {"graph": "yes"})
        await until(lambda: ready(rig, "team-a") == "TokenIssued", what="Ready")
        _edit(rig, body, {**uses(), "tenantId": "x"})  # appRef + tenantId: InvalidSpec
        await until(lambda: ready(rig, "team-a") == "InvalidSpec", what="InvalidSpec")
        rig.controller.namespace_event(rig.kube.put_namespace("team-a", {"graph": "no"}))
        await until(lambda: ("team-a", "mail-token") not in rig.kube.secrets, what="the withdrawn token deleted")
        assert ("mail", "Warning", "NotPermitted") in rig.events

    run(scenario)


def test_a_switch_to_an_own_identity_that_fails_does_not_keep_the_apps_withdrawn_token() -> None:
    rig = Rig()

    async def scenario() -> None:
        platform(rig)
        body = tenant(rig, "team-a", {"graph": "yes"})
        await until(lambda: ready(rig, "team-a") == "TokenIssued", what="Ready")
        app_token = rig.kube.token_in("team-a", "mail-token")
        # direct, with a credential Secret that does not exist: CredentialNotFound, Secret untouched
        _edit(rig, body, {"tenantId": "11111111-1111-1111-1111-111111111111",
                          "clientId": "22222222-2222-2222-2222-222222222222",
                          "credential": {"clientSecret": {"name": "missing"}}, "scopes": [GRAPH]})
        await until(lambda: ready(rig, "team-a") == "CredentialNotFound", what="CredentialNotFound")
        rig.controller.namespace_event(rig.kube.put_namespace("team-a", {"graph": "no"}))
        await until(lambda: rig.kube.token_in("team-a", "mail-token") != app_token, what="the app's token deleted")

    run(scenario)


def test_a_managed_identitys_deleted_token_secret_is_written_again_with_the_same_token() -> None:
    rig = Rig()
    rig.tokens = tokens = SameTokenTwice(rig.clock)
    rig.reconciler.acquirer.tokens = tokens

    async def scenario() -> None:
        rig.controller.app_event(rig.kube.put_app("platform", app_spec(credential={"managedIdentity": {}})))
        tenant(rig, "team-a", {"graph": "yes"})
        await until(lambda: ready(rig, "team-a") == "TokenIssued", what="Ready")
        rig.kube.delete_secret("team-a", "mail-token")  # a user deletes the token Secret
        rig.controller.secret_event("team-a", "mail-token", "999", True)
        await until(lambda: ("team-a", "mail-token") in rig.kube.secrets, what="the token Secret written again")
        assert tokens.requests == 2

    run(scenario)


def test_an_app_deleted_while_it_is_read_on_a_miss_is_not_cached() -> None:
    """The app is read on a cache miss; its DELETED event is handled while the read is in flight; the read's
    (stale) body is then stored: the deleted app stays in the cache and keeps issuing tokens."""
    rig = Rig()
    release = threading.Event()
    entered = threading.Event()
    read = rig.kube.read_cluster_app

    def slow_read(name: str) -> dict[str, Any] | None:
        body = read(name)
        entered.set()
        release.wait(5)
        return body

    rig.kube.read_cluster_app = slow_read  # type: ignore[method-assign]

    async def scenario() -> None:
        rig.kube.put_client_secret(APPS_NS, "platform-secret", "s")
        rig.kube.put_app("platform", app_spec())  # the watch has not reported it yet (just after a start)
        tenant(rig, "team-a", {"graph": "yes"})
        await until(entered.is_set, what="read in flight")
        rig.kube.delete_app("platform")
        rig.controller.app_event({"metadata": {"name": "platform"}}, deleted=True)
        release.set()
        await until(lambda: ready(rig, "team-a") == "AppNotFound", what="AppNotFound")
        assert rig.reconciler.apps.app("platform") is None, "a deleted app is cached (ghost)"
        assert ("team-a", "mail-token") not in rig.kube.secrets, "token issued with a deleted app"

    run(scenario)


def test_a_role_one_tenant_requires_does_not_make_the_shared_app_unready() -> None:
    rig = Rig()

    async def scenario() -> None:
        rig.controller.app_status.start()
        try:
            platform(rig)
            tenant(rig, "team-a", {"graph": "yes"})
            await until(lambda: ready(rig, "team-a") == "TokenIssued", what="Ready")
            await until(lambda: (rig.kube.app_statuses.get("platform", {}).get("conditions") or [{}])[0]
                        .get("status") == "True", timeout=5, what="app Ready")
            rig.clock.advance(1)  # time goes on: team-b's pass is the latest
            tenant(rig, "team-b", {"graph": "yes"}, {**uses(), "requiredRoles": ["Nope.All"]})
            await until(lambda: ready(rig, "team-b") == "MissingRoles", what="MissingRoles")
            writer = rig.controller.app_status
            await until(lambda: rig.kube.app_statuses["platform"].get("users") == 2 and not writer._dirty
                        and not writer._wake.is_set(), timeout=10, what="the app's status written")
            cond = rig.kube.app_statuses["platform"]["conditions"][0]
            assert cond["status"] == "True", (cond, [e for e in rig.emitted if e[0] == "platform"])
        finally:
            await rig.controller.app_status.stop()

    run(scenario)


def test_after_a_restart_a_rotation_of_the_apps_secret_reaches_its_users() -> None:
    rig = Rig()

    async def first() -> None:
        platform(rig)
        tenant(rig, "team-a", {"graph": "yes"})
        await until(lambda: ready(rig, "team-a") == "TokenIssued", what="Ready")
        await rig.controller.stop()

    run(first)
    successor = rig.successor()
    kube = successor.kube
    before = kube.token_in("team-a", "mail-token")

    async def second() -> None:
        body = gac("mail", uses(), namespace="team-a", uid="uid-x", status=kube.statuses[("team-a", "mail")])
        successor.controller.observe(body)
        w = await until(lambda: successor.controller._workers.get(("team-a", "mail")), what="worker")
        await until(lambda: w.memory.report.last_status, what="resumed")
        successor.controller.app_event(kube.apps["platform"])  # the watch reports the app late: "unchanged"
        successor.controller.namespace_event(kube.namespaces["team-a"])
        successor.clock.advance(60)
        kube.put_client_secret(APPS_NS, "platform-secret", "rotated")
        rv = kube.secrets[(APPS_NS, "platform-secret")]["metadata"]["resourceVersion"]
        successor.controller.secret_event(APPS_NS, "platform-secret", rv, False)
        await until(lambda: kube.token_in("team-a", "mail-token") != before, timeout=3, what="new token after rotation")
        await successor.controller.stop()

    run(second)
