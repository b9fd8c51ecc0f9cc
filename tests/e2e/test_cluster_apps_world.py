"""ClusterGraphApp on the real bed, the slower scenarios: twenty namespaces sharing one token request per refresh,
a relabelled namespace losing its token within seconds while a selected one keeps refreshing, a namespace deleted
mid-acquisition, a leader change during a policy change, a managed identity whose IMDS is down past the token's
expiry, and the operator working with exactly the chart's RBAC in watchNamespaces mode. Figures are printed (-s)."""

from __future__ import annotations

import datetime as dt
import itertools
import time
import uuid
from pathlib import Path

import pytest
from kubernetes import client

from graphcred_testbed.bed import wait_for

from ..conftest import LeakCorpus
from ..helpers import GRAPH, Env, lease_holder, two_replicas
from .clusterapps import (
    SCOPE,
    cluster_app,
    ensure_namespace,
    get_app,
    label,
    managed_app,
    material_name,
    more_namespaces,
    use,
    wait_gone,
)
from .test_chart import PLATFORM_NS, RELEASE_NS, chart_operator

pytestmark = [pytest.mark.bed]

SHORT = 60  # seconds a token lives in the refresh tests: a refresh about every 30 s


@pytest.mark.long  # three refreshes of a 60 s token
def test_twenty_namespaces_on_one_app_make_one_token_request_per_refresh(env: Env, leak_corpus: LeakCorpus) -> None:
    bed = env.bed
    key = f"graph-{uuid.uuid4().hex[:6]}"
    with cluster_app(env, selector={"matchLabels": {key: "on"}}, lifetime=SHORT) as (name, app), \
            more_namespaces(env, leak_corpus, 20, {key: "on"}) as users:
        bed.issuer.record_token_requests()
        started = time.monotonic()
        for e in users:
            use(e, "mail", name)
        for e in users:
            e.wait_ready("mail", timeout=60)

        def tokens() -> list[str | None]:
            return [e.token("mail-token") for e in users]

        rounds: list[tuple[float, str]] = []  # (when all 20 Secrets held it, the token)
        seen: set[str] = set()
        for _ in range(4):  # the first token, then three refreshes
            def settled() -> str | None:
                held = set(tokens())
                token = held.pop() if len(held) == 1 else None
                return token if token is not None and token not in seen else None

            token = wait_for(settled, timeout=SHORT, interval=0.5,
                             what="all 20 Secrets holding one new token")
            seen.add(token)
            rounds.append((time.monotonic() - started, token))
        log = [t - started for cid, t in bed.issuer.token_request_log() if cid == app.client_id]
        print(f"\n20 namespaces on ClusterGraphApp {name} (token lifetime {SHORT} s): token requests at "
              f"{', '.join(f'{t:.1f}' for t in log)} s")
        bounds = [0.0, *(t for t, _ in rounds)]
        counts = [sum(1 for t in log if a <= t < b) for a, b in itertools.pairwise(bounds)]
        for i, ((at, _), count) in enumerate(zip(rounds, counts, strict=True)):
            what = "first token" if i == 0 else f"refresh {i}"
            print(f"  {what}: {count} token request(s); all 20 Secrets held the same token at {at:.1f} s "
                  f"(distinct tokens across the 20 Secrets: 1)")
        assert counts == [1, 1, 1, 1], counts
        assert bed.issuer.token_requests(app.client_id) == 4
        wait_for(lambda: (s := get_app(bed, name).get("status") or {}).get("users") == 20
                 and s.get("permitted") == 20, timeout=15, what="the app's status counting 20 permitted users")


def test_a_relabelled_namespace_loses_its_token_within_seconds_while_a_selected_one_keeps_refreshing(
        env: Env, leak_corpus: LeakCorpus) -> None:
    bed = env.bed
    key = f"graph-{uuid.uuid4().hex[:6]}"
    label(bed, env.namespace, {key: "on"})
    with cluster_app(env, selector={"matchLabels": {key: "on"}}, lifetime=SHORT) as (name, _), \
            more_namespaces(env, leak_corpus, 1, {key: "on"}) as [other]:
        for e in (env, other):
            use(e, "mail", name)
        for e in (env, other):
            e.wait_ready("mail")
        kept = other.token("mail-token")
        issued = time.monotonic()
        label(bed, env.namespace, {key: None})
        seconds = wait_gone(env, "mail-token")
        message = env.wait_condition("mail", "False", "NotPermitted", timeout=15)["status"]["conditions"][0]["message"]
        assert name in message and env.namespace in message, message
        wait_for(lambda: [m for t, r, m in env.events("mail") if (t, r) == ("Warning", "NotPermitted")
                          and "token Secret was deleted" in m], timeout=15,
                 what="a Warning Event saying the token Secret was deleted, and why")
        print(f"\nrevocation: namespace relabelled out -> token Secret gone in {seconds:.2f} s")
        # the other one refreshes at about half the token's lifetime, as before
        wait_for(lambda: other.token("mail-token") not in (None, kept), timeout=SHORT, interval=0.5,
                 what="the selected namespace's next refresh")
        other.wait_ready("mail")
        print(f"the selected namespace refreshed {time.monotonic() - issued:.1f} s after the relabel "
              f"(token lifetime {SHORT} s)")
        assert env.secret("mail-token") is None, "the withdrawn namespace got a token again"


