"""Scheduling defects of the first wave, reproduced with the real Controller, Reconciler and SharedTokens against
in-memory I/O ports and a fake clock (the bed tests cover the same paths end to end)."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
import uuid
from typing import Any

from graphcred.acquire.tokens import AcquisitionError
from graphcred.api.model import Reason
from graphcred.kube.errors import NoAnswer, ServerError
from graphcred.reconcile.memory import Memory
from graphcred.reconcile.snapshot import Snapshot

from .fakes import Clock, gac, secret_spec
from .harness import NS, TENANT, Rig, closed, is_ready, run, until

RENEW_ANNOTATION = "graphcred.io/renew-requested-at"


# --- defect 1: a cancelled sharer must not kill its partners --------------------------------------------------
def test_deleting_a_sharing_partner_mid_acquisition_leaves_the_other_refreshing() -> None:
    rig = Rig()

    async def scenario() -> None:
        spec = secret_spec(TENANT, str(uuid.uuid4()))
        with closed(rig.tokens.gate):
            a = rig.add(gac("a", spec))
            await until(rig.tokens.entered.is_set, what="A's request in flight")
            b = rig.add(gac("b", spec))
            await asyncio.sleep(0.05)  # B joins A's in-flight request
            rig.controller.forget(NS, "a")  # A deleted: its task is cancelled mid-acquisition
            await asyncio.sleep(0.05)
        assert a["metadata"]["name"] == "a"
        await until(lambda: is_ready(rig, "b"), what="B Ready from the shared request")
        assert rig.workers() == (1, 0), "B's worker must still be alive"
        # and B still reacts to a spec change
        rig.controller.observe({**b, "metadata": {**b["metadata"], "generation": 2},
                                "spec": {**spec, "scopes": ["https://vault.azure.net/.default"]}})
        await until(lambda: is_ready(rig, "b", 2), what="B Ready for generation 2")
        await rig.controller.stop()

    run(scenario)


def test_a_worker_whose_task_died_is_restarted_and_counted() -> None:
    rig = Rig()
    real_read = rig.kube.read_secret
    calls = {"n": 0}

    def stray_cancel(namespace: str, name: str) -> dict[str, Any] | None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise asyncio.CancelledError  # e.g. a cancellation inherited from another task
        return real_read(namespace, name)

    rig.kube.read_secret = stray_cancel  # type: ignore[method-assign]

    async def scenario() -> None:
        rig.add(gac("a", secret_spec(TENANT, str(uuid.uuid4()))))
        await until(lambda: is_ready(rig, "a"), what="A Ready after its worker recovered")
        assert rig.workers() == (1, 0)
        await rig.controller.stop()

    run(scenario)


# --- defect 7: refreshBeforeExpiry near the lifetime must not spin ----------------------------------------------
def test_refresh_before_expiry_near_the_lifetime_does_not_spin() -> None:
    rig = Rig(lifetime=60)

    async def scenario() -> None:
        rig.add(gac("a", secret_spec(TENANT, str(uuid.uuid4()), refreshBeforeExpiry="55s")))
        await until(lambda: is_ready(rig, "a"), what="A Ready")
        assert rig.kube.writes == 1
        rig.clock.advance(6.0)  # at the refresh time, still within the sharing window (a tenth of the lifetime)
        rig.controller.secret_event(NS, "cred", rig.kube.touch(NS, "cred"), deleted=False)
        await asyncio.sleep(0.5)
        assert rig.kube.writes <= 2, f"{rig.kube.writes} Secret writes in 0.5 s: a refresh loop"
        assert rig.tokens.requests == 2, "the refresh must get a new token, not the one already in the Secret"
        await rig.controller.stop()

    run(scenario)


def test_a_credential_secret_touch_without_new_data_writes_nothing() -> None:
    rig = Rig()

    async def scenario() -> None:
        rig.add(gac("a", secret_spec(TENANT, str(uuid.uuid4()))))
        await until(lambda: is_ready(rig, "a"), what="A Ready")
        version = rig.kube.touch(NS, "cred")
        rig.controller.secret_event(NS, "cred", version, deleted=False)
        await until(lambda: rig.status("a").get("credentialVersion") == version, what="the touch noticed")
        assert (rig.kube.writes, rig.tokens.requests) == (1, 1)
        await rig.controller.stop()

    run(scenario)


# --- defect 8: Ready=True only for the spec the token was made for ----------------------------------------------
def test_a_transient_failure_after_a_client_change_is_not_ready() -> None:
    rig = Rig()

    async def scenario() -> None:
        body = rig.add(gac("a", secret_spec(TENANT, str(uuid.uuid4()))))
        await until(lambda: is_ready(rig, "a"), what="A Ready")
        rig.tokens.failure = AcquisitionError(Reason.AUTHORITY_UNAVAILABLE, "503", permanent=False)
        rig.controller.observe({**body, "metadata": {**body["metadata"], "generation": 2},
                                "spec": secret_spec(TENANT, str(uuid.uuid4()))})
        await until(lambda: (rig.ready("a") or {}).get("observedGeneration") == 2, what="generation 2 reported")
        cond = rig.ready("a")
        assert cond is not None and cond["status"] == "False", cond
        assert cond["reason"] == "AuthorityUnavailable"
        await rig.controller.stop()

    run(scenario)


# --- defect 6: "needs the user" is retried slowly, never parked --------------------------------------------------
def test_needs_user_failures_are_retried_slowly_and_before_the_last_token_expires() -> None:
    rig = Rig()
    snap = Snapshot.of(gac("a", secret_spec(TENANT, str(uuid.uuid4()))))
    rig.kube.objects.add((NS, "a"))
    mem = Memory()

    async def scenario() -> None:
        assert await rig.reconciler.reconcile(snap, mem) is not None  # Ready, token valid for an hour
        rig.tokens.failure = AcquisitionError(Reason.UNAUTHORIZED, "AADSTS7000215", permanent=True)
        rig.clock.advance(1900)  # past the refresh time
        delays = []
        for _ in range(3):
            mem.renew.requested = True  # not waiting for the schedule in a unit test
            delay = await rig.reconciler.reconcile(snap, mem)
            assert delay is not None, "a credential needing the user must still be retried"
            delays.append(delay)
        assert 200 <= delays[0] <= 400 and 600 <= delays[1] <= 1200
        # the last token expires in ~1700 s: one more try comes shortly before that, not after an hour
        assert delays[2] < 1700, delays

    run(scenario)


# --- defect 14: a throttled app holds back every credential of that app -------------------------------------------
# (one namespace's 429 used to hold every app of the Entra tenant, in every namespace)
def test_a_throttled_app_holds_off_its_credentials_until_retry_after_but_not_other_apps() -> None:
    rig = Rig()
    rig.tokens.failure = AcquisitionError(Reason.THROTTLED, "429", permanent=False, retry_after=30)
    app = str(uuid.uuid4())

    async def scenario() -> None:
        for name in ("a", "b", "other-app"):
            rig.kube.objects.add((NS, name))
            rig.kube.put_client_secret(NS, f"cred-{name}", f"s-{name}")
        await rig.reconciler.reconcile(Snapshot.of(gac("a", secret_spec(TENANT, app, "cred-a"))), Memory())
        assert rig.tokens.requests == 1
        rig.tokens.failure = None
        same = Snapshot.of(gac("b", secret_spec(TENANT, app, "cred-b")))
        mem = Memory()
        delay = await rig.reconciler.reconcile(same, mem)
        assert rig.tokens.requests == 1, "another credential of the throttled app must wait for Retry-After"
        assert delay is not None and delay >= 25
        assert (rig.ready("b") or {}).get("reason") == "Throttled"
        await rig.reconciler.reconcile(Snapshot.of(gac("other-app", secret_spec(TENANT, str(uuid.uuid4()),
                                                                                "cred-other-app"))), Memory())
        assert rig.tokens.requests == 2 and is_ready(rig, "other-app"), "another app of the tenant was held"
        rig.clock.advance(31)
        await rig.reconciler.reconcile(same, mem)
        assert rig.tokens.requests == 3 and is_ready(rig, "b")

    run(scenario)


# --- defect 9: unexpected failures are reported --------------------------------------------------------------
def test_an_unexpected_api_error_is_reported_in_status_and_counted() -> None:
    rig = Rig()

    def broken(namespace: str, body: dict[str, Any]) -> str:
        raise ServerError("create Secret", 500, "Internal Server Error")

    rig.kube.create_secret = broken  # type: ignore[method-assign]

    async def scenario() -> None:
        rig.add(gac("a", secret_spec(TENANT, str(uuid.uuid4()))))
        cond = await until(lambda: rig.ready("a"), what="a status")
        assert cond["reason"] == "InternalError" and cond["status"] == "False"
        assert "HTTP 500" in cond["message"] and "create Secret" in cond["message"], cond["message"]
        assert ("a", "Warning", "InternalError") in rig.events
        text = rig.metrics.exposition()
        assert 'graphcred_internal_errors_total' in text
        await rig.controller.stop()

    run(scenario)


# --- defect 15: smaller ones ---------------------------------------------------------------------------------
def test_a_deleted_object_ends_its_worker_on_the_status_404() -> None:
    rig = Rig()

    async def scenario() -> None:
        rig.controller.observe(gac("zombie", secret_spec(TENANT, str(uuid.uuid4()))))  # not in kube.objects
        await until(lambda: len(rig.controller) == 0, what="the worker to end on 404")

    run(scenario)


def test_a_changed_secret_name_deletes_the_old_owned_secret() -> None:
    rig = Rig()

    async def scenario() -> None:
        spec = secret_spec(TENANT, str(uuid.uuid4()))
        body = rig.add(gac("a", spec))
        await until(lambda: is_ready(rig, "a"), what="A Ready")
        rig.controller.observe({**body, "metadata": {**body["metadata"], "generation": 2},
                                "spec": {**spec, "secretName": "renamed"}})
        await until(lambda: is_ready(rig, "a", 2), what="A Ready for generation 2")
        assert rig.kube.token_in(NS, "renamed")
        assert (NS, "a-token") not in rig.kube.secrets, "the old token Secret is left behind, never refreshed"
        await rig.controller.stop()

    run(scenario)


def test_renew_annotation_acquires_a_new_token_at_once() -> None:
    rig = Rig()

    async def scenario() -> None:
        body = rig.add(gac("a", secret_spec(TENANT, str(uuid.uuid4()))))
        await until(lambda: is_ready(rig, "a"), what="A Ready")
        before = rig.kube.token_in(NS, "a-token")
        rig.controller.observe({**body, "metadata": {**body["metadata"], "annotations": {RENEW_ANNOTATION: "1"}}})
        await until(lambda: rig.kube.token_in(NS, "a-token") != before, what="a new token after the renew request")
        assert rig.tokens.requests == 2
        await rig.controller.stop()

    run(scenario)


def test_other_conditions_in_status_do_not_break_resume() -> None:
    from graphcred.api.model import GraphAppCredentialStatus

    status = GraphAppCredentialStatus.model_validate({"conditions": [
        {"type": "Ready", "status": "True", "reason": "TokenIssued"},
        {"type": "Synced", "status": "True", "reason": "Argo"}]})
    ready = status.ready()
    assert ready is not None and ready.reason == "TokenIssued"



def test_a_condition_another_tool_added_survives_the_next_status_write() -> None:
    rig = Rig()

    async def scenario() -> None:
        body = rig.add(gac("a", secret_spec(TENANT, str(uuid.uuid4()))))
        await until(lambda: is_ready(rig, "a"), what="A Ready")
        audited = {"type": "example.com/Audited", "status": "True", "reason": "Checked", "message": "ok",
                   "lastTransitionTime": "2026-11-26T00:00:00Z"}
        status = rig.status("a")
        rig.kube.statuses[(NS, "a")] = {**status, "conditions": [*status["conditions"], audited]}
        before = rig.kube.token_in(NS, "a-token")
        rig.controller.observe(rig.listed(body, {RENEW_ANNOTATION: "1"}))  # the watch event carries its status
        await until(lambda: rig.kube.token_in(NS, "a-token") != before, what="a new token after the renew request")
        await until(lambda: is_ready(rig, "a"), what="A Ready again")
        assert audited in rig.status("a")["conditions"]
        await rig.controller.stop()

    run(scenario)


def test_an_apiserver_outage_is_reported_but_logged_as_a_warning(caplog: Any) -> None:
    rig = Rig()

    def unreachable(namespace: str, name: str) -> dict[str, Any] | None:
        raise NoAnswer("read Secret", None, "MaxRetryError")  # what Kube raises for a refused connection

    rig.kube.read_secret = unreachable  # type: ignore[method-assign]

    async def scenario() -> None:
        rig.add(gac("a", secret_spec(TENANT, str(uuid.uuid4()))))
        cond = await until(lambda: rig.ready("a"), what="a status")
        assert cond["reason"] == "InternalError" and "read Secret failed: MaxRetryError" in cond["message"]
        await rig.controller.stop()

    with caplog.at_level("DEBUG", logger="graphcred"):
        run(scenario)
    failed = [r for r in caplog.records if "reconcile failed" in r.getMessage()]
    assert failed and all(r.levelname == "WARNING" for r in failed)


def test_a_failure_that_cannot_even_be_reported_retries_before_the_last_token_expires() -> None:
    """Found by the 3-minute soak: an apiserver restart while the authority had just been down. The pass failed on
    reading the Secret, reporting the failure failed too, and the fallback retried after the plain backoff (32 s
    after five failures) without regard to the token in the Secret: it expired 23 s before the next attempt. The
    retry now comes before the last good token expires, as every reported failure's does."""
    rig = Rig()
    snap = Snapshot.of(gac("a", secret_spec(TENANT, str(uuid.uuid4()))))
    expires = rig.clock() + dt.timedelta(seconds=20)
    snap.status["expiresOn"] = expires.strftime("%Y-%m-%dT%H:%M:%SZ")

    def down(namespace: str, name: str, status: dict[str, Any]) -> None:
        raise NoAnswer("patch GraphAppCredential status", None, "MaxRetryError")

    rig.kube.patch_status = down  # type: ignore[method-assign]
    mem = Memory()
    mem.report.failures = 5

    async def scenario() -> None:
        delay = await rig.reconciler.internal_error(snap, mem, NoAnswer("read Secret", None, "MaxRetryError"))
        assert delay < 20, f"the next attempt in {delay:.0f} s, after the last token expires (in 20 s)"

    run(scenario)


