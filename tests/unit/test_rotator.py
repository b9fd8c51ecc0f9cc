"""The certificate rotator's orchestration on an in-memory rig (a Secret store with resourceVersions and Conflicts, a
Graph that counts its calls, token requests that succeed or are refused): the review's findings, each a test that
failed before its fix. End-to-end behaviour is on the bed (tests/e2e/test_certificate_rotation.py)."""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import itertools
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes

from graphcred.acquire import keygen
from graphcred.acquire.jwt import TokenClaims
from graphcred.acquire.tokens import AcquisitionError, Token
from graphcred.api.keys import NEXT_KEY_ID_ANNOTATION, ROTATION_ENABLED, ROTATION_LABEL
from graphcred.api.model import AppIdentity, CertificateRotation, Reason
from graphcred.kube.errors import Conflict
from graphcred.reconcile.calls import KubeCalls
from graphcred.reconcile.rotator import Rotator

NOW = dt.datetime.now(dt.UTC)
OBJECT_ID = "11111111-2222-3333-4444-555555555555"
CLIENT_ID = "aaaaaaaa-0000-0000-0000-000000000001"
KEY = ("ns", "cert")
# valid for 2 minutes, renewed from 110 s before it expires: due at once
PAIR = keygen.generate_key("graphcred test", dt.timedelta(minutes=2), NOW)


def _identity() -> AppIdentity:
    return AppIdentity.model_validate({"tenantId": "contoso.onmicrosoft.com", "clientId": CLIENT_ID,
                                       "credential": {"certificate": {"name": "cert"}}})


def _rotation(**fields: Any) -> CertificateRotation:
    return CertificateRotation.model_validate({"objectId": OBJECT_ID, "validity": "2m", "renewBefore": "110s",
                                               **fields})


class Store:
    """Secrets with resourceVersions: a merge patch carrying a stale one is a Conflict; `conflicts` more patches
    conflict whatever they carry (someone else writing the Secret all the time)."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 1
        self.conflicts = 0
        self.patches: list[dict[str, Any]] = []
        self.created: list[tuple[str, str]] = []

    def put(self, name: str, cert_pem: bytes, key_pem: bytes) -> None:
        self.secrets[("ns", name)] = {
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": str(self.version),
                         "labels": {ROTATION_LABEL: ROTATION_ENABLED}, "annotations": {}},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": base64.b64encode(cert_pem).decode(), "tls.key": base64.b64encode(key_pem).decode()}}

    def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.secrets.get((namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def patch_secret(self, namespace: str, name: str, patch: dict[str, Any]) -> str:
        secret = self.secrets[(namespace, name)]
        if self.conflicts > 0 or patch["metadata"]["resourceVersion"] != secret["metadata"]["resourceVersion"]:
            self.conflicts = max(0, self.conflicts - 1)
            self.version += 1
            secret["metadata"]["resourceVersion"] = str(self.version)  # someone else's write
            raise Conflict("patch Secret", 409, "Conflict")
        self.patches.append(patch)
        for field, values in (("annotations", patch["metadata"].get("annotations")), ("data", patch.get("data"))):
            target = secret["metadata"]["annotations"] if field == "annotations" else secret["data"]
            for k, v in (values or {}).items():
                if v is None:
                    target.pop(k, None)
                else:
                    target[k] = v
        self.version += 1
        secret["metadata"]["resourceVersion"] = str(self.version)
        return str(self.version)

    def create_secret(self, namespace: str, body: dict[str, Any]) -> str:
        key = (namespace, body["metadata"]["name"])
        if key in self.secrets:
            raise Conflict("create Secret", 409, "AlreadyExists")
        self.version += 1
        self.secrets[key] = {**copy.deepcopy(body), "metadata": {**copy.deepcopy(body["metadata"]),
                                                                "resourceVersion": str(self.version)}}
        self.created.append(key)
        return str(self.version)


class Graph:
    def __init__(self) -> None:
        self.added: list[str] = []
        self.removed: list[str] = []

    def add_key(self, url: str, token: str, object_id: str, der: bytes, proof: str, name: str) -> str:
        key_id = str(uuid.uuid4())
        self.added.append(key_id)
        return key_id

    def remove_key(self, url: str, token: str, object_id: str, key_id: str, proof: str) -> bool:
        self.removed.append(key_id)
        return True

    def find_key_id(self, url: str, token: str, object_id: str, thumbprint: str) -> str | None:
        raise ValueError("this app may not read itself")


class Tokens:
    def __init__(self) -> None:
        self.requests = 0
        self.refuse: set[str] = set()  # thumbprints Entra does not know

    def __call__(self, identity: AppIdentity, scopes: list[str], material: Any) -> Token:
        self.requests += 1
        if material.leaf.fingerprint(hashes.SHA1()).hex().upper() in self.refuse:
            raise AcquisitionError(Reason.UNAUTHORIZED, "refused", permanent=True, code=700027)
        return Token("t", NOW + dt.timedelta(hours=1), NOW, TokenClaims(None, None, None, (), None))


class Rig:
    def __init__(self) -> None:
        self.store, self.graph, self.tokens = Store(), Graph(), Tokens()
        self.changes: list[tuple[str, str]] = []
        self.history: list[Any] = []  # every outcome the passes were told of
        self.rotator = Rotator(KubeCalls(self.store), self.tokens, self.graph,  # type: ignore[arg-type]
                               on_change=self.told)
        self.store.put("cert", PAIR.cert_pem, PAIR.key_pem)

    def told(self, owner: tuple[str, str]) -> None:
        self.changes.append(owner)
        self.history.append(self.outcomes())

    def outcomes(self) -> Any:
        view = self.rotator.view(KEY)
        return view.outcome if view is not None else None


def _run(scenario: Callable[[Rig], Coroutine[Any, Any, None]]) -> Rig:
    rig = Rig()

    async def main() -> None:
        try:
            await scenario(rig)
        finally:
            await rig.rotator.stop()

    asyncio.run(main())
    return rig


async def _until(probe: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := probe()):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.01)
    return value


def _accepted(rig: Rig) -> None:
    rig.rotator.token_outcome(KEY, PAIR.thumbprint, accepted=True)


def test_credentials_sharing_a_secret_with_different_rotations_are_refused_not_looped() -> None:
    """Two credentials name one Secret with different renewBefore: each pass overwrote the job's spec, woke it, and
    its news woke the other's pass: hundreds of status writes a minute. Now: SpecsDisagree, and quiet."""
    async def scenario(rig: Rig) -> None:
        specs = {("ns", "a"): _rotation(), ("ns", "b"): _rotation(renewBefore="100s")}

        def on_change(owner: tuple[str, str]) -> None:
            rig.told(owner)  # a pass of `owner` runs and tracks its own spec again
            asyncio.get_running_loop().call_later(0.01, rig.rotator.track, KEY, owner, _identity(), specs[owner],
                                                  False)

        rig.rotator.on_change = on_change
        for owner, rotation in specs.items():
            rig.rotator.track(KEY, owner, _identity(), rotation, False)
        await _until(lambda: (o := rig.outcomes()) is not None and o.reason == "SpecsDisagree")
        told = len(rig.changes)
        await asyncio.sleep(0.5)  # the passes it woke have run and tracked their specs again: nothing more
        assert len(rig.changes) == told, f"{len(rig.changes) - told} more wake-ups"
        assert rig.graph.added == []

    _run(scenario)


