"""The soak's rotating certificates, their pure parts (testbed/graphcred_testbed/soak/rotating.py and
rotationcheck.py): the invariants on made-up states of an app's keys and its certificate Secret, the figures read
from Graph's key log, and the seeded plan of Graph failures."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from graphcred.api.keys import (
    KEY_ID_ANNOTATION,
    NEXT_KEY_ID_ANNOTATION,
    PREVIOUS_KEY_ID_ANNOTATION,
    PREVIOUS_THUMBPRINT_ANNOTATION,
)
from graphcred_testbed.graph import KeyCall
from graphcred_testbed.issuer import Issuer, sha1_hex
from graphcred_testbed.pki import KeyPair, self_signed
from graphcred_testbed.soak import SoakConfig
from graphcred_testbed.soak.rotating import (
    ROTATION_FAULTS,
    build_rotating,
    plan_rotation,
    renewals,
    rotation_figures,
    rotation_rng,
)
from graphcred_testbed.soak.rotationcheck import EntraKey, coverage, held, orphans, overdue, unknown

NOW = 10_000.0


@pytest.fixture(scope="module")
def pairs() -> list[KeyPair]:
    return [self_signed(f"rot-{i}") for i in range(3)]


def _secret(cur: KeyPair | None, nxt: KeyPair | None = None, **notes: str) -> dict[str, Any]:
    data = {}
    if cur is not None:
        data["tls.crt"] = base64.b64encode(cur.cert_pem).decode()
    if nxt is not None:
        data["next.crt"] = base64.b64encode(nxt.cert_pem).decode()
    return {"metadata": {"annotations": notes}, "data": data}


def _key(pair: KeyPair, *, usable_from: float = NOW - 60, removed_at: float | None = None,
         not_after: float = NOW + 120, key_id: str = "k") -> EntraKey:
    return EntraKey(key_id, sha1_hex(pair.cert), usable_from, not_after, removed_at)


def test_the_secret_holds_its_current_and_its_next_certificate(pairs: list[KeyPair]) -> None:
    a, b, _ = pairs
    assert held(_secret(a)) == {sha1_hex(a.cert)}
    assert held(_secret(a, b)) == {sha1_hex(a.cert), sha1_hex(b.cert)}
    assert held({"data": {"tls.crt": "not base64 !"}}) == set()
    assert held({}) == set()


def test_an_app_with_a_valid_key_graphcred_holds_is_covered(pairs: list[KeyPair]) -> None:
    a, b, _ = pairs
    assert coverage([_key(a)], held(_secret(a)), NOW) is None
    # mid-rotation: the old key already removed, the next one (in next.crt) valid
    assert coverage([_key(a, removed_at=NOW - 1), _key(b)], held(_secret(a, b)), NOW) is None


@pytest.mark.parametrize(("case", "expected"), [
    ("removed", "none valid in Entra"),
    ("replicating", "replicating for 3.0 s more"),
    ("expired", "expired 5 s ago"),
    ("someone else's", "the app's other current keys: 1"),
])
def test_an_app_without_a_valid_key_graphcred_holds_is_not(pairs: list[KeyPair], case: str, expected: str) -> None:
    a, b, _ = pairs
    keys = {"removed": [_key(a, removed_at=NOW - 1)],
            "replicating": [_key(a, usable_from=NOW + 3)],
            "expired": [_key(a, not_after=NOW - 5)],
            "someone else's": [_key(b)]}[case]
    why = coverage(keys, held(_secret(a)), NOW)
    assert why is not None and expected in why


def test_the_grace_counts_from_the_first_poll_that_saw_it() -> None:
    assert not overdue(None, NOW, 10)
    assert not overdue(NOW - 10, NOW, 10)
    assert overdue(NOW - 10.5, NOW, 10)


def test_keys_recorded_unknown_are_read_from_every_annotation(pairs: list[KeyPair]) -> None:
    a, b, c = pairs
    assert unknown(_secret(a, b)) == set()
    assert unknown(_secret(a, b, **{KEY_ID_ANNOTATION: "unknown"})) == {sha1_hex(a.cert)}
    assert unknown(_secret(a, b, **{NEXT_KEY_ID_ANNOTATION: "unknown"})) == {sha1_hex(b.cert)}
    previous = {PREVIOUS_KEY_ID_ANNOTATION: "unknown", PREVIOUS_THUMBPRINT_ANNOTATION: sha1_hex(c.cert)}
    assert unknown(_secret(a, **previous)) == {sha1_hex(c.cert)}
    # a keyId that is known is no exception
    assert unknown(_secret(a, **{KEY_ID_ANNOTATION: "0b0c6f04-8f44-4a3c-9d9f-1f2b3c4d5e6f"})) == set()


def test_an_orphan_is_a_current_key_the_secret_does_not_hold_unless_recorded_unknown(pairs: list[KeyPair]) -> None:
    a, b, c = pairs
    keys = [_key(a, key_id="old", removed_at=NOW - 30), _key(b, key_id="cur"), _key(c, key_id="left")]
    assert [k.key_id for k in orphans(keys, held(_secret(b)), set())] == ["left"]
    assert orphans(keys, held(_secret(b)), {sha1_hex(c.cert)}) == []
    assert orphans(keys, held(_secret(b, c)), set()) == [], "the next key, mid-rotation, is held"
    assert [k.key_id for k in orphans(keys, set(), set())] == ["cur", "left"]


def _call(t: float, op: str, status: int, outcome: str, app: str = "app", cert: str | None = None) -> KeyCall:
    return KeyCall(time=t, op=op, app_id=app, object_id=None, caller=app, key_id=None, thumbprint=cert,
                   proof_thumbprint=None, status=status, outcome=outcome)


def test_a_renewal_is_timed_from_its_first_add_key_to_the_removal_and_keyless_rotations_counted() -> None:
    calls = [
        _call(100, "addKey", 503, "serviceNotAvailable: injected by fail_next('addKey', 503)"),  # body unread
        _call(105, "addKey", 200, "added", cert="B"),
        _call(112, "removeKey", 204, "removed"),  # 12 s, the failed attempt included
        _call(160, "addKey", 503, "added, answered 503 (fail_next)", cert="C"),  # the answer lost
        _call(165, "addKey", 400, "Request_BadRequest: the application already has this certificate", cert="C"),
        _call(230, "addKey", 200, "added", cert="D"),  # C's rotation removed nothing: left on the app
        _call(236, "removeKey", 503, "removed, answered 503 (fail_next)"),  # removed all the same: 6 s
        _call(241, "removeKey", 404, "Request_ResourceNotFound: no current key has this keyId"),
    ]
    durations, unfinished = renewals(calls)
    assert durations == [12, 6]
    assert unfinished == 1


def test_the_figures_count_rotations_per_secret_and_the_failures_injected() -> None:
    issuer = Issuer("https://127.0.0.1:1")
    cfg = SoakConfig(rotating_apps=3)
    world = build_rotating(cfg, rotation_rng(cfg), issuer, "rot")
    assert [len(a.creds) for a in world.apps] == [1, 1, 2], "one Secret shared by two credentials"
    assert [a.replication_delay > 0 for a in world.apps] == [False, True, False]
    first, shared = world.apps[0].app.client_id, world.apps[2].app.client_id
    calls = [_call(1, "addKey", 200, "added", first), _call(3, "removeKey", 204, "removed", first),
             _call(5, "addKey", 503, "serviceNotAvailable: injected by fail_next('addKey', 503)", shared),
             _call(11, "addKey", 503, "added, answered 503 (fail_next)", shared),
             _call(30, "removeKey", 204, "removed", shared)]
    lines, failures, longest, completed = rotation_figures(world, calls)
    assert completed == {"rot/rot-0-cert": 1, "rot/rot-1-cert": 0, "rot/rot-2-cert": 1}
    assert "rotations completed 1 (addKey 1, key calls 2)" in lines[0]
    assert "rotations completed 0" in lines[1]
    assert "rot/r-2-0, rot/r-2-1" in lines[2] and "rotations completed 1" in lines[2]
    assert failures == {"addKey": 1, "addKey lost answer": 1}
    assert longest == 25


def test_the_graph_failures_are_seeded_and_leave_the_quiet_phase_alone() -> None:
    cfg = SoakConfig(minutes=4, seed=1, quiet_seconds=90)
    world = build_rotating(cfg, rotation_rng(cfg), Issuer("https://127.0.0.1:1"), "rot")
    plan = plan_rotation(cfg, rotation_rng(cfg), world)
    again = plan_rotation(cfg, rotation_rng(cfg), world)
    assert plan == again
    assert {p.kind for p in plan} == set(ROTATION_FAULTS)
    assert sorted(p.arg("op") for p in plan if p.kind == "graph_lost") == ["addKey", "removeKey"]
    assert all(p.at <= 0.85 * cfg.fault_seconds for p in plan)
    other = SoakConfig(minutes=4, seed=2, quiet_seconds=90)
    assert plan != plan_rotation(other, rotation_rng(other), world)
    assert plan_rotation(SoakConfig(rotating_apps=0), rotation_rng(cfg),
                         build_rotating(SoakConfig(rotating_apps=0), rotation_rng(cfg), Issuer("https://x:1"),
                                        "rot")) == []