# --- found in review: seams between the fixes ------------------------------------------------------------------
def test_a_transient_failure_of_a_missing_roles_recheck_stays_not_ready() -> None:
    rig = Rig()
    snap = Snapshot.of(gac("a", secret_spec(TENANT, str(uuid.uuid4()), requiredRoles=["Mail.Read"])))
    rig.kube.objects.add((NS, "a"))
    mem = Memory()

    async def scenario() -> None:
        await rig.reconciler.reconcile(snap, mem)
        assert (rig.ready("a") or {}).get("reason") == "MissingRoles"
        rig.tokens.failure = AcquisitionError(Reason.THROTTLED, "429", permanent=False, retry_after=5)
        rig.clock.advance(15)
        await rig.reconciler.reconcile(snap, mem)
        cond = rig.ready("a")
        assert cond is not None and (cond["status"], cond["reason"]) == ("False", "Throttled"), cond

    run(scenario)


def test_a_credential_secret_created_during_the_first_pass_wakes_it() -> None:
    rig = Rig()
    loop_holder: list[asyncio.AbstractEventLoop] = []
    rig.kube.secrets.pop((NS, "cred"))
    real_read = rig.kube.read_secret

    def read(namespace: str, name: str) -> dict[str, Any] | None:
        found = real_read(namespace, name)
        if name == "cred" and found is None:  # `kubectl apply -f dir/`: the Secret lands a moment later
            rig.kube.put_client_secret(NS, "cred", "s3cret")
            version = rig.kube.secrets[(NS, "cred")]["metadata"]["resourceVersion"]
            loop_holder[0].call_soon_threadsafe(rig.controller.secret_event, NS, "cred", version, False)
        return found

    rig.kube.read_secret = read  # type: ignore[method-assign]

    async def scenario() -> None:
        loop_holder.append(asyncio.get_running_loop())
        rig.add(gac("a", secret_spec(TENANT, str(uuid.uuid4()))))
        await until(lambda: is_ready(rig, "a"), what="Ready once the Secret appeared")
        await rig.controller.stop()

    run(scenario)


