"""Certificates that renew themselves in Entra (credential.certificate.rotation), on the bed: graphcred generates
the key pair, waits for the one upload a person must do, then renews the certificate through the bed's Graph API
(addKey, removeKey) before it expires, with no token gap for the consumer."""

from __future__ import annotations

import base64
import datetime as dt
import time
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from kubernetes import client

from graphcred.acquire.keygen import describe_certificate, generate_key
from graphcred_testbed import jose
from graphcred_testbed.bed import wait_for

from ..helpers import GRAPH, Env

pytestmark = pytest.mark.bed


def _rotating(env: Env, name: str, app: Any, secret: str, **rotation: Any) -> None:
    env.create(name, app, {"certificate": {"name": secret, "rotation": {"objectId": app.object_id, **rotation}}},
               scopes=[f"{GRAPH}/.default"])


def _certificate(env: Env, secret: str) -> x509.Certificate | None:
    found = env.secret(secret)
    if found is None or not found.data or "tls.crt" not in found.data:
        return None
    return x509.load_pem_x509_certificate(base64.b64decode(found.data["tls.crt"]))


def _thumbprint(env: Env, secret: str) -> str | None:
    found = env.secret(secret)
    if found is None or not found.data:
        return None
    return describe_certificate(base64.b64decode(found.data["tls.crt"])).thumbprint


