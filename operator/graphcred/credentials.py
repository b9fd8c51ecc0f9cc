"""Credential material from the namespace: a client secret or a certificate and its key (from Secrets), or a
ServiceAccount to federate (workload identity).

Pure: takes a Secret's `data` (base64 values, as the API returns them) or a ServiceAccount object and returns
material or a CredentialError with a reason and a message that tells the user what to fix. Material never shows
itself in repr or logs.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .model import GUID_PATTERN, CertificateRef, ClientSecretRef, Reason, WorkloadIdentityRef

TLS_CERT_KEY = "tls.crt"
TLS_KEY_KEY = "tls.key"
# the AKS workload identity convention: the ServiceAccount names the app that may use its tokens
CLIENT_ID_ANNOTATION = "azure.workload.identity/client-id"
TENANT_ID_ANNOTATION = "azure.workload.identity/tenant-id"


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


@dataclass(frozen=True)
class Federation:
    """A ServiceAccount whose token is the client assertion (workload identity federation). The token itself is
    requested just before each acquisition and carried only by the copy handed to the token client
    (`with_assertion`): it is no part of the fingerprint, of equality, or of repr."""

    namespace: str
    service_account: str
    uid: str
    audience: str
    client_id: str  # the ServiceAccount's azure.workload.identity/client-id, lower case (== spec.clientId)
    assertion: str | None = field(default=None, repr=False, compare=False)

    def fingerprint(self) -> str:
        # Another ServiceAccount (even re-created under the same name: a new uid) or audience is other material:
        # credentials share a token only through the very same ServiceAccount.
        parts = (self.uid, self.audience, self.client_id)
        return hashlib.sha256(("federation\0" + "\0".join(parts)).encode()).hexdigest()

    def with_assertion(self, assertion: str) -> Federation:
        return dataclasses.replace(self, assertion=assertion)

    def __repr__(self) -> str:
        return (f"Federation(serviceAccount={self.namespace}/{self.service_account}, uid={self.uid}, "
                f"audience={self.audience})")


Material = ClientSecret | Certificate | Federation


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


def federation(service_account: Mapping[str, Any], ref: WorkloadIdentityRef, client_id: str, namespace: str,
               tenant_id: str | None = None) -> Federation:
    """The ServiceAccount `ref` names (read from `namespace`) as federation material, if it consents to `client_id`
    (spec.clientId): its annotation azure.workload.identity/client-id must name that app. GUIDs are compared
    case-insensitively (hex digits); nothing else is normalised."""
    meta = service_account.get("metadata") or {}
    name = ref.service_account_name
    annotated = (meta.get("annotations") or {}).get(CLIENT_ID_ANNOTATION)
    fix = (f"annotate it to allow this app: kubectl annotate serviceaccount {name} -n {namespace} "
           f"{CLIENT_ID_ANNOTATION}={client_id} --overwrite")
    if not isinstance(annotated, str) or not annotated:
        raise CredentialError(Reason.SERVICE_ACCOUNT_NOT_AUTHORIZED,
                              f"ServiceAccount {name} has no annotation {CLIENT_ID_ANNOTATION}, so it does not "
                              f"allow any app to use its tokens; {fix}")
    if annotated.lower() != client_id.lower():
        named = (f"another client id ({annotated})" if re.fullmatch(GUID_PATTERN, annotated)
                 else "a value that is not a client id (a GUID)")
        raise CredentialError(Reason.SERVICE_ACCOUNT_NOT_AUTHORIZED,
                              f"ServiceAccount {name}'s annotation {CLIENT_ID_ANNOTATION} names {named}, not "
                              f"spec.clientId {client_id}; if this app is to use it instead, {fix}")
    # The optional tenant annotation (AKS's webhook and KEDA honour it) narrows the consent to one tenant: a
    # multi-tenant app must not be used in a tenant the ServiceAccount's owner did not name.
    tenant = (meta.get("annotations") or {}).get(TENANT_ID_ANNOTATION)
    if tenant_id is not None and isinstance(tenant, str) and tenant and tenant.lower() != tenant_id.lower():
        raise CredentialError(Reason.SERVICE_ACCOUNT_NOT_AUTHORIZED,
                              f"ServiceAccount {name}'s annotation {TENANT_ID_ANNOTATION} names another tenant, not "
                              f"spec.tenantId {tenant_id}")
    return Federation(namespace=namespace, service_account=name, uid=str(meta.get("uid", "")),
                      audience=ref.audience, client_id=annotated.lower())
