from __future__ import annotations

import base64
import datetime as dt

import pytest

from graphcred import credentials
from graphcred.credentials import CredentialError
from graphcred.model import CertificateRef, ClientSecretRef, Reason
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
