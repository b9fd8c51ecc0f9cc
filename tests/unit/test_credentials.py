from __future__ import annotations

import base64
import dataclasses
import datetime as dt
from typing import Any

import pytest

from graphcred import credentials
from graphcred.credentials import CredentialError
from graphcred.model import CertificateRef, ClientSecretRef, Reason, WorkloadIdentityRef
from graphcred_testbed.pki import CertificateAuthority, self_signed


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def test_client_secret_is_read_and_trimmed_and_never_shown() -> None:
    material = credentials.client_secret({"clientSecret": b64("s3cr3t~value\n")}, ClientSecretRef(name="app"))
    assert material.value == "s3cr3t~value"
    assert "s3cr3t" not in repr(material) and "s3cr3t" not in str(material)


@pytest.mark.parametrize(("data", "reason", "fragment"), [
    (None, Reason.CREDENTIAL_NOT_FOUND, "has no key 'clientSecret'"),
    ({"other": b64("x")}, Reason.CREDENTIAL_NOT_FOUND, "has no key 'clientSecret'"),
    ({"clientSecret": b64("  \n")}, Reason.INVALID_CREDENTIAL, "is empty"),
    ({"clientSecret": "%%%"}, Reason.INVALID_CREDENTIAL, "not valid base64"),
])
def test_client_secret_errors(data: dict[str, str] | None, reason: Reason, fragment: str) -> None:
    with pytest.raises(CredentialError) as err:
        credentials.client_secret(data, ClientSecretRef(name="app"))
    assert err.value.reason == reason and fragment in err.value.message


def _tls(cert_pem: bytes, key_pem: bytes) -> dict[str, str]:
    return {"tls.crt": b64(cert_pem), "tls.key": b64(key_pem)}


def test_certificate_with_chain_and_thumbprint() -> None:
    ca = CertificateAuthority("unit-ca")
    leaf = ca.issue("leaf", client=True)
    material = credentials.certificate(_tls(leaf.cert_pem + ca.cert_pem, leaf.key_pem),
                                       CertificateRef(name="c", sendX5c=True), now())
    assert len(material.chain) == 2 and len(material.x5c) == 2
    assert material.sha256_thumbprint == leaf.cert.fingerprint(__import__("cryptography.hazmat.primitives.hashes",
                                                                          fromlist=["SHA256"]).SHA256())
    assert "PRIVATE" not in repr(material)