def test_a_keyid_addkey_answered_is_recorded_even_if_the_first_write_of_it_conflicts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """addKey answered, then the write recording its keyId met a newer Secret: the retry sent addKey again (a
    duplicate Graph refuses) and, unable to read the app, recorded the id as unknown: an orphan key later."""
    async def scenario(rig: Rig) -> None:
        original = rig.store.patch_secret

        def conflict_once_after_add(namespace: str, name: str, patch: dict[str, Any]) -> str:
            if (patch["metadata"].get("annotations") or {}).get(NEXT_KEY_ID_ANNOTATION) and not getattr(
                    conflict_once_after_add, "done", False):
                conflict_once_after_add.done = True  # type: ignore[attr-defined]
                rig.store.conflicts = 1
            return original(namespace, name, patch)

        monkeypatch.setattr(rig.store, "patch_secret", conflict_once_after_add)
        rig.rotator.track(KEY, ("ns", "a"), _identity(), _rotation(), False)
        _accepted(rig)
        await _until(lambda: _switched(rig), timeout=10)
        assert len(rig.graph.added) == 1, "addKey was sent again"
        notes = rig.store.secrets[KEY]["metadata"]["annotations"]
        assert notes["graphcred.io/key-id"] == rig.graph.added[0], "the keyId Graph answered was not recorded"

    _run(scenario)