def test_a_namespace_deleted_mid_acquisition_leaves_no_error_loop(env: Env, leak_corpus: LeakCorpus) -> None:
    """The doomed namespace asks a scope of its own (no token to share), and the issuer takes 2.5 s to answer it
    (the session operator's token timeout is 3 s); the namespace is deleted while the request is under way."""
    bed = env.bed
    doomed_scope = f"api://doomed-{uuid.uuid4().hex[:6]}/.default"
    with cluster_app(env, selector={}, scopes=(SCOPE, doomed_scope)) as (name, app), \
            more_namespaces(env, leak_corpus, 1) as [doomed]:
        use(env, "mail", name)
        env.wait_ready("mail")
        secret = env.secret("mail-token")
        assert secret is not None
        logs_from = len(env.operator.logs())
        asked = bed.issuer.token_requests(app.client_id)
        bed.issuer.fail(app.client_id, delay=2.5, times=1)
        use(doomed, "mail", name, scopes=(doomed_scope,))
        wait_for(lambda: bed.issuer.token_requests(app.client_id) > asked, timeout=15, what="the doomed request")
        bed.delete_namespace(doomed.namespace)

        def gone() -> bool:
            try:
                bed.core.read_namespace(doomed.namespace)
            except client.ApiException as exc:
                return exc.status == 404
            return False

        wait_for(gone, timeout=60, what="the namespace deleted")
        requests = bed.issuer.token_requests(app.client_id)

        def mentions() -> int:
            return sum(1 for line in env.operator.logs()[logs_from:].splitlines() if doomed.namespace in line)

        settled = mentions()
        env.assert_stays(lambda: bed.issuer.token_requests(app.client_id) == requests
                         and mentions() == settled, 5, "no retries for the deleted namespace's credential")
        logs = env.operator.logs()[logs_from:]
        assert "worker ended unexpectedly" not in logs
        print(f"\nnamespace deleted mid-acquisition: {requests - asked} token request(s) for it, "
              f"{settled} log line(s) about it, none after it was gone")
        after = env.secret("mail-token")
        assert after is not None and after.metadata.resource_version == secret.metadata.resource_version
        assert env.ready_condition("mail")["status"] == "True"  # type: ignore[index]


@pytest.mark.long  # a Lease taken over
def test_the_new_leader_deletes_a_token_withdrawn_during_the_leader_change(env: Env, leak_corpus: LeakCorpus,
                                                                           operator_logdir: Path) -> None:
    bed = env.bed
    key = f"graph-{uuid.uuid4().hex[:6]}"
    label(bed, env.namespace, {key: "on"})
    with cluster_app(env, selector={"matchLabels": {key: "on"}}) as (name, _), \
            more_namespaces(env, leak_corpus, 1, {key: "on"}) as [other], \
            two_replicas(env, operator_logdir, "cga-leader", "--lease-duration=6") as replicas:
        for e in (env, other):
            use(e, "mail", name)
        for e in (env, other):
            e.wait_ready("mail", timeout=60)
        kept = env.secret("mail-token")
        replicas.leader.kill()
        label(bed, other.namespace, {key: None})  # while no one leads
        seconds = wait_gone(other, "mail-token", timeout=45)
        assert lease_holder(env) not in (None, replicas.leader_id)
        other.wait_condition("mail", "False", "NotPermitted", timeout=15)
        print(f"\nleader killed, namespace withdrawn at once -> the new leader deleted its token Secret after "
              f"{seconds:.1f} s (Lease duration 6 s)")
        after = env.secret("mail-token")
        assert kept is not None and after is not None and env.ready_condition("mail")["status"] == "True"  # type: ignore[index]