def test_certificate_errors() -> None:
    pair, other = self_signed("a"), self_signed("b")
    ref = CertificateRef(name="c")
    cases = [
        (_tls(b"not pem", pair.key_pem), "tls.crt is not a PEM certificate"),
        (_tls(pair.cert_pem, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
         "tls.key"),
        (_tls(pair.cert_pem, other.key_pem), "does not match"),
        ({"tls.crt": b64(pair.cert_pem)}, "has no key 'tls.key'"),
    ]
    for data, fragment in cases:
        with pytest.raises(CredentialError) as err:
            credentials.certificate(data, ref, now())
        assert fragment in err.value.message
        assert "BEGIN" not in err.value.message


def test_expired_certificate_is_invalid() -> None:
    old = self_signed("old", not_before=now() - dt.timedelta(days=30), not_after=now() - dt.timedelta(days=1))
    with pytest.raises(CredentialError) as err:
        credentials.certificate(_tls(old.cert_pem, old.key_pem), CertificateRef(name="c"), now())
    assert err.value.reason == Reason.INVALID_CREDENTIAL and "expired" in err.value.message


def test_fingerprints_differ_by_material_not_by_object() -> None:
    a = credentials.ClientSecret("one")
    assert a.fingerprint() == credentials.ClientSecret("one").fingerprint()
    assert a.fingerprint() != credentials.ClientSecret("two").fingerprint()
    assert "one" not in a.fingerprint()


# --- workload identity: the ServiceAccount's consent and the federation material ------------------------------
CLIENT = "1b4f816e-5eaf-48b9-8613-7923830595ad"
WI = WorkloadIdentityRef.model_validate({"serviceAccountName": "reader"})


def _account(annotations: dict[str, str] | None, uid: str = "uid-1") -> dict[str, Any]:
    return {"metadata": {"name": "reader", "namespace": "batch", "uid": uid, "resourceVersion": "7",
                         "annotations": annotations}}


def test_a_service_account_naming_the_app_is_federation_material() -> None:
    material = credentials.federation(_account({credentials.CLIENT_ID_ANNOTATION: CLIENT.upper()}), WI, CLIENT,
                                      "batch")
    assert (material.namespace, material.service_account, material.uid) == ("batch", "reader", "uid-1")
    assert material.audience == "api://AzureADTokenExchange" and material.assertion is None


@pytest.mark.parametrize(("annotations", "fragment"), [
    (None, "has no annotation azure.workload.identity/client-id"),
    ({}, "has no annotation azure.workload.identity/client-id"),
    ({credentials.CLIENT_ID_ANNOTATION: ""}, "has no annotation"),
    ({credentials.CLIENT_ID_ANNOTATION: "00000000-0000-0000-0000-000000000001"},
     "names another client id (00000000-0000-0000-0000-000000000001), not spec.clientId " + CLIENT),
    ({credentials.CLIENT_ID_ANNOTATION: "mail-reader"}, "names a value that is not a client id"),
    ({"azure.workload.identity/tenant-id": CLIENT}, "has no annotation"),
], ids=["no-annotations", "empty-annotations", "empty-value", "another-app", "not-a-guid", "other-annotation"])
def test_a_service_account_not_naming_the_app_is_refused(annotations: dict[str, str] | None, fragment: str) -> None:
    with pytest.raises(CredentialError) as err:
        credentials.federation(_account(annotations), WI, CLIENT, "batch")
    assert err.value.reason == Reason.SERVICE_ACCOUNT_NOT_AUTHORIZED
    assert fragment in err.value.message, err.value.message
    assert (f"kubectl annotate serviceaccount reader -n batch azure.workload.identity/client-id={CLIENT}"
            in err.value.message), "the message says how to give consent"


def test_federation_fingerprints_cover_the_service_account_audience_and_annotation_not_the_token() -> None:
    def material(uid: str = "uid-1", audience: str = "api://AzureADTokenExchange") -> credentials.Federation:
        ref = WorkloadIdentityRef.model_validate({"serviceAccountName": "reader", "audience": audience})
        return credentials.federation(_account({credentials.CLIENT_ID_ANNOTATION: CLIENT}, uid), ref, CLIENT, "batch")

    base = material()
    assert base.fingerprint() == material().fingerprint()
    assert base.fingerprint() != material(uid="uid-2").fingerprint(), "another (or a re-created) ServiceAccount"
    assert base.fingerprint() != material(audience="api://AzureADTokenExchangeUSGov").fingerprint()
    other_app = dataclasses.replace(base, client_id="00000000-0000-0000-0000-000000000001")
    assert base.fingerprint() != other_app.fingerprint()
    carrying = base.with_assertion("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0ifQ.SA-TOKEN-SIGNATURE")
    assert carrying.fingerprint() == base.fingerprint() and carrying == base, "the token is no part of the material"
    assert base.assertion is None, "a copy carries it; the material itself never does"
    assert "SA-TOKEN" not in repr(carrying) and "SA-TOKEN" not in str(carrying)
    assert credentials.ClientSecret("uid-1").fingerprint() != base.fingerprint()


def test_a_tenant_annotation_narrows_the_consent_to_that_tenant() -> None:
    from graphcred.credentials import TENANT_ID_ANNOTATION, federation
    from graphcred.model import WorkloadIdentityRef

    client, tenant = "0b1c2d3e-0000-4000-8000-000000000001", "0b1c2d3e-0000-4000-8000-0000000000aa"
    ref = WorkloadIdentityRef.model_validate({"serviceAccountName": "reader"})

    def account(annotations: dict[str, str]) -> dict[str, Any]:
        return {"metadata": {"name": "reader", "uid": "u1",
                             "annotations": {"azure.workload.identity/client-id": client, **annotations}}}

    assert federation(account({}), ref, client, "ns", tenant).uid == "u1"
    assert federation(account({TENANT_ID_ANNOTATION: tenant.upper()}), ref, client, "ns", tenant).uid == "u1"
    with pytest.raises(CredentialError) as caught:
        federation(account({TENANT_ID_ANNOTATION: "0b1c2d3e-0000-4000-8000-0000000000bb"}), ref, client, "ns", tenant)
    assert caught.value.reason == Reason.SERVICE_ACCOUNT_NOT_AUTHORIZED and TENANT_ID_ANNOTATION in caught.value.message