def test_requests_queued_for_a_slot_respect_a_breaker_that_opened_meanwhile() -> None:
    rig = Rig(token_concurrency=8)
    rig.tokens.failure = AcquisitionError(Reason.THROTTLED, "429", permanent=False, retry_after=60)
    app = str(uuid.uuid4())

    async def scenario() -> None:
        with closed(rig.tokens.gate):  # the first requests hang until every pass queued for a slot
            for i in range(20):  # one app, different secrets: no sharing, one breaker
                rig.kube.put_client_secret(NS, f"cred{i}", f"s{i}")
                rig.add(gac(f"c{i}", secret_spec(TENANT, app, secret=f"cred{i}")))
            await until(rig.tokens.entered.is_set, what="the first request in flight")
            await asyncio.sleep(0.3)
        await until(lambda: all(rig.ready(f"c{i}") for i in range(20)), what="every credential reported")
        assert rig.tokens.requests <= 3, f"{rig.tokens.requests} requests to a tenant that answered 429"
        await rig.controller.stop()

    run(scenario)


def test_one_broken_app_does_not_hold_back_a_healthy_app_of_the_same_tenant() -> None:
    rig = Rig()
    rig.tokens.failure = AcquisitionError(Reason.AUTHORITY_UNAVAILABLE, "503", permanent=False)

    async def scenario() -> None:
        for name in ("broken", "healthy"):
            rig.kube.objects.add((NS, name))
        await rig.reconciler.reconcile(Snapshot.of(gac("broken", secret_spec(TENANT, str(uuid.uuid4())))), Memory())
        rig.tokens.failure = None
        await rig.reconciler.reconcile(Snapshot.of(gac("healthy", secret_spec(TENANT, str(uuid.uuid4())))),
                                       Memory())
        assert is_ready(rig, "healthy"), rig.ready("healthy")

    run(scenario)