def _condition(env: Env, name: str, kind: str) -> dict[str, Any] | None:
    for c in (env.get(name).get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return None


def test_a_generated_certificate_waits_for_its_upload_then_renews_itself_with_no_token_gap(env: Env) -> None:
    app = env.register_app(lifetime=600)
    env.bed.issuer.set_replication_delay(3.0, app.client_id)  # a new key takes a while to be accepted
    # validity 2m, renewal 90 s before notAfter: a rotation roughly every half minute
    _rotating(env, "rot", app, "app-cert", validity="2m", renewBefore="90s")
    # 1. graphcred created the Secret with a key pair of its own; Entra does not know it yet
    env.wait_condition("rot", "False", "CertificateNotRegistered", timeout=60)
    ready = env.ready_condition("rot")
    assert ready is not None and "az ad app credential reset" in ready["message"]
    status = env.get("rot")["status"]
    pem = status["certificate"]["pem"]
    first = x509.load_pem_x509_certificate(pem.encode())
    assert _certificate(env, "app-cert") == first
    assert env.bed.issuer.token_requests(app.client_id) >= 1
    # 2. a person uploads it (az ad app credential reset --append): keyId as az prints it, given to graphcred
    uploaded = env.bed.issuer.add_key(app.client_id, first)
    env.patch_spec("rot", {"credential": {"certificate": {"name": "app-cert", "rotation": {
        "objectId": app.object_id, "validity": "2m", "renewBefore": "90s", "keyId": uploaded.key_id}}}})
    env.wait_ready("rot", timeout=60)
    # 3. three renewals; a consumer reading the token Secret never sees an expired token
    seen: list[tuple[float, str]] = []
    closest = float("inf")
    env.bed.issuer.record_token_requests()
    started, wall0 = time.monotonic(), time.time()

    def renewed_three_times() -> bool:
        nonlocal closest
        thumbprint = _thumbprint(env, "app-cert")
        if thumbprint and (not seen or seen[-1][1] != thumbprint):
            seen.append((time.monotonic() - started, thumbprint))
        token = env.token(env.get("rot")["status"].get("secretName") or "rot")
        assert token is not None, "the token Secret lost its token"
        claims = jose.parse(token)[1]  # the consumer's view: when it expires
        left = claims["exp"] - time.time()
        assert left > 0, "the consumer read an expired token"
        closest = min(closest, left / (claims["exp"] - claims["iat"]))
        calls = [c for c in env.bed.graph.key_calls(app.client_id) if c.op == "removeKey" and c.ok]
        return len(calls) >= 3

    wait_for(renewed_three_times, timeout=240, interval=0.5, what="three certificate renewals")
    calls = env.bed.graph.key_calls(app.client_id)
    for call in calls:
        print(f"graph {call.op}: {call.status} {call.outcome} keyId={call.key_id} thumbprint={call.thumbprint} "
              f"proof by {call.proof_thumbprint}")
    for at, thumbprint in seen:
        print(f"Secret certificate at {at:6.1f} s: {thumbprint}")
    # the issuer's keys over time, and the token requests made while each was the Secret's certificate
    requests = [at - started for client, at in env.bed.issuer.token_request_log() if client == app.client_id.lower()]
    for key in env.bed.issuer.keys(app.client_id):
        removed = f"{key.removed_at - wall0:6.1f} s" if key.removed_at else "  (current)"
        print(f"issuer key {key.thumbprint} via {key.via:10s} added {key.added_at - wall0:6.1f} s, usable "
              f"{key.usable_from - wall0:6.1f} s, removed {removed}")
    for i, (at, thumbprint) in enumerate(seen):
        until = seen[i + 1][0] if i + 1 < len(seen) else float("inf")
        print(f"token requests while {thumbprint[:12]}… was current: {sum(at <= r < until for r in requests)}")
    print(f"closest any consumer-visible token came to expiry: {closest:.0%} of its lifetime left")
    adds = [c for c in calls if c.op == "addKey" and c.ok]
    removes = [c for c in calls if c.op == "removeKey" and c.ok]
    assert len(adds) >= 3 and len(removes) >= 3
    # the first key, uploaded by a person, was removed by its keyId; each removal was proven by the key after it
    assert removes[0].key_id == uploaded.key_id
    assert all(r.proof_thumbprint != r.thumbprint for r in removes)
    # Entra holds exactly the keys graphcred holds (no orphan): the current one, plus a next one mid-rotation
    current = {k.thumbprint for k in env.bed.issuer.keys(app.client_id) if k.removed_at is None}
    held = {_thumbprint(env, "app-cert")}
    found = env.secret("app-cert")
    assert found is not None and found.data is not None
    if "next.crt" in found.data:
        held.add(describe_certificate(base64.b64decode(found.data["next.crt"])).thumbprint)
    # ... and, for a few seconds after a switch, the previous key until removeKey removes it
    previous = (found.metadata.annotations or {}).get("graphcred.io/previous-thumbprint")
    assert current <= held | {previous}, f"keys in Entra graphcred does not hold: {current - held}"
    renewal = _condition(env, "rot", "CertificateRenewal")
    assert renewal is not None and renewal["status"] == "True", renewal
    status = env.get("rot")["status"]
    assert status["certificate"].get("pem") is None  # registered: nothing to upload
    assert status["certificate"]["lastRenewalTime"]
    assert ("Normal", "CertificateRenewed") in {(t, r) for t, r, _ in env.events("rot")}
    assert closest > 0.1, f"a consumer-visible token came within {closest:.0%} of its lifetime of expiry"


@pytest.mark.parametrize(("status", "code"), [(403, "Authorization_RequestDenied"),
                                               (401, "InvalidAuthenticationToken")], ids=["forbidden", "proof-refused"])
def test_a_refused_renewal_keeps_the_working_key_and_says_so(env: Env, status: int, code: str) -> None:
    """Graph refuses addKey (403: not allowed; 401: the proof or token refused): the current key keeps serving,
    Ready stays True, CertificateRenewal turns False with Graph's words, and a Warning Event says so; once Graph
    accepts, the renewal goes through."""
    app = env.register_app(lifetime=600)
    _rotating(env, "refused", app, "cert-r", validity="2m", renewBefore="110s")
    env.wait_condition("refused", "False", "CertificateNotRegistered", timeout=60)
    first = x509.load_pem_x509_certificate(env.get("refused")["status"]["certificate"]["pem"].encode())
    env.bed.graph.fail_next("addKey", status, count=100)
    env.bed.issuer.add_key(app.client_id, first)
    env.wait_ready("refused", timeout=60)

    def renewal_failed() -> dict[str, Any] | None:
        c = _condition(env, "refused", "CertificateRenewal")
        return c if c is not None and c["status"] == "False" and c["reason"] == "RenewalFailed" else None

    failed = wait_for(renewal_failed, timeout=60, what="CertificateRenewal=False/RenewalFailed")
    assert str(status) in failed["message"] and code in failed["message"]
    assert _condition(env, "refused", "Ready")["status"] == "True"  # type: ignore[index]
    assert _thumbprint(env, "cert-r") == describe_certificate(
        first.public_bytes(serialization.Encoding.PEM)).thumbprint
    wait_for(lambda: ("Warning", "CertificateRenewalFailed") in {(t, r) for t, r, _ in env.events("refused")},
             timeout=10, what="the CertificateRenewalFailed Event")
    # Graph accepts again: the renewal completes (the next retry comes within the backoff)
    env.bed.graph.heal()
    wait_for(lambda: _thumbprint(env, "cert-r") not in (None, describe_certificate(
        first.public_bytes(serialization.Encoding.PEM)).thumbprint), timeout=90,
        what="the renewed certificate")
    env.wait_ready("refused", timeout=60)


def _uploaded(env: Env, name: str, secret: str, app: Any, **rotation: Any) -> tuple[x509.Certificate, str]:
    """A rotating credential whose generated first certificate a person uploaded (keyId given to graphcred), Ready;
    the certificate and its keyId."""
    _rotating(env, name, app, secret, **rotation)
    env.wait_condition(name, "False", "CertificateNotRegistered", timeout=60)
    first = x509.load_pem_x509_certificate(env.get(name)["status"]["certificate"]["pem"].encode())
    uploaded = env.bed.issuer.add_key(app.client_id, first)
    env.patch_spec(name, {"credential": {"certificate": {"name": secret, "rotation": {
        "objectId": app.object_id, **rotation, "keyId": uploaded.key_id}}}})
    env.wait_ready(name, timeout=60)
    return first, uploaded.key_id


def _annotations(env: Env, secret: str) -> dict[str, str]:
    found = env.secret(secret)
    return dict((found.metadata.annotations or {}) if found is not None else {})


def _removed(env: Env, app: Any, key_id: str) -> bool:
    """Graph removed this key of the app: the renewal that replaced it is finished. (A wait for "no renewal under way"
    instead would race the next one: with renewBefore close to validity it starts within a second.)"""
    return any(c.op == "removeKey" and c.ok and c.key_id == key_id for c in env.bed.graph.key_calls(app.client_id))


def _quiet(env: Env, secret: str) -> bool:
    """No rotation under way: no next pair stored, no previous key waiting for removal."""
    found = env.secret(secret)
    return (found is not None and found.data is not None and "next.crt" not in found.data
            and "graphcred.io/previous-key-id" not in (found.metadata.annotations or {}))


@pytest.mark.parametrize("step", ["stored", "added", "switched", "answer-lost"])
def test_the_operator_killed_at_any_step_of_a_renewal_finishes_it_after_its_restart(env: Env, step: str) -> None:
    """SIGKILL while a renewal is held at one step (Graph failing or Entra slow to replicate), then a restart: the
    new process resumes from what the Secret records, finishes the renewal, and Entra is left holding exactly the
    key graphcred holds: no orphaned key, no lost private key."""
    app = env.register_app(lifetime=600, roles=["Application.ReadWrite.OwnedBy"])
    app.owners.add(app.client_id)  # it may read its own keyCredentials (find a keyId whose answer was lost)
    first, first_id = _uploaded(env, "kill", "cert-k", app, validity="2m", renewBefore="110s")
    graph, issuer = env.bed.graph, env.bed.issuer
    held_at = {
        "stored": lambda notes: "graphcred.io/next-key-adding" in notes,
        "added": lambda notes: "graphcred.io/next-key-id" in notes,
        "switched": lambda notes: "graphcred.io/previous-key-id" in notes,
        "answer-lost": lambda notes: any(c.op == "addKey" for c in graph.key_calls(app.client_id)),
    }[step]
    if step == "stored":
        graph.fail_next("addKey", 503, count=1000)
    elif step == "added":
        issuer.set_replication_delay(25.0, app.client_id)
    elif step == "switched":
        graph.fail_next("removeKey", 503, count=1000)
    else:
        graph.fail_next("addKey", 503, applied=True)  # Graph added the key, but its answer was lost
    wait_for(lambda: held_at(_annotations(env, "cert-k")), timeout=60, what=f"the renewal held at step {step!r}")
    env.operator.kill()
    graph.heal()
    issuer.set_replication_delay(0.0, app.client_id)  # the next renewals fast (the key held keeps its 25 s)
    env.operator.start()
    first_thumbprint = describe_certificate(first.public_bytes(serialization.Encoding.PEM)).thumbprint
    wait_for(lambda: _removed(env, app, first_id) and _thumbprint(env, "cert-k") not in (None, first_thumbprint),
             timeout=120, what="the renewal finished by the restarted operator")
    # no renewal for a minute (the next certificate is renewed 60 s before it expires), then look at Entra
    env.patch_spec("kill", {"credential": {"certificate": {"name": "cert-k", "rotation": {
        "objectId": app.object_id, "validity": "2m", "renewBefore": "60s", "keyId": first_id}}}})

    def settled() -> tuple[set[str], str | None] | None:
        """Entra's keys read with no renewal under way before and after (none began or ended in between)."""
        held = _thumbprint(env, "cert-k")
        if not _quiet(env, "cert-k"):
            return None
        keys = {k.thumbprint for k in issuer.keys(app.client_id) if k.removed_at is None}
        return (keys, held) if _quiet(env, "cert-k") and _thumbprint(env, "cert-k") == held else None

    in_entra, held = wait_for(settled, timeout=60, what="no renewal under way")
    assert in_entra == {held}, "Entra holds a key graphcred does not (or lost the one it does)"
    removed = {c.key_id for c in graph.key_calls(app.client_id) if c.op == "removeKey" and c.ok}
    assert first_id in removed
    env.wait_ready("kill", timeout=60)
    token = env.token(env.get("kill")["status"]["secretName"])
    assert token is not None and jose.parse(token)[1]["exp"] > time.time()


def test_two_credentials_sharing_one_certificate_secret_share_its_renewals(env: Env) -> None:
    """Two credentials (two scopes) name one certificate Secret: one renewal at a time for both (one addKey and one
    removeKey per renewal), and both get tokens signed with each new key."""
    app = env.register_app(lifetime=600)
    rotation = {"validity": "2m", "renewBefore": "100s"}
    _, first_id = _uploaded(env, "one", "shared-cert", app, **rotation)
    env.create("two", app, {"certificate": {"name": "shared-cert", "rotation": {
        "objectId": app.object_id, **rotation, "keyId": first_id}}}, scopes=["https://vault.azure.net/.default"])
    env.wait_ready("two", timeout=60)

    def renewed_twice() -> bool:
        return len([c for c in env.bed.graph.key_calls(app.client_id) if c.op == "removeKey" and c.ok]) >= 2

    wait_for(renewed_twice, timeout=120, what="two renewals of the shared certificate")
    calls = env.bed.graph.key_calls(app.client_id)
    adds = [c for c in calls if c.op == "addKey"]
    assert all(c.ok for c in calls), [c.outcome for c in calls]
    assert len({c.thumbprint for c in adds}) == len(adds), "one certificate was added twice"
    # each credential's token Secret follows the current key (a new token after each switch)
    for name in ("one", "two"):
        env.wait_ready(name, timeout=60)
        assert env.get(name)["status"]["certificate"]["thumbprint"] == _thumbprint(env, "shared-cert")


def test_a_secret_a_person_made_is_renewed_only_once_it_is_labelled_for_it(env: Env) -> None:
    """A kubernetes.io/tls Secret a person made, its certificate uploaded by them: tokens come at once, but graphcred
    changes the Secret only once it carries graphcred.io/rotation=enabled (status says how); then it renews it."""
    app = env.register_app(lifetime=600)
    pair = generate_key("made by a person", dt.timedelta(minutes=2), dt.datetime.now(dt.UTC))
    uploaded = env.bed.issuer.add_key(app.client_id, x509.load_pem_x509_certificate(pair.cert_pem))
    env.bed.core.create_namespaced_secret(env.namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="theirs"), type="kubernetes.io/tls",
        data={"tls.crt": base64.b64encode(pair.cert_pem).decode(), "tls.key": base64.b64encode(pair.key_pem).decode()}))
    _rotating(env, "mine", app, "theirs", validity="2m", renewBefore="110s", keyId=uploaded.key_id)
    env.wait_ready("mine", timeout=60)
    waiting = wait_for(lambda: (c := _condition(env, "mine", "CertificateRenewal")) and c["reason"] == "NotEnabled"
                       and c, timeout=60, what="CertificateRenewal=False/NotEnabled")
    assert "kubectl label secret theirs graphcred.io/rotation=enabled" in waiting["message"]
    assert _thumbprint(env, "theirs") == pair.thumbprint  # untouched
    env.bed.core.patch_namespaced_secret("theirs", env.namespace,
                                         {"metadata": {"labels": {"graphcred.io/rotation": "enabled"}}})
    wait_for(lambda: _removed(env, app, uploaded.key_id) and _thumbprint(env, "theirs") not in (None, pair.thumbprint),
             timeout=90, what="the person's certificate renewed")
