"""The key pairs and self-signed certificates graphcred makes to roll an app's certificate (acquire.keygen), and the
proof of possession Graph's addKey and removeKey take (acquire.graphkeys.sign_proof)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from graphcred.acquire.credentials import parse_certificate
from graphcred.acquire.graphkeys import PROOF_AUDIENCE, sign_proof
from graphcred.acquire.jwt import b64url, b64url_decode
from graphcred.acquire.keygen import GeneratedKey, describe_certificate, generate_key
from graphcred.api.model import CertificateRef

NOW = dt.datetime(2026, 5, 4, 12, 30, 15, 123456, tzinfo=dt.UTC)
YEAR = dt.timedelta(days=365)


@pytest.fixture(scope="module")
def generated() -> GeneratedKey:
    return generate_key("graphcred-rotation", YEAR, NOW)


def _cert(generated: GeneratedKey) -> x509.Certificate:
    return x509.load_pem_x509_certificate(generated.cert_pem)


def test_the_key_is_rsa_2048_pkcs8_unencrypted_and_matches_the_certificate(generated: GeneratedKey) -> None:
    assert generated.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, not PKCS#1 or encrypted
    key = serialization.load_pem_private_key(generated.key_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    public = _cert(generated).public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert key.public_key().public_numbers() == public.public_numbers()
    assert generated.private_key().private_numbers() == key.private_numbers()


def test_the_certificate_is_self_signed_sha256_and_verifies(generated: GeneratedKey) -> None:
    cert = _cert(generated)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "graphcred-rotation")])
    assert cert.subject == cert.issuer == name
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    cert.verify_directly_issued_by(cert)  # raises unless its own key signed it
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert cert.signature_hash_algorithm is not None
    public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not (usage.value.key_cert_sign or usage.value.key_encipherment or usage.value.crl_sign)


def test_thumbprints_are_the_certificates_fingerprints_in_upper_case_hex(generated: GeneratedKey) -> None:
    cert = _cert(generated)
    assert generated.thumbprint == cert.fingerprint(hashes.SHA1()).hex().upper()
    assert generated.thumbprint_sha256 == cert.fingerprint(hashes.SHA256()).hex().upper()
    assert len(generated.thumbprint) == 40 and generated.thumbprint == generated.thumbprint.upper()
    assert generated.cert_der == cert.public_bytes(serialization.Encoding.DER)


def test_validity_starts_five_minutes_early_and_lasts_the_validity(generated: GeneratedKey) -> None:
    cert = _cert(generated)
    whole = NOW.replace(microsecond=0)  # X.509 times have whole seconds
    assert generated.not_before == cert.not_valid_before_utc == whole - dt.timedelta(minutes=5)
    assert generated.not_after == cert.not_valid_after_utc == whole + YEAR


def test_serials_are_random() -> None:
    first, second = generate_key("a", YEAR, NOW), generate_key("a", YEAR, NOW)
    assert _cert(first).serial_number != _cert(second).serial_number
    assert first.thumbprint != second.thumbprint and first.key_pem != second.key_pem


def test_graphcred_itself_takes_the_generated_pair_as_certificate_material(generated: GeneratedKey) -> None:
    """What is stored in the tls Secret must be what acquisitions read back."""
    data = {"tls.crt": base64.b64encode(generated.cert_pem).decode(),
            "tls.key": base64.b64encode(generated.key_pem).decode()}
    material = parse_certificate(data, CertificateRef(name="rotated"))
    assert material.sha256_thumbprint.hex().upper() == generated.thumbprint_sha256


def test_a_long_common_name_is_cut_to_64_characters() -> None:
    name = "graphcred-" + "x" * 100
    cut = describe_certificate(generate_key(name, YEAR, NOW).cert_pem)
    assert cut.common_name == name[:64]


@pytest.mark.parametrize(("args", "why"), [
    (("", YEAR, NOW), "common name is empty"),
    (("cn", dt.timedelta(0), NOW), "validity"),
    (("cn", YEAR, NOW.replace(tzinfo=None)), "timezone-aware"),
    (("cn", YEAR, NOW, 1024), "2048 to 4096"),
    (("cn", YEAR, NOW, 8192), "2048 to 4096"),
], ids=["empty name", "no validity", "naive time", "small key", "huge key"])
def test_arguments_that_make_no_usable_certificate_are_refused(args: tuple[object, ...], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        generate_key(*args)  # type: ignore[arg-type]


def test_repr_hides_the_private_key(generated: GeneratedKey) -> None:
    text = repr(generated) + str(generated)
    assert "PRIVATE KEY" not in text and "key_pem" not in text
    body = generated.key_pem.decode().splitlines()[1]
    assert body not in text
    assert generated.thumbprint in text


def test_describe_certificate_for_status(generated: GeneratedKey) -> None:
    info = describe_certificate(generated.cert_pem)
    assert (info.thumbprint, info.thumbprint_sha256) == (generated.thumbprint, generated.thumbprint_sha256)
    assert (info.not_before, info.not_after, info.common_name) == (
        generated.not_before, generated.not_after, "graphcred-rotation")
    # a chain: the leaf is described
    other = generate_key("other", YEAR, NOW)
    assert describe_certificate(generated.cert_pem + other.cert_pem).thumbprint == generated.thumbprint


@pytest.mark.parametrize("pem", [b"", b"not a certificate", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END "
                                 b"CERTIFICATE-----\n", b"-----BEGIN CERTIFICATE-----\n" + b"A" * 70_000])
def test_describe_certificate_refuses_what_is_not_a_pem_certificate(pem: bytes) -> None:
    with pytest.raises(ValueError):
        describe_certificate(pem)


def test_describe_certificate_without_a_common_name() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Contoso")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW).not_valid_after(NOW + YEAR).sign(key, hashes.SHA256()))
    assert describe_certificate(cert.public_bytes(serialization.Encoding.PEM)).common_name is None


# --- the proof of possession ---------------------------------------------------------------------------------------
OBJECT_ID = "5B0C8D7A-3F1E-4C2B-9A6D-0E1F2A3B4C5D"


def _parts(proof: str) -> tuple[dict[str, object], dict[str, object], bytes, bytes]:
    header, claims, signature = proof.split(".")
    return (json.loads(b64url_decode(header)), json.loads(b64url_decode(claims)),
            f"{header}.{claims}".encode(), b64url_decode(signature))


def test_a_proof_is_rs256_with_x5t_and_graphs_claims(generated: GeneratedKey) -> None:
    cert = _cert(generated)
    sha1 = cert.fingerprint(hashes.SHA1())
    proof = sign_proof(generated.private_key(), sha1, OBJECT_ID, now=1_800_000_000)
    assert "=" not in proof and proof.count(".") == 2
    header, claims, signing_input, signature = _parts(proof)
    assert header == {"alg": "RS256", "typ": "JWT", "x5t": b64url(sha1)}
    assert bytes.fromhex(generated.thumbprint) == b64url_decode(str(header["x5t"]))
    jti = claims.pop("jti")
    assert uuid.UUID(str(jti)).version == 4
    assert claims == {"aud": PROOF_AUDIENCE, "iss": OBJECT_ID.lower(), "nbf": 1_800_000_000,
                      "exp": 1_800_000_300}
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())  # raises if it does not verify


def test_each_proof_has_its_own_jti_and_the_lifetime_asked_for(generated: GeneratedKey) -> None:
    sha1 = bytes.fromhex(generated.thumbprint)
    first = _parts(sign_proof(generated.private_key(), sha1, OBJECT_ID, now=100, lifetime=600))[1]
    second = _parts(sign_proof(generated.private_key(), sha1, OBJECT_ID, now=100, lifetime=600))[1]
    assert first["jti"] != second["jti"]
    assert (first["nbf"], first["exp"]) == (100, 700)


@pytest.mark.parametrize(("sha1", "object_id", "lifetime", "why"), [
    (b"\x00" * 32, OBJECT_ID, 300, "20-byte SHA-1"),
    (b"\x00" * 20, "not-a-guid", 300, "object_id must be a GUID"),
    (b"\x00" * 20, OBJECT_ID, 601, "1 to 600 s"),
    (b"\x00" * 20, OBJECT_ID, 0, "1 to 600 s"),
], ids=["sha256 digest", "client id form", "over ten minutes", "no lifetime"])
def test_a_proof_graph_would_refuse_is_not_signed(generated: GeneratedKey, sha1: bytes, object_id: str,
                                                  lifetime: int, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        sign_proof(generated.private_key(), sha1, object_id, now=100, lifetime=lifetime)