def test_a_tenant_probe_that_meets_a_broken_app_lets_the_next_credential_probe() -> None:
    """The soak's stuck tenant (CI, 2026-11-26): one app's 429 opened the tenant; once it closed, the probe that
    went was another app's, and that app answered 503 (its own fault). The 503 opened that app's breaker but left
    the tenant's probe marked in flight, so every other app of the tenant held off "waiting for one request to show
    it has recovered" until the probe counted as stale, 90 s later: tokens expired with the tenant answering."""
    rig = Rig()

    async def scenario() -> None:
        for name in ("throttled", "broken", "healthy"):
            rig.kube.objects.add((NS, name))

        async def reconcile(name: str) -> None:
            await rig.reconciler.reconcile(Snapshot.of(gac(name, secret_spec(TENANT, str(uuid.uuid4())))),
                                           Memory())

        rig.tokens.failure = AcquisitionError(Reason.THROTTLED, "429", permanent=False, retry_after=5)
        await reconcile("throttled")
        rig.clock.advance(10)  # the tenant's hold-off is over: the next request is its probe
        rig.tokens.failure = AcquisitionError(Reason.AUTHORITY_UNAVAILABLE, "503", permanent=False)
        await reconcile("broken")
        rig.tokens.failure = None
        rig.clock.advance(1)
        await reconcile("healthy")
        assert is_ready(rig, "healthy"), rig.ready("healthy")

    run(scenario)


