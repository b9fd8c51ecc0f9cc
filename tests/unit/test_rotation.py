"""Certificate rotation, the pure part (graphcred.reconcile.rotation) and its spec: which step comes next from what
the certificate Secret records, what the user is told, and what the spec accepts."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest
from pydantic import ValidationError

from graphcred.acquire.keygen import generate_key
from graphcred.api.keys import (
    ADDING_ANNOTATION,
    KEY_ID_ANNOTATION,
    NEXT_KEY_ID_ANNOTATION,
    PREVIOUS_KEY_ID_ANNOTATION,
    UNKNOWN_KEY_ID,
)
from graphcred.api.model import CertificateRotation, ClusterGraphAppSpec, GraphAppCredentialSpec
from graphcred.reconcile.reporting import status_patch
from graphcred.reconcile.rotation import (
    KeyState,
    Outcome,
    Step,
    certificate_status,
    plan,
    renewal_condition,
)

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
OBJECT_ID = "11111111-2222-3333-4444-555555555555"
KEY_A = "aaaaaaaa-0000-0000-0000-000000000001"
KEY_B = "bbbbbbbb-0000-0000-0000-000000000002"
PAIR = generate_key("graphcred test", dt.timedelta(hours=3), NOW)
NEXT = generate_key("graphcred test next", dt.timedelta(hours=3), NOW)


def _rotation(**fields: Any) -> CertificateRotation:
    return CertificateRotation.model_validate({"objectId": OBJECT_ID, "validity": "3h", **fields})


def _secret(notes: dict[str, str] | None = None, *, next_pair: bool = False) -> dict[str, Any]:
    data = {"tls.crt": base64.b64encode(PAIR.cert_pem).decode(), "tls.key": base64.b64encode(PAIR.key_pem).decode()}
    if next_pair:
        data |= {"next.crt": base64.b64encode(NEXT.cert_pem).decode(),
                 "next.key": base64.b64encode(NEXT.key_pem).decode()}
    return {"metadata": {"resourceVersion": "7", "annotations": notes or {}}, "data": data}


def test_a_certificate_is_renewed_from_a_third_of_its_validity_before_it_expires_by_default() -> None:
    rotation = _rotation()
    state = KeyState.of(_secret(), rotation)
    due = PAIR.not_after - dt.timedelta(hours=1)
    assert plan(state, rotation, due - dt.timedelta(seconds=1)).step is Step.IDLE
    assert plan(state, rotation, due - dt.timedelta(seconds=1)).due == due
    assert plan(state, rotation, due).step is Step.STORE
    assert plan(state, _rotation(renewBefore="30m"), due).step is Step.IDLE


def test_a_rotation_under_way_resumes_at_the_step_the_secret_records() -> None:
    rotation = _rotation()
    early = NOW  # long before renewal is due: steps under way go on anyway
    assert plan(KeyState.of(_secret(next_pair=True), rotation), rotation, early).step is Step.REGISTER
    adding = KeyState.of(_secret({ADDING_ANNOTATION: "x"}, next_pair=True), rotation)
    assert adding.adding and plan(adding, rotation, early).step is Step.REGISTER
    registered = KeyState.of(_secret({NEXT_KEY_ID_ANNOTATION: KEY_B}, next_pair=True), rotation)
    assert plan(registered, rotation, early).step is Step.SWITCH
    lost = KeyState.of(_secret({NEXT_KEY_ID_ANNOTATION: UNKNOWN_KEY_ID}, next_pair=True), rotation)
    assert plan(lost, rotation, early).step is Step.SWITCH
    switched = KeyState.of(_secret({KEY_ID_ANNOTATION: KEY_B, PREVIOUS_KEY_ID_ANNOTATION: KEY_A}), rotation)
    assert plan(switched, rotation, early).step is Step.REMOVE
    assert switched.key_id == KEY_B and switched.previous_key_id == KEY_A


def test_a_next_certificate_without_its_key_is_no_next_pair() -> None:
    rotation = _rotation()
    secret = _secret(next_pair=True)
    del secret["data"]["next.key"]
    assert KeyState.of(secret, rotation).next is None


def test_the_keyid_a_person_gave_names_the_first_key_until_graphcred_records_its_own() -> None:
    assert KeyState.of(_secret(), _rotation(keyId=KEY_A.upper())).key_id == KEY_A
    assert KeyState.of(_secret({KEY_ID_ANNOTATION: KEY_B}), _rotation(keyId=KEY_A)).key_id == KEY_B
    assert KeyState.of(_secret({KEY_ID_ANNOTATION: "not-a-guid"}), _rotation()).key_id is None


def test_status_shows_the_pem_only_while_a_person_must_upload_it() -> None:
    rotation = _rotation()
    state = KeyState.of(_secret({KEY_ID_ANNOTATION: KEY_A}), rotation)
    shown = certificate_status(state, rotation, registered=False)
    assert shown is not None and shown.pem is not None and "PRIVATE" not in shown.pem
    assert shown.thumbprint == PAIR.thumbprint and shown.key_id == KEY_A
    for registered in (True, None):
        hidden = certificate_status(state, rotation, registered=registered)
        assert hidden is not None and hidden.pem is None


def test_a_field_gone_from_a_nested_status_object_is_removed_by_the_patch() -> None:
    """The merge patch of status merges nested objects: status.certificate.pem stayed after the certificate was
    registered, until the patch sent it as null."""
    before = {"certificate": {"thumbprint": "A", "pem": "-----BEGIN CERTIFICATE-----"}, "secretName": "s"}
    after = {"certificate": {"thumbprint": "A"}, "secretName": "s"}
    assert status_patch(before, after) == {"certificate": {"thumbprint": "A", "pem": None}, "secretName": "s"}


def test_the_renewal_condition_keeps_its_transition_time_until_its_status_flips() -> None:
    ok = renewal_condition(None, Outcome(True, "Scheduled", "later"), 1, NOW)
    again = renewal_condition(ok, Outcome(True, "Renewing", "now"), 1, NOW + dt.timedelta(minutes=5))
    assert again.last_transition_time == ok.last_transition_time
    failed = renewal_condition(again, Outcome(False, "RenewalFailed", "403"), 1, NOW + dt.timedelta(minutes=6))
    assert failed.status == "False" and failed.last_transition_time != ok.last_transition_time


@pytest.mark.parametrize(("fields", "error"), [
    ({"validity": "1m"}, "validity must be between 2m and 17520h"),
    ({"validity": "20000h"}, "validity must be between 2m and 17520h"),
    ({"validity": "1h", "renewBefore": "1h"}, "renewBefore must be at least 1m and shorter than validity"),
    ({"validity": "1h", "renewBefore": "30s"}, "renewBefore must be at least 1m and shorter than validity"),
    ({"objectId": "not-a-guid"}, "objectId"),
])
def test_a_rotation_spec_out_of_bounds_is_refused_with_its_reason(fields: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        CertificateRotation.model_validate({"objectId": OBJECT_ID, **fields})


def test_rotation_is_a_graphappcredentials_and_not_yet_a_cluster_apps() -> None:
    credential = {"certificate": {"name": "cert", "rotation": {"objectId": OBJECT_ID}}}
    identity = {"tenantId": "contoso.onmicrosoft.com", "clientId": KEY_A, "credential": credential}
    spec = GraphAppCredentialSpec.model_validate({**identity, "scopes": ["https://graph.microsoft.com/.default"]})
    assert spec.credential is not None and spec.credential.certificate is not None
    assert spec.credential.for_app().certificate == spec.credential.certificate  # the pass's identity keeps it
    with pytest.raises(ValidationError, match="not supported on a ClusterGraphApp yet"):
        ClusterGraphAppSpec.model_validate({**identity, "policy": {
            "namespaceSelector": {}, "allowedScopes": ["https://graph.microsoft.com/.default"]}})
