"""Throttling is held where it was caused: a 429 holds its app; the Entra tenant is held only when
Entra says the tenant is throttled, or apps of several namespaces are throttled within a minute."""

from __future__ import annotations

import random
import uuid

from graphcred.acquire.breaker import Breaker
from graphcred.acquire.tokens import AcquisitionError, classify_error_response
from graphcred.api.model import Reason
from graphcred.reconcile.memory import Memory
from graphcred.reconcile.snapshot import Snapshot

from .fakes import Clock, gac, secret_spec
from .harness import Rig, run

TENANT = "https://login/t"


def _app(name: str) -> str:
    return f"{TENANT} app {name}"


def test_one_apps_429_holds_that_app_not_the_tenant() -> None:
    breaker, clock = Breaker(random.Random(0)), Clock()
    assert not breaker.throttled(TENANT, _app("spammed"), "tenant-a", clock.now, 300)
    assert breaker.hold((TENANT, _app("spammed")), clock.now) is not None
    assert breaker.hold((TENANT, _app("other")), clock.now) is None


def test_the_tenant_is_held_when_apps_of_several_namespaces_are_throttled_within_a_minute() -> None:
    breaker, clock = Breaker(random.Random(0)), Clock()
    for app in ("a1", "a2", "a3", "a4"):  # one namespace's apps alone: never the tenant
        assert not breaker.throttled(TENANT, _app(app), "tenant-a", clock.now, 300)
    assert breaker.hold((TENANT, _app("b1")), clock.now) is None
    clock.advance(61)  # throttling a minute old no longer counts
    assert not breaker.throttled(TENANT, _app("b1"), "tenant-b", clock.now, 300)
    assert not breaker.throttled(TENANT, _app("a1"), "tenant-a", clock.now, 300)
    assert breaker.throttled(TENANT, _app("c1"), "tenant-c", clock.now, 300)
    hold = breaker.hold((TENANT, _app("d1")), clock.now)
    assert hold is not None and hold.reason == Reason.THROTTLED and hold.seconds >= 299


def test_entra_saying_the_tenant_is_throttled_holds_the_tenant() -> None:
    error = classify_error_response({"error": "temporarily_unavailable", "error_codes": [90055]}, 429, 120)
    assert error.reason == Reason.THROTTLED and error.code == 90055
    rig = Rig()
    tenant = str(uuid.uuid4())

    async def scenario() -> None:
        for name in ("first", "second"):
            rig.kube.objects.add(("ns", name))
            rig.kube.put_client_secret("ns", f"cred-{name}", name)
        rig.tokens.failure = error
        await rig.reconciler.reconcile(Snapshot.of(gac("first", secret_spec(tenant, str(uuid.uuid4()),
                                                                            "cred-first"))), Memory())
        rig.tokens.failure = None
        await rig.reconciler.reconcile(Snapshot.of(gac("second", secret_spec(tenant, str(uuid.uuid4()),
                                                                             "cred-second"))), Memory())
        assert rig.tokens.requests == 1 and (rig.ready("second") or {}).get("reason") == "Throttled"

    run(scenario)


def test_a_namespaces_throttled_app_leaves_another_namespaces_app_of_the_tenant_alone() -> None:
    """Through the reconciler: tenant-a's app answered 429 with Retry-After 300; tenant-b's app of the same Entra
    tenant still gets its token at once (before: held 300 s, no request sent)."""
    rig = Rig()
    tenant = str(uuid.uuid4())

    async def scenario() -> None:
        rig.kube.objects.update({("tenant-a", "spammed"), ("tenant-b", "victim")})
        rig.kube.put_client_secret("tenant-a", "cred", "a")
        rig.kube.put_client_secret("tenant-b", "cred", "b")
        rig.tokens.failure = AcquisitionError(Reason.THROTTLED, "429", permanent=False, retry_after=300)
        await rig.reconciler.reconcile(Snapshot.of(gac("spammed", secret_spec(tenant, str(uuid.uuid4())),
                                                       namespace="tenant-a")), Memory())
        rig.tokens.failure = None
        await rig.reconciler.reconcile(Snapshot.of(gac("victim", secret_spec(tenant, str(uuid.uuid4())),
                                                       namespace="tenant-b")), Memory())
        assert rig.tokens.requests == 2, "the other namespace's app was held by the tenant's breaker"
        cond = rig.kube.ready("tenant-b", "victim")
        assert cond is not None and cond["status"] == "True", cond

    run(scenario)