def test_a_request_sent_before_the_tenant_opened_does_not_free_the_probe_of_another() -> None:
    """Review of 7e746f4: every request frees its probe marks when it ends; one sent before the tenant opened
    (so no probe) ending later with its own app's 503 freed the mark of the probe in flight, and a second probe
    went out beside it."""
    from graphcred.acquire.breaker import Breaker

    breaker, clock = Breaker(random.Random(0)), Clock()
    early, probe, waiting = object(), object(), object()
    tenant = "https://login/t"
    assert breaker.hold((tenant, f"{tenant} app a"), clock.now, early) is None  # nothing open yet
    breaker.failed(tenant, clock.now, Reason.THROTTLED, 5)  # another app's 429 opens the tenant
    clock.advance(10)
    assert breaker.hold((tenant, f"{tenant} app c"), clock.now, probe) is None  # the probe
    assert breaker.hold((tenant, f"{tenant} app d"), clock.now, waiting) is not None
    breaker.failed(f"{tenant} app a", clock.now, Reason.AUTHORITY_UNAVAILABLE, None)  # the early one: a 503
    breaker.abandoned((tenant, f"{tenant} app a"), early)
    hold = breaker.hold((tenant, f"{tenant} app d"), clock.now, waiting)
    assert hold is not None and "waiting for one request" in hold.message, hold
    breaker.abandoned((tenant, f"{tenant} app c"), probe)  # the probe ends without an answer: the next may go
    assert breaker.hold((tenant, f"{tenant} app d"), clock.now, waiting) is None


