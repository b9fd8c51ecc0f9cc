"""Key pairs and self-signed certificates for an Entra app's certificate credential, made by graphcred itself so
that it can roll the app's certificate (register the next one with Graph's addKey, remove the old with removeKey).

Pure: the current time is an argument; no I/O, no logging. The private key never shows itself in repr.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

# Entra accepts RSA keys of 2048 to 4096 bits on app certificates (credentials.MAX_RSA_KEY_BITS).
MIN_BITS, MAX_BITS = 2048, 4096
# Nodes' clocks differ by a little: a certificate made "now" must already be valid where it is checked.
CLOCK_SKEW = dt.timedelta(minutes=5)
# X.509's upper bound for a common name (RFC 5280 ub-common-name); cryptography refuses longer ones.
MAX_COMMON_NAME = 64
MAX_CERT_PEM = 64 * 1024  # describe_certificate reads a leaf certificate (or a chain), never more


@dataclass(frozen=True)
class GeneratedKey:
    """A new RSA key and its self-signed certificate. Thumbprints are upper-case hex of the certificate's DER:
    `thumbprint` (SHA-1) is what Entra shows and stores as customKeyIdentifier; times are the certificate's own."""

    key_pem: bytes = field(repr=False)  # PKCS#8 PEM, unencrypted: the Secret that holds it is the protection
    cert_pem: bytes
    thumbprint: str
    thumbprint_sha256: str
    not_before: dt.datetime
    not_after: dt.datetime

    @property
    def cert_der(self) -> bytes:
        """The certificate's DER: what addKey's keyCredential carries (base64)."""
        return x509.load_pem_x509_certificate(self.cert_pem).public_bytes(serialization.Encoding.DER)

    def private_key(self) -> rsa.RSAPrivateKey:
        """The private key (to sign proofs of possession and client assertions with)."""
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):  # generate_key makes RSA keys only
            raise TypeError("not an RSA key")
        return key


@dataclass(frozen=True)
class CertificateInfo:
    """What status may show of a certificate: nothing secret."""

    thumbprint: str  # SHA-1 of the DER, upper-case hex
    thumbprint_sha256: str  # SHA-256 of the DER, upper-case hex
    not_before: dt.datetime
    not_after: dt.datetime
    common_name: str | None  # the subject's CN; None if it has none


def generate_key(common_name: str, validity: dt.timedelta, now: dt.datetime, bits: int = 2048) -> GeneratedKey:
    """A new RSA key (`bits`, 2048 to 4096) and a self-signed certificate for it: SHA-256 signature, subject and
    issuer CN=`common_name` (cut to 64 characters), valid from 5 minutes before `now` (clock skew) to `now` +
    `validity`, a random serial, not a CA, key usage digitalSignature only. `now` must be timezone-aware.
    Raises ValueError for arguments that cannot make a certificate Entra accepts."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if validity <= dt.timedelta(0):
        raise ValueError("validity must be positive")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"Entra accepts RSA keys of {MIN_BITS} to {MAX_BITS} bits, not {bits}")
    name = _name(common_name)
    start = now.astimezone(dt.UTC).replace(microsecond=0)  # X.509 times have whole seconds
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - CLOCK_SKEW)
        .not_valid_after(start + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    info = _info(cert)
    return GeneratedKey(key_pem=key_pem, cert_pem=cert.public_bytes(serialization.Encoding.PEM),
                        thumbprint=info.thumbprint, thumbprint_sha256=info.thumbprint_sha256,
                        not_before=info.not_before, not_after=info.not_after)


def describe_certificate(cert_pem: bytes) -> CertificateInfo:
    """Thumbprints, validity and subject CN of the (first) certificate in `cert_pem`. Raises ValueError when it is
    not a PEM certificate."""
    if len(cert_pem) > MAX_CERT_PEM:
        raise ValueError(f"more than {MAX_CERT_PEM // 1024} KiB: not a certificate")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except (ValueError, TypeError):
        raise ValueError("not a PEM certificate") from None
    return _info(cert)


def _name(common_name: str) -> x509.Name:
    text = common_name.strip()[:MAX_COMMON_NAME]
    if not text:
        raise ValueError("the certificate's common name is empty")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def thumbprint(cert: x509.Certificate) -> str:
    """The certificate's thumbprint as Entra shows it (customKeyIdentifier): SHA-1 of the DER, upper-case hex.
    Entra names certificates by it: an identifier, not a security check."""
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303


def _info(cert: x509.Certificate) -> CertificateInfo:
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = common_names[0].value if common_names else None
    return CertificateInfo(
        thumbprint=thumbprint(cert),
        thumbprint_sha256=cert.fingerprint(hashes.SHA256()).hex().upper(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        common_name=value if isinstance(value, str) else None,
    )