def test_a_secret_changed_all_the_time_costs_one_key_pair_and_then_backs_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each conflicting write of the next pair generated a new RSA key at once: a tenant touching their own
    Secret could keep a core busy and hold the one key generation slot every tenant shares."""
    made: list[int] = []
    generate = keygen.generate_key

    def counted(*args: Any, **kwargs: Any) -> keygen.GeneratedKey:
        made.append(1)
        return generate(*args, **kwargs)

    monkeypatch.setattr(keygen, "generate_key", counted)

    async def scenario(rig: Rig) -> None:
        rig.store.conflicts = 1000
        rig.rotator.track(KEY, ("ns", "a"), _identity(), _rotation(), False)
        _accepted(rig)
        outcome = await _until(lambda: (o := rig.outcomes()) is not None and "keeps changing" in o.message and o)
        assert not outcome.ok
        assert len(made) == 1, f"{len(made)} key pairs generated"

    _run(scenario)


def test_a_renamed_certificate_secret_is_no_longer_rotated_for_the_credential() -> None:
    async def scenario(rig: Rig) -> None:
        rig.store.put("other", PAIR.cert_pem, PAIR.key_pem)
        rig.rotator.track(KEY, ("ns", "a"), _identity(), _rotation(), False)
        rig.rotator.track(("ns", "other"), ("ns", "a"), _identity(), _rotation(), False)
        assert rig.rotator.view(KEY) is None and KEY not in rig.rotator._jobs

    _run(scenario)


def test_after_a_restart_the_rotator_asks_entra_itself_before_calling_a_due_certificate_unregistered() -> None:
    """No pass had requested a token since the restart (the token in the Secret was still valid): the due
    certificate was reported NotRegistered (a Warning Event, the alert) until the next refresh."""
    async def scenario(rig: Rig) -> None:
        rig.rotator.track(KEY, ("ns", "a"), _identity(), _rotation(), False)  # no token_outcome: a fresh process
        await _until(lambda: _switched(rig), timeout=10)
        reasons = [o.reason for o in rig.history if o is not None]
        assert "NotRegistered" not in reasons, reasons
        assert rig.tokens.requests >= 1

    _run(scenario)


def test_a_failing_step_does_not_flip_its_condition_on_every_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each retry of a failing addKey first reported "Renewing" (True), then the failure (False): a Warning Event
    and a new transition time per retry, the alert's `for` restarted."""
    from graphcred.acquire.graphkeys import KeyCallFailed

    async def scenario(rig: Rig) -> None:
        attempts: list[int] = []

        def refused(*args: Any) -> str:
            attempts.append(1)
            raise KeyCallFailed("addKey", 503, "serviceNotAvailable", "down", transient=True, retry_after=0.05)

        monkeypatch.setattr(rig.graph, "add_key", refused)
        monkeypatch.setattr("graphcred.reconcile.rotator.FIRST_RETRY", 0.05)
        monkeypatch.setattr("graphcred.reconcile.rotator.LAST_RETRY", 0.05)
        rig.rotator.track(KEY, ("ns", "a"), _identity(), _rotation(), False)
        _accepted(rig)
        await _until(lambda: len(attempts) >= 4, timeout=20)
        oks = [o.ok for o in rig.history if o is not None]
        flips = [b for a, b in itertools.pairwise(oks) if a != b]
        assert flips.count(False) == 1 and True not in flips, f"the condition flipped: {oks}"

    _run(scenario)



def _switched(rig: Rig) -> bool:
    return "graphcred.io/renewed-at" in rig.store.secrets[KEY]["metadata"]["annotations"]


def test_a_missing_certificate_secret_is_created_by_its_rotation_task_not_by_a_pass() -> None:
    """The pass generated the key pair itself (behind the one key generation slot every tenant shares), holding a
    pass slot meanwhile: a tenant's many missing Secrets delayed every tenant's refreshes."""
    async def scenario(rig: Rig) -> None:
        del rig.store.secrets[KEY]
        rig.rotator.track(KEY, ("ns", "a"), _identity(), _rotation(), False)  # all a pass does
        await _until(lambda: rig.store.created, timeout=10)
        created = rig.store.secrets[KEY]
        assert created["type"] == "kubernetes.io/tls"
        assert created["metadata"]["labels"][ROTATION_LABEL] == ROTATION_ENABLED
        assert {"tls.crt", "tls.key"} <= set(created["data"])

    _run(scenario)


def test_a_removal_that_keeps_failing_gives_way_to_renewing_a_due_certificate(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """removeKey of the previous key failing for good (the record names a key Graph will not remove) blocked every
    later step: the current certificate, due itself, was never renewed and expired."""
    from graphcred.acquire.graphkeys import KeyCallFailed

    async def scenario(rig: Rig) -> None:
        def refused(*args: Any) -> bool:
            raise KeyCallFailed("removeKey", 403, "Authorization_RequestDenied", "no", transient=False)

        monkeypatch.setattr(rig.graph, "remove_key", refused)
        monkeypatch.setattr("graphcred.reconcile.rotator.FIRST_RETRY", 0.05)
        notes = rig.store.secrets[KEY]["metadata"]["annotations"]
        notes.update({"graphcred.io/previous-key-id": str(uuid.uuid4()), "graphcred.io/previous-thumbprint": "AB" * 20,
                      "graphcred.io/renewed-at": "2026-01-01T00:00:00Z"})  # long ago: no grace left
        rig.rotator.track(KEY, ("ns", "a"), _identity(), _rotation(), False)
        _accepted(rig)
        await _until(lambda: "next.crt" in rig.store.secrets[KEY]["data"], timeout=10)
        assert "graphcred.io/previous-key-id" not in rig.store.secrets[KEY]["metadata"]["annotations"]

    _run(scenario)