def test_one_request_at_a_time_never_waits_for_a_probe() -> None:
    """Seeded run of answers of every kind, one request at a time: with nothing in flight, no credential may hold
    off "waiting for one request" (a probe mark left behind by a request that ended)."""
    rng = random.Random(7)
    rig = Rig()
    tenants = [str(uuid.uuid4()) for _ in range(2)]
    apps = [(tenant, str(uuid.uuid4())) for tenant in tenants for _ in range(3)]
    answers: list[AcquisitionError | None] = [
        None, AcquisitionError(Reason.THROTTLED, "429", permanent=False, retry_after=3),
        AcquisitionError(Reason.AUTHORITY_UNAVAILABLE, "503", permanent=False),
        AcquisitionError(Reason.INVALID_CREDENTIAL, "AADSTS7000215", permanent=True)]

    async def scenario() -> None:
        for step in range(300):
            tenant, client_id = rng.choice(apps)
            name = f"c{step}"
            rig.kube.objects.add((NS, name))
            rig.tokens.failure = rng.choice(answers)
            await rig.reconciler.reconcile(Snapshot.of(gac(name, secret_spec(tenant, client_id))), Memory())
            cond = rig.ready(name)
            assert cond is not None and "waiting for one request" not in cond["message"], (step, cond)
            rig.clock.advance(rng.uniform(0, 20))

    run(scenario)


def test_after_an_outage_the_breaker_probes_at_least_every_30_s() -> None:
    from graphcred.acquire.breaker import Breaker

    breaker, clock = Breaker(random.Random(0)), Clock()
    for _ in range(30):  # a long outage: every probe fails
        assert breaker.hold(("t",), clock.now) is None
        breaker.failed("t", clock.now, Reason.AUTHORITY_UNAVAILABLE, None)
        hold = breaker.hold(("t",), clock.now)
        assert hold is not None and hold.seconds <= 32.0, hold
        clock.advance(hold.seconds)


def test_a_refresh_never_rewrites_the_token_already_in_the_secret() -> None:
    rig = Rig(lifetime=60)
    rig.clock.advance(0.5)  # tokens issued at .5 s: status times are whole seconds

    async def scenario() -> None:
        rig.add(gac("a", secret_spec(TENANT, str(uuid.uuid4()), refreshBeforeExpiry="55s")))
        await until(lambda: is_ready(rig, "a"), what="A Ready")
        first = rig.kube.token_in(NS, "a-token")
        rig.clock.advance(5.9)  # refresh due (status says 12:00:06), the shared token still inside the window
        rig.controller.secret_event(NS, "cred", rig.kube.touch(NS, "cred"), deleted=False)
        await until(lambda: rig.tokens.requests == 2, what="a new token request")
        await until(lambda: rig.kube.token_in(NS, "a-token") != first, what="a new token written")
        assert rig.kube.writes == 2
        await rig.controller.stop()

    run(scenario)


def test_a_renew_request_made_during_a_leader_change_is_served_by_the_new_leader() -> None:
    rig = Rig()

    async def scenario() -> None:
        body = rig.add(gac("a", secret_spec(TENANT, str(uuid.uuid4()))))
        await until(lambda: is_ready(rig, "a"), what="A Ready")
        await rig.controller.stop()
        # the old leader is gone; the user asks for a renewal; a new leader lists the object
        new = rig.successor(seed=1)
        new.controller.observe(rig.listed(body, {RENEW_ANNOTATION: "1"}))
        await until(lambda: new.tokens.requests == 1, what="the renew request served after the leader change")
        await until(lambda: rig.kube.statuses[(NS, "a")].get("lastRenewRequest") == "1", what="served, recorded")
        await new.controller.stop()
        # and a restart after that does not serve the same request again
        third = rig.successor(seed=2)
        third.controller.observe(rig.listed(body, {RENEW_ANNOTATION: "1"}))
        await asyncio.sleep(0.3)
        assert third.tokens.requests == 0
        await third.controller.stop()

    run(scenario)


def test_a_resumed_credential_reports_its_expiry_metric() -> None:
    rig = Rig()

    async def scenario() -> None:
        body = rig.add(gac("a", secret_spec(TENANT, str(uuid.uuid4()))))
        await until(lambda: is_ready(rig, "a"), what="A Ready")
        await rig.controller.stop()
        new = rig.successor(seed=1)
        new.controller.observe(rig.listed(body))
        await until(lambda: "graphcred_token_expiration_timestamp_seconds{" in new.metrics.exposition(),
                    what="the expiry series after a restart")
        assert new.tokens.requests == 0
        await new.controller.stop()

    run(scenario)