@pytest.mark.long  # a 40 s token outlived
def test_a_managed_identity_outlives_imds_down_past_expiry(env: Env) -> None:
    bed = env.bed
    imds = bed.imds
    client_id = str(uuid.uuid4())
    lifetime, margin = imds.lifetime, imds.refresh_margin
    imds.lifetime, imds.refresh_margin = 40, 5  # a short token, answered from IMDS's cache until 5 s before expiry
    imds.assign(client_id, roles={GRAPH: ["User.Read.All"]})
    try:
        with managed_app(env, selector={}, client_id=client_id) as name:
            use(env, "mi", name)
            status = env.wait_ready("mi")["status"]
            first = env.token("mi-token")
            assert first is not None
            asked = imds.token_requests(client_id)
            imds.fail_next(500, count=100_000)
            expires = dt.datetime.fromisoformat(status["expiresOn"]).timestamp()
            issued = expires - 40
            wait_for(lambda: imds.token_requests(client_id) > asked, timeout=40, what="a refresh meeting IMDS down")
            failed_at = time.time()
            env.assert_stays(lambda: env.token("mi-token") == first and env.ready_condition("mi")["status"] == "True",
                             expires - time.time() - 1, "the last token kept, and Ready, while it is valid")
            cond = env.wait_condition("mi", "False", "AuthorityUnavailable", timeout=30)["status"]["conditions"][0]
            went_false = time.time()
            print(f"\nIMDS down: first failed refresh {failed_at - issued:.1f} s after the token was issued; the "
                  f"Secret kept it, Ready True, until expiry ({expires - issued:.0f} s); Ready False "
                  f"({cond['reason']}) at {went_false - issued:.1f} s; the Secret after expiry: "
                  f"{'kept' if env.token('mi-token') == first else 'changed'}")
            healed = time.monotonic()
            imds.heal()
            env.wait_ready("mi", timeout=45)
            again = env.token("mi-token")
            assert again not in (None, first)
            print(f"IMDS back -> a new token in {time.monotonic() - healed:.1f} s")
            served = [r for r in imds.requests() if r.status == 200 and r.query.get("client_id") == client_id]
            request = served[-1]
            print(f"MSAL's request as the IMDS saw it: {request.method} {request.path}?"
                  + "&".join(f"{k}={v}" for k, v in request.query.items())
                  + f"  Metadata: {request.headers.get('Metadata')}")
            assert request.query["resource"] == GRAPH and request.headers.get("Metadata") == "true"
    finally:
        imds.heal()
        imds.lifetime, imds.refresh_margin = lifetime, margin


def test_cluster_apps_work_with_exactly_the_charts_rbac_in_watch_namespaces_mode(
        env: Env, operator_logdir: Path) -> None:
    """The operator as the chart's ServiceAccount, watching only the test's namespace; the app's Secret in a cluster
    resource namespace it does not watch. The token, the app's status, the Event in `default`, a rotation seen by
    the watch of that namespace, a relabel deleting the Secret: chart_operator fails on any 403 in its log."""
    bed = env.bed
    for ns in (RELEASE_NS, PLATFORM_NS):
        ensure_namespace(bed, ns)
    key = f"graph-{uuid.uuid4().hex[:6]}"
    label(bed, env.namespace, {key: "on"})
    values = ["--set", f"watchNamespaces={{{env.namespace}}}", "--set", f"clusterApps.resourceNamespace={PLATFORM_NS}"]
    args = (f"--namespace={env.namespace}", f"--cluster-resource-namespace={PLATFORM_NS}")
    with cluster_app(env, selector={"matchLabels": {key: "on"}}, apps_namespace=PLATFORM_NS) as (name, app), \
            chart_operator(env, operator_logdir, "cga-namespaced", values, *args):
        use(env, "mail", name)
        env.wait_ready("mail", timeout=60)
        wait_for(lambda: (s := get_app(bed, name).get("status") or {}).get("permitted") == 1
                 and s.get("conditions", [{}])[0].get("status") == "True", timeout=15,
                 what="the app's status written")
        wait_for(lambda: [e for e in bed.core.list_namespaced_event(
            "default", field_selector=f"involvedObject.name={name}").items if e.reason == "TokenIssued"],
            timeout=15, what="the app's Event in default")
        first = env.token("mail-token")
        material = material_name(name)
        rotated = env.sv(f"{material}-rotated")
        app.secrets[:] = [rotated]
        bed.core.patch_namespaced_secret(material, PLATFORM_NS, {"stringData": {"clientSecret": rotated}})
        wait_for(lambda: env.token("mail-token") not in (None, first), timeout=15,
                 what="a token acquired with the rotated secret")
        label(bed, env.namespace, {key: None})
        wait_gone(env, "mail-token")
        env.wait_condition("mail", "False", "NotPermitted", timeout=15)
