from __future__ import annotations

import base64
import dataclasses
import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from graphcred.acquire import credentials
from graphcred.acquire.credentials import CredentialError
from graphcred.api.failures import Failure, Retry
from graphcred.api.model import CertificateRef, ClientSecretRef, Reason, WorkloadIdentityRef
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


def test_a_credential_error_is_a_failure_that_needs_the_user_unless_it_is_usable_later() -> None:
    """One failure carrier: what the reconciler reports of any failure (reason, message, retry)."""
    missing = CredentialError(Reason.CREDENTIAL_NOT_FOUND, "Secret c not found")
    assert isinstance(missing, Failure) and (missing.retry, missing.retry_after) == (Retry.NEEDS_USER, None)
    assert str(missing) == missing.message == "Secret c not found"
    early = self_signed("early", not_before=now() + dt.timedelta(minutes=5), not_after=now() + dt.timedelta(days=1))
    with pytest.raises(CredentialError) as err:
        credentials.certificate(_tls(early.cert_pem, early.key_pem), CertificateRef(name="c"), now())
    assert err.value.usable_from is not None and err.value.retry == Retry.TRANSIENT, "tried again once valid"


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
    from graphcred.acquire.credentials import federation
    from graphcred.api.keys import TENANT_ID_ANNOTATION
    from graphcred.api.model import WorkloadIdentityRef

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


# --- bounded work per certificate Secret ---------------------------------------------------------------
def _self_signed(key: rsa.RSAPrivateKey, common_name: str = "big") -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now() - dt.timedelta(days=1))
            .not_valid_after(now() + dt.timedelta(days=9)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def big_key() -> rsa.RSAPrivateKey:
    # Larger than Entra accepts (4096 bits), yet quick to make; validating it costs seconds (8192 bits: ~5 s)
    return rsa.generate_private_key(public_exponent=65537, key_size=4608)


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Each private-key load, True where it validates the key's numbers (the costly part)."""
    loads: list[bool] = []
    original = serialization.load_pem_private_key

    def load(data: bytes, password: bytes | None, **kw: Any) -> Any:
        loads.append(not kw.get("unsafe_skip_rsa_key_validation", False))
        return original(data, password, **kw)

    monkeypatch.setattr(serialization, "load_pem_private_key", load)
    return loads


def test_a_key_larger_than_entra_accepts_is_refused_without_validating_it(big_key: rsa.RSAPrivateKey,
                                                                          validations: list[bool]) -> None:
    with pytest.raises(CredentialError) as err:
        credentials.certificate(_tls(_self_signed(big_key), _pem(big_key)), CertificateRef(name="c"), now())
    assert err.value.reason == Reason.INVALID_CREDENTIAL
    assert err.value.message == ("Secret 'c': the key is 4608 bits; Entra accepts RSA keys of 2048 to 4096 bits: use "
                                 "a key of at most 4096 bits")
    assert True not in validations, "the oversized key was validated"


def test_a_large_key_beside_a_small_certificate_is_refused_without_validating_it(
        big_key: rsa.RSAPrivateKey, validations: list[bool]) -> None:
    pair = self_signed("small")
    with pytest.raises(CredentialError) as err:
        credentials.certificate(_tls(pair.cert_pem, _pem(big_key)), CertificateRef(name="c"), now())
    assert "the key is 4608 bits" in err.value.message
    assert True not in validations


def test_a_key_that_does_not_match_is_never_validated(validations: list[bool]) -> None:
    pair, other = self_signed("a"), self_signed("b")
    with pytest.raises(CredentialError, match="does not match"):
        credentials.certificate(_tls(pair.cert_pem, other.key_pem), CertificateRef(name="c"), now())
    assert True not in validations
    credentials.certificate(_tls(pair.cert_pem, pair.key_pem), CertificateRef(name="c"), now())
    assert validations.count(True) == 1, "a usable key is validated, once"


def test_a_key_pem_larger_than_any_key_entra_accepts_is_refused_unread(validations: list[bool]) -> None:
    pair = self_signed("a")
    padded = b"Bag Attributes\n" + b"x" * credentials.MAX_KEY_PEM_BYTES + b"\n" + pair.key_pem
    with pytest.raises(CredentialError) as err:
        credentials.certificate(_tls(pair.cert_pem, padded), CertificateRef(name="c"), now())
    assert f"tls.key is {len(padded)} bytes, more than an RSA key of 4096 bits takes" in err.value.message
    assert validations == []


def test_a_chain_is_bounded() -> None:
    # 1,075 certificates in tls.crt were parsed, and sent in every assertion's header
    pair = self_signed("leaf")
    ref = CertificateRef(name="c", sendX5c=True)
    ten = credentials.certificate(_tls(pair.cert_pem * 10, pair.key_pem), ref, now())
    assert len(ten.x5c) == 10
    with pytest.raises(CredentialError) as err:
        credentials.certificate(_tls(pair.cert_pem * 11, pair.key_pem), ref, now())
    assert "at most 10 certificates" in err.value.message
    with pytest.raises(CredentialError, match="and 65536 bytes"):
        credentials.certificate(_tls(b"#" * 65536 + pair.cert_pem, pair.key_pem), ref, now())


def test_parsed_material_serves_each_reference_and_is_checked_against_the_time_each_pass() -> None:
    pair = self_signed("a", not_after=now() + dt.timedelta(hours=1))
    parsed = credentials.parse_certificate(_tls(pair.cert_pem, pair.key_pem), CertificateRef(name="c"))
    with_x5c = credentials.usable(parsed, CertificateRef(name="c", sendX5c=True), now())
    assert with_x5c.send_x5c and with_x5c.fingerprint() != parsed.fingerprint()
    assert credentials.usable(parsed, CertificateRef(name="c"), now()) is parsed
    with pytest.raises(CredentialError, match="expired"):
        credentials.usable(parsed, CertificateRef(name="c"), now() + dt.timedelta(hours=2))


def test_the_version_cache_keeps_one_version_per_secret_and_a_bounded_number_of_secrets() -> None:
    cache: credentials.VersionCache[str] = credentials.VersionCache(size=2)
    cache.put(("ns", "a"), "1", "a1")
    assert cache.get(("ns", "a"), "1") == "a1" and cache.get(("ns", "a"), "2") is None
    cache.put(("ns", "a"), "2", "a2")
    assert cache.get(("ns", "a"), "1") is None and cache.get(("ns", "a"), "2") == "a2"
    cache.put(("ns", "b"), "1", "b1")
    cache.get(("ns", "a"), "2")  # a is used more recently than b
    cache.put(("ns", "c"), "1", "c1")
    assert len(cache) == 2 and cache.get(("ns", "b"), "1") is None and cache.get(("ns", "a"), "2") == "a2"
    cache.drop(("ns", "a"), "2", "another")
    assert cache.get(("ns", "a"), "2") == "a2"
    cache.drop(("ns", "a"), "2", "a2")
    assert cache.get(("ns", "a"), "2") is None