def test_a_certificate_valid_in_a_moment_is_tried_again_then_not_in_five_minutes() -> None:
    import base64 as b64
    import datetime as dt

    from graphcred_testbed.pki import self_signed

    rig = Rig()
    pair = self_signed("soon", not_before=rig.clock.now + dt.timedelta(seconds=20),
                       not_after=rig.clock.now + dt.timedelta(days=30))
    rig.kube.secrets[(NS, "cert")] = {"metadata": {"name": "cert", "namespace": NS, "resourceVersion": "7"},
                                      "data": {"tls.crt": b64.b64encode(pair.cert_pem).decode(),
                                               "tls.key": b64.b64encode(pair.key_pem).decode()}}
    spec = {"tenantId": TENANT, "clientId": str(uuid.uuid4()), "credential": {"certificate": {"name": "cert"}}}
    snap = Snapshot.of(gac("a", spec))
    rig.kube.objects.add((NS, "a"))

    async def scenario() -> None:
        delay = await rig.reconciler.reconcile(snap, Memory())
        assert (rig.ready("a") or {}).get("reason") == "InvalidCredential"
        assert delay is not None and 20 <= delay <= 40, f"next try in {delay} s; the certificate is valid in 20 s"

    run(scenario)


def test_a_token_secret_left_by_a_deleted_namesake_is_adopted_not_a_conflict() -> None:
    from graphcred.tokensecret.render import Owner, render

    rig = Rig()
    old = Owner("a", NS, str(uuid.uuid4()))  # deleted; the garbage collector has not got to its Secret yet
    rig.kube.create_secret(NS, render("a-token", old, "old-token", rig.clock.now))
    foreign = Owner("b", NS, str(uuid.uuid4()))
    foreign_body = render("b-token", foreign, "x", rig.clock.now)
    foreign_body["metadata"]["ownerReferences"][0]["kind"] = "Certificate"  # same name, another kind: not ours
    rig.kube.create_secret(NS, foreign_body)

    async def scenario() -> None:
        rig.add(gac("a", secret_spec(TENANT, str(uuid.uuid4()))))
        await until(lambda: is_ready(rig, "a"), what="Ready over the namesake's Secret")
        assert rig.kube.secrets[(NS, "a-token")]["metadata"]["ownerReferences"][0]["uid"] != old.uid
        rig.add(gac("b", secret_spec(TENANT, str(uuid.uuid4()))))
        await until(lambda: (rig.ready("b") or {}).get("reason") == "SecretConflict", what="b: a conflict")
        await rig.controller.stop()

    run(scenario)


def test_a_credential_waiting_for_its_refresh_holds_one_task() -> None:
    """Waiting for the refresh costs its worker's task only (asyncio.wait_for held a second task per credential,
    cancelled and replaced at every wake-up: at 10,000 credentials, 10,000 more)."""
    rig = Rig()

    async def scenario() -> None:
        for i in range(50):
            rig.add(gac(f"c{i}", secret_spec(TENANT, str(uuid.uuid4()))))
        await until(lambda: all(is_ready(rig, f"c{i}") for i in range(50)), what="all Ready")
        await asyncio.sleep(0.05)  # every worker back to waiting
        others = len(asyncio.all_tasks())
        assert others <= 50 + 5, f"{others} tasks for 50 waiting credentials"  # + the test and the rig's own
        await rig.controller.stop()

    run(scenario)


# --- renew requests and token requests per namespace are rate-limited -------------------------
def _renew(rig: Rig, body: dict[str, Any], value: str) -> None:
    rig.controller.observe({**body, "metadata": {**body["metadata"], "annotations": {RENEW_ANNOTATION: value}}})


def test_forty_renew_requests_in_a_row_send_at_most_three_token_requests() -> None:
    """Bed scenario L: 40 renew annotations gave 40 token requests in 7.7 s. Now a credential's renews are served
    at once up to three, then one every 30 s, and those arriving meanwhile join the one pending."""
    rig = Rig()

    async def scenario() -> None:
        body = rig.add(gac("a", secret_spec(TENANT, str(uuid.uuid4()))))
        await until(lambda: is_ready(rig, "a"), what="A Ready")
        for i in range(40):
            _renew(rig, body, f"r{i}")
            await asyncio.sleep(0.02)  # paced like a script patching the annotation in a loop
        await until(lambda: rig.status("a").get("lastRenewRequest", "").startswith("r"), what="a renew served")
        forced = rig.tokens.requests - 1
        print(f"token requests for 40 renews: {forced}")
        assert 1 <= forced <= 3, forced
        await rig.controller.stop()

    run(scenario)


