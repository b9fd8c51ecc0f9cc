"""A ServiceAccount change wakes the workload-identity credentials that name it, as a credential Secret change
wakes its readers ("its annotation added or removed wakes the credential"), and nobody else.

The real Controller and Reconciler run in the Rig of tests/unit/harness.py. The reconciler's side of the contract (a
pass records the ServiceAccount's resourceVersion in `Memory.credential_version`, "" when it is missing) is played
by `SaPasses` for workload-identity objects, so that these tests pin down the controller alone; passes of other
objects are the real ones."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from graphcred.reconcile.memory import Memory
from graphcred.reconcile.snapshot import Snapshot

from .fakes import gac, secret_spec
from .harness import NS, TENANT, Rig, is_ready, run, until

SETTLE = 0.3  # seconds in which a wrongly woken worker would have run its pass (a pass takes milliseconds)


def wi_spec(service_account: str, client_id: str | None = None) -> dict[str, Any]:
    return {"tenantId": TENANT, "clientId": client_id or str(uuid.uuid4()),
            "credential": {"workloadIdentity": {"serviceAccountName": service_account}}}


class SaPasses:
    """Counts every object's passes; for workload-identity objects it stands in for the reconciler's pass: reads
    `versions` (namespace, ServiceAccount) -> resourceVersion, records it in memory, waits for a change."""

    def __init__(self, rig: Rig) -> None:
        self.versions: dict[tuple[str, str], str] = {}
        self.passes: dict[str, int] = {}
        self.during_pass: list[Any] = []  # callables run inside the next workload-identity pass
        self._real = rig.reconciler.reconcile
        rig.reconciler.reconcile = self.reconcile  # type: ignore[method-assign]

    async def reconcile(self, snap: Snapshot, mem: Memory) -> float | None:
        self.passes[snap.name] = self.passes.get(snap.name, 0) + 1
        identity = (snap.spec.get("credential") or {}).get("workloadIdentity")
        if identity is None:
            return await self._real(snap, mem)
        read = self.versions.get((snap.namespace, identity["serviceAccountName"]), "")
        while self.during_pass:  # after the read, before the pass records what it read
            self.during_pass.pop(0)()
        mem.credential.version = read
        return None

    def put(self, name: str, version: str, namespace: str = NS) -> str:
        self.versions[(namespace, name)] = version
        return version

    def counts(self, *names: str) -> tuple[int, ...]:
        return tuple(self.passes.get(n, 0) for n in names)


async def settle() -> None:
    await asyncio.sleep(SETTLE)


def test_a_service_account_event_wakes_only_the_credentials_that_name_it() -> None:
    rig = Rig()
    sa = SaPasses(rig)
    sa.put("reader", "200")
    sa.put("other", "201")

    async def scenario() -> None:
        for name, spec in (("a", wi_spec("reader")), ("b", wi_spec("reader")), ("c", wi_spec("other")),
                           ("d", secret_spec(TENANT, str(uuid.uuid4())))):
            rig.add(gac(name, spec))
        await until(lambda: sa.counts("a", "b", "c") == (1, 1, 1) and is_ready(rig, "d"), what="first passes")
        await settle()
        assert sa.counts("a", "b", "c", "d") == (1, 1, 1, 1)

        # the annotation added: a new resourceVersion of "reader"
        rig.controller.service_account_event(NS, "reader", sa.put("reader", "300"), False)
        await until(lambda: sa.counts("a", "b") == (2, 2), what="both readers of the ServiceAccount woken")
        await settle()
        assert sa.counts("a", "b", "c", "d") == (2, 2, 1, 1), "only the credentials naming the ServiceAccount"
        await rig.controller.stop()

    run(scenario)


def test_an_unrelated_service_account_event_wakes_nobody() -> None:
    rig = Rig()
    sa = SaPasses(rig)
    sa.put("reader", "200")

    async def scenario() -> None:
        rig.add(gac("a", wi_spec("reader")))
        rig.add(gac("d", secret_spec(TENANT, str(uuid.uuid4()))))  # reads the Secret "cred"
        await until(lambda: sa.counts("a") == (1,) and is_ready(rig, "d"), what="first passes")
        for namespace, name in (("ns", "stranger"),  # nobody names it
                                ("elsewhere", "reader"),  # the same name in another namespace
                                ("ns", "cred"),  # a ServiceAccount named like the credential Secret
                                ("ns", "d-token")):  # ... and like the token Secret
            rig.controller.service_account_event(namespace, name, "999", False)
            rig.controller.service_account_event(namespace, name, "1000", True)
        await settle()
        assert sa.counts("a", "d") == (1, 1)
        assert rig.tokens.requests == 1
        await rig.controller.stop()

    run(scenario)


def test_only_a_newer_version_deletion_or_creation_wakes() -> None:
    """The watch's first list reports every ServiceAccount at the version a pass already read: no extra pass.
    Deleting it wakes the credential (to report it missing); creating it again wakes it (it was missing)."""
    rig = Rig()
    sa = SaPasses(rig)
    sa.put("reader", "200")

    async def scenario() -> None:
        rig.add(gac("a", wi_spec("reader")))
        await until(lambda: sa.counts("a") == (1,), what="the first pass")
        rig.controller.service_account_event(NS, "reader", "200", False)  # the version already read
        rig.controller.service_account_event(NS, "reader", "150", False)  # an older one (a late event)
        await settle()
        assert sa.counts("a") == (1,)

        del sa.versions[(NS, "reader")]
        rig.controller.service_account_event(NS, "reader", "400", True)
        await until(lambda: sa.counts("a") == (2,), what="the deletion noticed")

        rig.controller.service_account_event(NS, "reader", sa.put("reader", "401"), False)
        await until(lambda: sa.counts("a") == (3,), what="the re-created ServiceAccount noticed")
        await settle()
        assert sa.counts("a") == (3,)
        await rig.controller.stop()

    run(scenario)


def test_a_service_account_change_during_a_pass_runs_another() -> None:
    """Annotated a moment after the credential was created: the first pass read the old version, the event came
    before the pass recorded it (so it could not wake it). It must not wait for the next refresh (there is none:
    no token yet)."""
    rig = Rig()
    sa = SaPasses(rig)
    sa.put("reader", "200")

    def annotate_now() -> None:
        rig.controller.service_account_event(NS, "reader", sa.put("reader", "201"), False)  # the pass read "200"

    sa.during_pass.append(annotate_now)

    async def scenario() -> None:
        rig.add(gac("a", wi_spec("reader")))
        await until(lambda: sa.counts("a") == (2,), what="a second pass for the change seen during the first")
        await settle()
        assert sa.counts("a") == (2,)
        await rig.controller.stop()

    run(scenario)


def test_a_spec_naming_another_service_account_moves_the_index() -> None:
    rig = Rig()
    sa = SaPasses(rig)
    sa.put("reader", "200")
    sa.put("other", "300")

    async def scenario() -> None:
        body = rig.add(gac("a", wi_spec("reader")))
        await until(lambda: sa.counts("a") == (1,), what="the first pass")
        rig.controller.observe({**body, "metadata": {**body["metadata"], "generation": 2},
                                "spec": wi_spec("other")})
        await until(lambda: sa.counts("a") == (2,), what="the pass for generation 2")
        rig.controller.service_account_event(NS, "reader", "500", False)
        await settle()
        assert sa.counts("a") == (2,), "the ServiceAccount it no longer names"
        rig.controller.service_account_event(NS, "other", sa.put("other", "501"), False)
        await until(lambda: sa.counts("a") == (3,), what="the ServiceAccount it names now")

        rig.controller.forget(NS, "a")
        rig.controller.service_account_event(NS, "other", "502", False)  # no worker, no index entry: no error
        assert not rig.controller.dependents.account_readers
        await rig.controller.stop()

    run(scenario)
