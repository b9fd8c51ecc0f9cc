"""ClusterGraphApp on the real bed: one app identity for many namespaces, under the admin's policy. The app's client
secret lives in the operator's namespace (graphcred-system on the bed); tenants name the app in spec.appRef and get
tokens only while its policy selects their namespace and allows their scopes. The scenarios that take a refresh or
more (twenty namespaces, revocation while another keeps refreshing, leader change, the chart's RBAC, IMDS down past
expiry) are in test_cluster_apps_world.py."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import time
import uuid

import pytest
from kubernetes import client

from graphcred.api.keys import GROUP, PLURAL, RENEW_ANNOTATION, VERSION
from graphcred_testbed.bed import wait_for

from ..conftest import LeakCorpus
from ..helpers import GRAPH, Env
from .clusterapps import (
    APPS_NS,
    SCOPE,
    app_manifest,
    cluster_app,
    create_app,
    delete_app,
    get_app,
    label,
    managed_app,
    material_name,
    more_namespaces,
    secret_app_spec,
    set_policy,
    use,
    wait_gone,
)

pytestmark = [pytest.mark.bed]

OTHER_SCOPE = "https://outlook.office365.com/.default"


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


def _told_to_tenant(env: Env, name: str) -> str:
    """Everything a tenant reads about its credential: the object with its status, and its Events."""
    return json.dumps(env.get(name)) + "\n".join(m for _, _, m in env.events(name))


def test_a_tenant_cannot_reach_the_apps_material_or_the_operators_namespace(env: Env, leak_corpus: LeakCorpus
                                                                             ) -> None:
    """The app's policy selects every namespace, the operator's own included (an admin's broadest choice). A tenant
    naming its token Secret after the app's credential Secret gets a Secret of its own, in its own namespace; a
    credential of its own naming that Secret reads its own namespace only; a GraphAppCredential created in the
    operator's namespace cannot overwrite the app's Secret (SecretConflict). Nothing a tenant reads names the app's
    Secret or holds its value."""
    bed = env.bed
    with cluster_app(env, selector={}, scopes=(SCOPE,)) as (name, app), \
            more_namespaces(env, leak_corpus, 1) as [tenant]:
        material = material_name(name)
        before = bed.core.read_namespaced_secret(material, APPS_NS)
        # a credential of the tenant's own, naming the app's Secret: looked for in the tenant's namespace only
        env.create("own", app, {"clientSecret": {"name": material}})
        env.wait_condition("own", "False", "CredentialNotFound")
        assert bed.issuer.token_requests(app.client_id) == 0
        env.delete("own")
        # an appRef credential whose token Secret has the app's Secret's name: its own Secret, in its namespace
        use(env, "clash", name, secretName=material)
        env.wait_ready("clash")
        token = env.token(material)
        assert token is not None and env.verified_claims(token)["appid"] == app.client_id
        # the same, created in the operator's namespace: refused, the app's Secret untouched
        try:
            use(env, "intruder", name, namespace=APPS_NS, secretName=material)
            intruder = beside_apps(env)
            intruder.wait_condition("intruder", "False", "SecretConflict")
            after = bed.core.read_namespaced_secret(material, APPS_NS)
            assert (after.data, after.metadata.resource_version) == (before.data, before.metadata.resource_version)
            assert not after.metadata.owner_references
        finally:
            with contextlib.suppress(client.ApiException):
                bed.custom.delete_namespaced_custom_object(GROUP, VERSION, APPS_NS, PLURAL, "intruder")
        # the app still works for everyone
        use(tenant, "mail", name)
        use(tenant, "greedy", name, scopes=(OTHER_SCOPE,))
        tenant.wait_ready("mail")
        tenant.wait_condition("greedy", "False", "NotPermitted")
        for who, credential in ((tenant, "mail"), (tenant, "greedy"), (env, "clash")):
            told = _told_to_tenant(who, credential)
            assert env.sv(material) not in told, f"{who.namespace}/{credential} shows the app's client secret"
            if credential != "clash":  # "clash" names it itself, as its own token Secret
                assert material not in told, f"{who.namespace}/{credential} names the app's Secret"
        assert [s.metadata.name for s in bed.core.list_namespaced_secret(tenant.namespace).items] == ["mail-token"]


def beside_apps(env: Env) -> Env:
    return Env(env.bed, APPS_NS, env.operator, env._values)


def test_a_policy_edit_deletes_the_token_and_an_edit_back_restores_it(env: Env) -> None:
    bed = env.bed
    with cluster_app(env, selector={}) as (name, _):
        use(env, "mail", name)
        env.wait_ready("mail")
        set_policy(bed, name, scopes=(OTHER_SCOPE,))
        seconds = wait_gone(env, "mail-token")
        message = env.wait_condition("mail", "False", "NotPermitted", timeout=15)["status"]["conditions"][0]["message"]
        assert SCOPE in message, message
        print(f"\npolicy edit (scope no longer allowed) -> token Secret deleted: {seconds:.2f} s")
        started = time.monotonic()
        set_policy(bed, name, scopes=(SCOPE, OTHER_SCOPE))
        env.wait_ready("mail", timeout=15)
        assert env.token("mail-token") is not None
        print(f"policy edited back -> token Secret back: {time.monotonic() - started:.2f} s")


def test_deleting_the_app_deletes_its_users_tokens_and_recreating_it_brings_them_back(
        env: Env, leak_corpus: LeakCorpus) -> None:
    bed = env.bed
    key = f"graph-{uuid.uuid4().hex[:6]}"
    label(bed, env.namespace, {key: "on"})
    selector = {"matchLabels": {key: "on"}}
    with cluster_app(env, selector=selector) as (name, app), \
            more_namespaces(env, leak_corpus, 1, {key: "on"}) as [other]:
        users = [env, other]
        for e in users:
            use(e, "mail", name)
        for e in users:
            e.wait_ready("mail")
        started = time.monotonic()
        delete_app(bed, name)
        for e in users:
            wait_gone(e, "mail-token")
            e.wait_condition("mail", "False", "AppNotFound", timeout=15)
        print(f"\napp deleted -> both token Secrets gone: {time.monotonic() - started:.2f} s")
        started = time.monotonic()
        create_app(bed, app_manifest(name, secret_app_spec(bed, app, material_name(name)), selector))
        for e in users:
            e.wait_ready("mail", timeout=15)
            token = e.token("mail-token")
            assert token is not None and e.verified_claims(token)["appid"] == app.client_id
        print(f"app re-created -> both tokens back: {time.monotonic() - started:.2f} s")


def test_a_credential_secret_rotated_in_the_operators_namespace_reaches_every_user_within_seconds(
        env: Env, leak_corpus: LeakCorpus) -> None:
    bed = env.bed
    with cluster_app(env, selector={}) as (name, app), more_namespaces(env, leak_corpus, 2) as others:
        users = [env, *others]
        for e in users:
            use(e, "mail", name)
        for e in users:
            e.wait_ready("mail")
        old = {e.namespace: e.token("mail-token") for e in users}
        requests_before = bed.issuer.token_requests(app.client_id)
        material = material_name(name)
        # the admin adds the new secret to the app registration, then rotates the Secret; the old secret is gone
        # from Entra at once, so only a token acquired with the new one can appear
        rotated = env.sv(f"{material}-rotated")
        app.secrets[:] = [rotated]
        started = time.monotonic()
        bed.core.patch_namespaced_secret(material, APPS_NS, {"stringData": {"clientSecret": rotated}})
        for e in users:
            wait_for(lambda e=e: e.token("mail-token") not in (None, old[e.namespace]), timeout=15,  # type: ignore[misc]
                     what=f"{e.namespace}: a token acquired with the rotated secret")
        seconds = time.monotonic() - started
        for e in users:
            e.wait_ready("mail")
        requests = bed.issuer.token_requests(app.client_id) - requests_before
        print(f"\nrotated credential Secret -> new token in all {len(users)} namespaces: {seconds:.2f} s, "
              f"{requests} token request(s)")
        assert len({e.token("mail-token") for e in users}) == 1, "the users share one new token"


def table(text: str) -> tuple[list[str], list[list[str]]]:
    """kubectl's table: its header's column names, and each row's cells cut where the header's columns begin (an
    empty cell prints as blanks)."""
    header, *rows = text.splitlines()
    starts = [m.start() for m in re.finditer(r"(?:^|(?<=\s\s))\S", header)]
    ends = [*starts[1:], None]
    names = [header[a:b].strip() for a, b in zip(starts, ends, strict=True)]
    return names, [[row[a:b].strip() for a, b in zip(starts, ends, strict=True)] for row in rows]


def test_kubectl_get_shows_the_apps_users_and_whom_it_refuses(env: Env, leak_corpus: LeakCorpus) -> None:
    bed = env.bed
    key = f"graph-{uuid.uuid4().hex[:6]}"
    label(bed, env.namespace, {key: "on"})
    mine = {"graphcred-test": key}
    with cluster_app(env, selector={"matchLabels": {key: "on"}}) as (name, _), \
            more_namespaces(env, leak_corpus, 1, {key: "on"}) as [team_b], \
            more_namespaces(env, leak_corpus, 1) as [team_c]:
        use(env, "mail", name, labels=mine)
        use(team_b, "mail", name, labels=mine)
        use(team_c, "mail", name, labels=mine)  # its namespace is not selected
        use(env, "calendar", name, scopes=(OTHER_SCOPE,), labels=mine)  # a scope the policy does not allow
        env.wait_ready("mail")
        team_b.wait_ready("mail")
        team_c.wait_condition("mail", "False", "NotPermitted")
        env.wait_condition("calendar", "False", "NotPermitted")
        wait_for(lambda: (get_app(bed, name).get("status") or {}).get("users") == 4
                 and get_app(bed, name)["status"].get("permitted") == 2, timeout=15, what="users 4, permitted 2")
        cga = bed.kubectl("get", "cga", name).stdout
        gac = bed.kubectl("get", "gac", "-A", "-l", f"graphcred-test={key}").stdout
        print(f"\n$ kubectl get cga {name}\n{cga}\n$ kubectl get gac -A -l graphcred-test={key}\n{gac}")
        header, [row] = table(cga)
        assert header == ["NAME", "READY", "REASON", "USERS", "PERMITTED", "CREDENTIAL EXPIRES", "AGE"]
        assert row[:6] == [name, "True", "TokenIssued", "4", "2", ""]  # a client secret does not expire
        header, cells = table(gac)
        assert header == ["NAMESPACE", "NAME", "READY", "REASON", "EXPIRES", "SECRET", "AGE"]
        rows = {(c[0], c[1]): c[2:6] for c in cells}
        assert len(rows) == 4, rows
        for ns in (env.namespace, team_b.namespace):
            ready, reason, expires, secret = rows[(ns, "mail")]
            assert (ready, reason, secret) == ("True", "TokenIssued", "mail-token") and expires, rows
        assert rows[(team_c.namespace, "mail")] == ["False", "NotPermitted", "", ""], rows
        assert rows[(env.namespace, "calendar")] == ["False", "NotPermitted", "", ""], rows


# --- managed identity: the bed's IMDS ---------------------------------------------------------------------------
def test_a_managed_identity_assigned_later_becomes_ready_within_seconds(env: Env) -> None:
    bed = env.bed
    client_id = str(uuid.uuid4())
    with managed_app(env, selector={}, client_id=client_id) as name:
        use(env, "mi", name)
        env.wait_condition("mi", "False", "CredentialNotFound")
        assert env.secret("mi-token") is None
        started = time.monotonic()
        bed.imds.assign(client_id, roles={GRAPH: ["User.Read.All"]})
        obj = env.wait_ready("mi", timeout=20)
        print(f"\nmanaged identity assigned -> Ready: {time.monotonic() - started:.2f} s")
        token = env.token("mi-token")
        assert token is not None
        claims = env.verified_claims(token)
        assert (claims["appid"], claims["tid"]) == (client_id, bed.imds.tenant_id)
        assert claims["roles"] == ["User.Read.All"] and obj["status"]["roles"] == ["User.Read.All"]


def test_the_same_managed_identity_token_answered_twice_writes_nothing(env: Env) -> None:
    bed = env.bed
    client_id = str(uuid.uuid4())
    bed.imds.assign(client_id)
    with managed_app(env, selector={}, client_id=client_id) as name:
        use(env, "mi", name)
        status = env.wait_ready("mi")["status"]
        secret = env.secret("mi-token")
        assert secret is not None
        asked, minted = bed.imds.token_requests(client_id), bed.imds.minted
        request = str(time.time())
        env.bed.custom.patch_namespaced_custom_object(GROUP, VERSION, env.namespace, PLURAL, "mi", {
            "metadata": {"annotations": {RENEW_ANNOTATION: request}}})
        # served: the status names the request (refreshAt is no signal: to the second, the next attempt's time may
        # come out as it was, both being half the token's life less a jitter of up to three minutes)
        try:
            now = wait_for(lambda: (s := env.get("mi").get("status") or {}).get("lastRenewRequest") == request
                           and bed.imds.token_requests(client_id) > asked and s, timeout=15,
                           what="a renewal answered with the cached token")
        except TimeoutError:
            shown = env.get("mi").get("status") or {}
            raise AssertionError(f"renewal not served in 15 s: IMDS asked {bed.imds.token_requests(client_id) - asked}"
                                 f" more times; status {shown.get('lastRenewRequest')!r} "
                                 f"{shown.get('conditions')}") from None
        assert bed.imds.minted == minted, "IMDS answered its cached token"
        after = env.secret("mi-token")
        assert after is not None and after.metadata.resource_version == secret.metadata.resource_version
        assert now["expiresOn"] == status["expiresOn"]
        assert env.ready_condition("mi")["status"] == "True"  # type: ignore[index]
        print(f"\nrenewal answered with IMDS's cached token: Secret resourceVersion kept "
              f"({secret.metadata.resource_version}), refreshAt {status['refreshAt']} -> {now['refreshAt']}")
