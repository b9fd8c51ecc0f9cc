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
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from graphcred.api.failures import Failure, Retry
from graphcred.api.keys import CLIENT_ID_ANNOTATION, TENANT_ID_ANNOTATION
from graphcred.api.model import GUID_PATTERN, CertificateRef, ClientSecretRef, Reason, WorkloadIdentityRef

TLS_CERT_KEY = "tls.crt"
TLS_KEY_KEY = "tls.key"
# Entra accepts RSA keys of 2048 to 4096 bits on app certificates (it refuses smaller ones itself, AADSTS700027).
# Larger keys are refused before they are parsed: validating an 8192-bit key costs seconds of CPU.
MAX_RSA_KEY_BITS = 4096
# A 4096-bit key in PEM is about 3.3 KB (PKCS#1 or PKCS#8); the rest is room for openssl's bag attributes.
MAX_KEY_PEM_BYTES = 16 * 1024
# A chain is the leaf and its intermediates; it goes into every assertion's header when sendX5c is set.
MAX_CHAIN_CERTIFICATES = 10
MAX_CHAIN_PEM_BYTES = 64 * 1024
_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_ENTRA_KEYS = f"Entra accepts RSA keys of 2048 to {MAX_RSA_KEY_BITS} bits"
V = TypeVar("V")
# the AKS workload identity convention: the ServiceAccount names the app that may use its tokens


class CredentialError(Failure):
    """The referenced credential is missing or unusable; it needs the user (a change of the Secret, the
    ServiceAccount or the spec). Except a certificate that becomes valid later (`usable_from`, its notBefore a
    moment ahead): transient, to be tried again then (the caller, who knows the time, sets when)."""

    def __init__(self, reason: Reason, message: str, *, usable_from: dt.datetime | None = None) -> None:
        super().__init__(reason, message, retry=Retry.NEEDS_USER if usable_from is None else Retry.TRANSIENT)
        self.usable_from = usable_from


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
    # SHA-256 of the key's PKCS#8 DER, taken once when it is parsed (the fingerprint needs no serialising per pass)
    key_digest: bytes = field(default=b"", repr=False, compare=False)

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
        h = hashlib.sha256(b"certificate\0" + (self.key_digest or _key_digest(self.key)))
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


@dataclass(frozen=True)
class ManagedIdentity:
    """The managed identity of the node or pod the operator runs on (IMDS, or the source MSAL detects): system-
    assigned (`client_id` None) or user-assigned by its client id. No secret at all; only a ClusterGraphApp may use
    it (it belongs to the operator's host, not to a namespace)."""

    client_id: str | None = None

    def fingerprint(self) -> str:
        return hashlib.sha256(f"managed-identity\0{self.client_id or 'system'}".encode()).hexdigest()

    def __repr__(self) -> str:
        return f"ManagedIdentity({self.client_id or 'system-assigned'})"


Material = ClientSecret | Certificate | Federation | ManagedIdentity


def _key_digest(key: rsa.RSAPrivateKey) -> bytes:
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return hashlib.sha256(der).digest()


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
    """The certificate and key of a kubernetes.io/tls Secret, if usable now (`parse_certificate`, then `usable`)."""
    return usable(parse_certificate(data, ref), ref, now)


def parse_certificate(data: Mapping[str, str] | None, ref: CertificateRef) -> Certificate:
    """Parse and check the certificate chain and its key: the costly part (run it off the event loop; its result
    depends on the Secret's data alone, so it can be kept per Secret version). Sizes are checked before anything
    is parsed, and the key's size before it is validated."""
    cert_pem = _decoded(data, TLS_CERT_KEY, ref.name)
    key_pem = _decoded(data, TLS_KEY_KEY, ref.name)
    if len(cert_pem) > MAX_CHAIN_PEM_BYTES or cert_pem.count(_PEM_CERTIFICATE) > MAX_CHAIN_CERTIFICATES:
        raise CredentialError(Reason.INVALID_CREDENTIAL,
                              f"Secret {ref.name!r} {TLS_CERT_KEY} holds more than a certificate chain: at most "
                              f"{MAX_CHAIN_CERTIFICATES} certificates and {MAX_CHAIN_PEM_BYTES} bytes (the leaf and "
                              "its intermediates)")
    if len(key_pem) > MAX_KEY_PEM_BYTES:
        raise CredentialError(Reason.INVALID_CREDENTIAL,
                              f"Secret {ref.name!r} {TLS_KEY_KEY} is {len(key_pem)} bytes, more than an RSA key "
                              f"of {MAX_RSA_KEY_BITS} bits takes; {_ENTRA_KEYS}")
    try:
        chain = tuple(x509.load_pem_x509_certificates(cert_pem))
    except ValueError:
        raise CredentialError(Reason.INVALID_CREDENTIAL,
                              f"Secret {ref.name!r} {TLS_CERT_KEY} is not a PEM certificate") from None
    leaf_key = chain[0].public_key()
    if isinstance(leaf_key, rsa.RSAPublicKey) and leaf_key.key_size > MAX_RSA_KEY_BITS:
        raise _too_large(ref, leaf_key.key_size)
    # First without the costly checks of the key's numbers: its size and its match with the certificate are
    # cheap to know, and a key that fails them is never validated at all.
    key = _private_key(key_pem, ref, validate=False)
    if key.key_size > MAX_RSA_KEY_BITS:
        raise _too_large(ref, key.key_size)
    if not isinstance(leaf_key, rsa.RSAPublicKey) or leaf_key.public_numbers() != key.public_key().public_numbers():
        raise CredentialError(Reason.INVALID_CREDENTIAL,
                              f"Secret {ref.name!r}: {TLS_KEY_KEY} does not match the first certificate in "
                              f"{TLS_CERT_KEY}")
    key = _private_key(key_pem, ref, validate=True)
    return Certificate(key=key, chain=chain, send_x5c=ref.send_x5c, key_digest=_key_digest(key))


def usable(parsed: Certificate, ref: CertificateRef, now: dt.datetime) -> Certificate:
    """`parsed` for `ref` (its sendX5c), if its certificate is valid at `now`."""
    leaf = parsed.leaf
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
    return parsed if parsed.send_x5c == ref.send_x5c else dataclasses.replace(parsed, send_x5c=ref.send_x5c)


def _too_large(ref: CertificateRef, bits: int) -> CredentialError:
    return CredentialError(Reason.INVALID_CREDENTIAL,
                           f"Secret {ref.name!r}: the key is {bits} bits; {_ENTRA_KEYS}: use a key of at most "
                           f"{MAX_RSA_KEY_BITS} bits")


def _private_key(key_pem: bytes, ref: CertificateRef, *, validate: bool) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None,
                                                 unsafe_skip_rsa_key_validation=not validate)
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
    return key


class VersionCache(Generic[V]):
    """One value per Secret (namespace, name), valid for one resourceVersion of it: a parse is done once per
    version, however many credentials read the Secret. Bounded: the least recently used Secret is forgotten."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[str, str], tuple[str, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, str], version: str) -> V | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] != version:
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: tuple[str, str], version: str, value: V) -> None:
        self._entries[key] = (version, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def drop(self, key: tuple[str, str], version: str, value: V) -> None:
        """Forget `value` (only it: another pass may have put a newer one meanwhile)."""
        entry = self._entries.get(key)
        if entry is not None and entry[0] == version and entry[1] is value:
            del self._entries[key]


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
