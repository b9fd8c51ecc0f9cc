"""Credential material from the namespace's Secrets: a client secret, or a certificate and its key.

Pure: takes a Secret's `data` (base64 values, as the API returns them) and returns material or a CredentialError
with a reason and a message that tells the user what to fix. Material never shows itself in repr or logs.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .model import CertificateRef, ClientSecretRef, Reason

TLS_CERT_KEY = "tls.crt"
TLS_KEY_KEY = "tls.key"


class CredentialError(Exception):
    """The referenced credential is missing or unusable; permanent until the Secret or the spec changes."""

    def __init__(self, reason: Reason, message: str, *, usable_from: dt.datetime | None = None) -> None:
        super().__init__(message)
        # a certificate that becomes valid later (notBefore a moment ahead): try again then, not on the slow schedule
        self.usable_from = usable_from
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ClientSecret:
    value: str = field(repr=False)

    def fingerprint(self) -> str:
        return hashlib.sha256(b"client-secret\0" + self.value.encode()).hexdigest()

    def __repr__(self) -> str:
        return "ClientSecret(<redacted>)"


@dataclass(frozen=True)
class Certificate:
    key: rsa.RSAPrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...]
    send_x5c: bool

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def sha256_thumbprint(self) -> bytes:
        return self.leaf.fingerprint(hashes.SHA256())

    @property
    def x5c(self) -> tuple[str, ...]:
        """Standard base64 DER of each certificate in the chain, leaf first (RFC 7515 `x5c`)."""
        return tuple(base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in self.chain)

    def fingerprint(self) -> str:
        key_der = self.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        h = hashlib.sha256(b"certificate\0" + key_der)
        for c in self.chain:
            h.update(c.fingerprint(hashes.SHA256()))
        h.update(b"x5c" if self.send_x5c else b"")
        return h.hexdigest()

    def __repr__(self) -> str:
        return f"Certificate(thumbprint={self.sha256_thumbprint.hex()}, send_x5c={self.send_x5c})"


Material = ClientSecret | Certificate


def _decoded(data: Mapping[str, str] | None, key: str, secret_name: str) -> bytes:
    if not data or key not in data:
        raise CredentialError(Reason.CREDENTIAL_NOT_FOUND,
                              f"Secret {secret_name!r} has no key {key!r}")
    try:
        return base64.b64decode(data[key], validate=True)
    except (binascii.Error, ValueError):
        raise CredentialError(Reason.INVALID_CREDENTIAL,
                              f"Secret {secret_name!r} key {key!r} is not valid base64") from None


def client_secret(data: Mapping[str, str] | None, ref: ClientSecretRef) -> ClientSecret:
    raw = _decoded(data, ref.key, ref.name)
    try:
        # Entra client secrets never contain whitespace; a trailing newline from `--from-file` is not part of it.
        value = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CredentialError(Reason.INVALID_CREDENTIAL,
                              f"Secret {ref.name!r} key {ref.key!r} is not UTF-8 text") from None
    if not value:
        raise CredentialError(Reason.INVALID_CREDENTIAL, f"Secret {ref.name!r} key {ref.key!r} is empty")
    return ClientSecret(value)


def certificate(data: Mapping[str, str] | None, ref: CertificateRef, now: dt.datetime) -> Certificate:
    cert_pem = _decoded(data, TLS_CERT_KEY, ref.name)
    key_pem = _decoded(data, TLS_KEY_KEY, ref.name)
    try:
        chain = tuple(x509.load_pem_x509_certificates(cert_pem))
    except ValueError:
        raise CredentialError(Reason.INVALID_CREDENTIAL,
                              f"Secret {ref.name!r} {TLS_CERT_KEY} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CredentialError(Reason.INVALID_CREDENTIAL,
                              f"Secret {ref.name!r} {TLS_KEY_KEY} is encrypted; store the key unencrypted "
                              "(the Secret is the protection)") from None
    except (ValueError, binascii.Error):
        raise CredentialError(Reason.INVALID_CREDENTIAL,
                              f"Secret {ref.name!r} {TLS_KEY_KEY} is not a PEM private key") from None
    except Exception:  # noqa: BLE001 - cryptography raises assorted errors on garbage; never echo the key
        raise CredentialError(Reason.INVALID_CREDENTIAL,
                              f"Secret {ref.name!r} {TLS_KEY_KEY} could not be read as a private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CredentialError(Reason.INVALID_CREDENTIAL,
                              f"Secret {ref.name!r} {TLS_KEY_KEY} is not an RSA key; Entra app certificates "
                              "must be RSA")
    leaf = chain[0]
    leaf_key = leaf.public_key()
    if not isinstance(leaf_key, rsa.RSAPublicKey) or leaf_key.public_numbers() != key.public_key().public_numbers():
        raise CredentialError(Reason.INVALID_CREDENTIAL,
                              f"Secret {ref.name!r}: {TLS_KEY_KEY} does not match the first certificate in "
                              f"{TLS_CERT_KEY}")
    if leaf.not_valid_after_utc <= now:
        raise CredentialError(Reason.INVALID_CREDENTIAL,
                              f"Secret {ref.name!r}: certificate expired at "
                              f"{leaf.not_valid_after_utc.strftime('%Y-%m-%dT%H:%M:%SZ')}; upload a new "
                              "certificate to the app and update the Secret")
    if leaf.not_valid_before_utc > now:
        raise CredentialError(Reason.INVALID_CREDENTIAL,
                              f"Secret {ref.name!r}: certificate is not valid before "
                              f"{leaf.not_valid_before_utc.strftime('%Y-%m-%dT%H:%M:%SZ')}",
                              usable_from=leaf.not_valid_before_utc)
    return Certificate(key=key, chain=chain, send_x5c=ref.send_x5c)
