"""No tenant can hurt another: what one credential costs the operator is bounded, and a spec that cannot
work fails once, not in a loop. The real Reconciler over the in-memory Kube and token client of `fakes`; the bed
tests (tests/e2e) cover the same through the apiserver."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import threading
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from graphcred.kube.errors import Invalid, ServerError
from graphcred.reconcile.memory import Memory
from graphcred.reconcile.snapshot import Snapshot
from graphcred_testbed.pki import self_signed

from .fakes import T0, gac, secret_spec
from .harness import NS, TENANT, Rig


def exists(rig: Rig, body: dict[str, Any]) -> dict[str, Any]:
    """The object exists in the cluster (its status can be written); no controller watches it here."""
    rig.kube.objects.add((NS, body["metadata"]["name"]))
    return body


def pass_of(rig: Rig, body: dict[str, Any], mem: Memory) -> float | None:
    """One pass, as the controller runs it: an unexpected failure is reported by internal_error."""
    snap = Snapshot.of(body)

    async def one() -> float | None:
        try:
            return await rig.reconciler.reconcile(snap, mem)
        except Exception as exc:  # as the controller does
            return await rig.reconciler.internal_error(snap, mem, exc)

    return asyncio.run(one())


def test_certificate_keys_are_parsed_off_the_event_loop_once_per_secret_version(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rig = Rig()
    pair = self_signed("shared", not_before=T0 - dt.timedelta(days=1), not_after=T0 + dt.timedelta(days=30))
    rig.kube.secrets[(NS, "tls")] = {"metadata": {"name": "tls", "namespace": NS, "resourceVersion": "7"},
                                     "data": {"tls.crt": base64.b64encode(pair.cert_pem).decode(),
                                              "tls.key": base64.b64encode(pair.key_pem).decode()}}
    loads: list[tuple[bool, bool]] = []  # (on the event loop's thread, validating the key)
    original = serialization.load_pem_private_key

    def load(data: bytes, password: bytes | None, **kw: Any) -> Any:
        loads.append((threading.current_thread() is threading.main_thread(),
                      not kw.get("unsafe_skip_rsa_key_validation", False)))
        return original(data, password, **kw)

    monkeypatch.setattr(serialization, "load_pem_private_key", load)
    spec = {"tenantId": TENANT, "clientId": str(uuid.uuid4()), "credential": {"certificate": {"name": "tls"}}}
    for name in ("a", "b", "c"):
        pass_of(rig, exists(rig, gac(name, spec)), Memory())
        assert (rig.kube.ready(NS, name) or {}).get("reason") == "TokenIssued", rig.kube.ready(NS, name)
    assert loads, "the key was never loaded"
    assert not [on_loop for on_loop, _ in loads if on_loop], "a key was parsed on the event loop's thread"
    assert [validated for _, validated in loads].count(True) == 1, "three credentials, one Secret version: one parse"
    rig.kube.touch(NS, "tls")  # a new version: parsed again
    pass_of(rig, exists(rig, gac("d", spec)), Memory())
    assert [validated for _, validated in loads].count(True) == 2


def test_a_pass_that_fails_after_writing_the_secret_backs_off_longer_each_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the failure count was reset before the last step, so backoff stayed at 1-2 s
    rig = Rig()

    def refuse(*_: Any) -> None:
        raise ServerError("patch GraphAppCredential status", 500, "Internal Server Error")

    monkeypatch.setattr(rig.kube, "patch_status", refuse)
    body, mem = exists(rig, gac("a", secret_spec(TENANT, str(uuid.uuid4())))), Memory()
    delays = [pass_of(rig, body, mem) for _ in range(5)]
    assert rig.kube.token_in(NS, "a-token"), "each pass wrote the Secret, then failed"
    assert mem.report.failures == 5
    assert delays[-1] is not None and delays[-1] >= 8.0, delays  # 5th failure: 16 s, jittered down to half at most


def test_a_name_too_long_for_the_default_secret_is_invalid_before_any_token_request() -> None:
    # the apiserver refused <name>-token (422) after each token request
    rig = Rig()
    name = "n" * 248
    body = exists(rig, gac(name, secret_spec(TENANT, str(uuid.uuid4()))))
    delay = pass_of(rig, body, Memory())
    ready = rig.kube.ready(NS, name) or {}
    assert ready.get("reason") == "InvalidSpec" and "set spec.secretName" in ready.get("message", "")
    assert delay is None, "only a change of the spec can help"
    assert rig.tokens.requests == 0 and rig.kube.writes == 0


def test_a_secret_the_apiserver_refuses_as_invalid_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    rig = Rig()

    def invalid(*_: Any) -> str:
        raise Invalid("create Secret", 422, "Unprocessable Entity")

    monkeypatch.setattr(rig.kube, "create_secret", invalid)
    body = exists(rig, gac("a", secret_spec(TENANT, str(uuid.uuid4()))))
    delay = pass_of(rig, body, Memory())
    ready = rig.kube.ready(NS, "a") or {}
    assert ready.get("reason") == "InvalidSpec", ready
    assert ready.get("message", "").startswith("create Secret failed: HTTP 422 Unprocessable Entity: the apiserver "
                                               "refused the token Secret a-token as invalid")
    assert delay is None, "a 422 is permanent: retried only after a change, not with backoff"
    assert rig.tokens.requests == 1