def test_renews_beyond_the_budget_wait_and_the_newest_is_answered() -> None:
    """The CLI waits for status.lastRenewRequest to show its value: a renew held back by the budget is served
    later, not dropped, and answers every value that arrived meanwhile."""
    from graphcred.reconcile.slots import RequestBudget

    rig = Rig(renews=RequestBudget(burst=1, per_minute=120))  # one per 0.5 s

    async def scenario() -> None:
        body = rig.add(gac("a", secret_spec(TENANT, str(uuid.uuid4()))))
        await until(lambda: is_ready(rig, "a"), what="A Ready")
        for i in range(10):
            _renew(rig, body, f"r{i}")
            await asyncio.sleep(0.01)
        await until(lambda: rig.status("a").get("lastRenewRequest") == "r9", what="the newest renew answered")
        assert rig.tokens.requests - 1 <= 2, rig.tokens.requests
        await rig.controller.stop()

    run(scenario)


def test_a_namespaces_budget_counts_its_credentials_and_never_holds_another_namespace() -> None:
    """The reconciler charges each request to its credential (`who`): 25 new credentials of one namespace each
    bring their own request (a namespace of many credentials converges as fast as before the budget), and another
    namespace never waits for this one's budget. Pacing of a few credentials asking in a loop: test_fair_slots."""
    from graphcred.reconcile.slots import RequestBudget

    rig = Rig(budget=RequestBudget(burst=5, per_minute=600))  # then one per 0.1 s
    sent: list[tuple[str, float]] = []
    acquire = rig.tokens.acquire

    def recorded(spec: Any, scopes: Any, material: Any) -> Any:
        sent.append((spec.client_id, time.monotonic()))
        return acquire(spec, scopes, material)

    rig.tokens.acquire = recorded  # type: ignore[method-assign]

    async def scenario() -> None:
        for i in range(25):
            rig.kube.put_client_secret(NS, f"cred{i}", f"s{i}")
            rig.add(gac(f"c{i}", secret_spec(TENANT, str(uuid.uuid4()), secret=f"cred{i}")))
        await until(lambda: len(sent) >= 5, what="the burst")
        rig.kube.objects.add(("other", "b"))
        rig.kube.put_client_secret("other", "cred", "b")
        other = str(uuid.uuid4())
        rig.controller.observe(gac("b", secret_spec(TENANT, other), namespace="other"))
        await until(lambda: all(is_ready(rig, f"c{i}") for i in range(25)), timeout=10, what="all Ready")
        ours = [t for client, t in sent if client != other]
        spread = ours[-1] - ours[0]
        print(f"25 requests of one namespace spread over {spread:.2f} s")
        assert len(ours) == 25 and spread < (25 - 5) * 0.1 * 0.8, \
            f"25 new credentials paced over {spread:.2f} s as if they were five asking again"
        theirs = [t for client, t in sent if client == other]
        assert theirs and theirs[0] - ours[0] < 1.0, "another namespace waited for this one's budget"
        await rig.controller.stop()

    run(scenario)


def _series(rig: Rig, metric: str, name: str) -> float | None:
    """The value of `metric` for credential `name` in the exposition, None without a series."""
    prefix = f'{metric}{{name="{name}",namespace="{NS}"}} '
    for line in rig.metrics.exposition().splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return None


def test_the_failure_series_counts_while_status_patches_fail() -> None:
    """Review of the scrape-time series: made from the status as last written, the failures series stopped counting
    while status patches failed (a 403 on /status, a webhook refusing them), so GraphcredRefreshFailing stayed
    silent. It follows what each pass reported, written or not."""
    from graphcred.kube.errors import error

    rig = Rig(lifetime=60)

    def forbidden(namespace: str, name: str, status: dict[str, Any]) -> None:
        raise error("patch GraphAppCredential status", 403, "Forbidden")

    async def scenario() -> None:
        rig.add(gac("a", secret_spec(TENANT, str(uuid.uuid4()))))
        await until(lambda: is_ready(rig, "a"), what="Ready")
        assert _series(rig, "graphcred_token_expiration_timestamp_seconds", "a") is not None
        assert _series(rig, "graphcred_consecutive_failures", "a") == 0
        rig.kube.patch_status = forbidden  # type: ignore[method-assign]
        rig.tokens.failure = AcquisitionError(Reason.AUTHORITY_UNAVAILABLE, "down", permanent=False)
        rig.clock.advance(31)  # past the refresh at half-life
        rig.controller._workers[(NS, "a")].wake.set()
        await until(lambda: (_series(rig, "graphcred_consecutive_failures", "a") or 0) >= 1,
                    what="a failure counted though its status patch failed")
        await rig.controller.stop()

    run(scenario)
