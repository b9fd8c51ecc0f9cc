"""Certificate rotation, the pure part: what state a certificate Secret is in, which step comes next, what the user
is told. The rotator (rotator.py) does the I/O: it reads the Secret, asks `plan`, carries the step out, records it.

A rotation's steps, each recorded in the Secret before the next begins (keys.py names the keys and annotations):
  1. store: the next key pair goes into the Secret (next.crt, next.key) before Entra learns of it;
  2. register: addKey with a proof signed by the current key; the keyId Entra answered is recorded;
  3. switch: once Entra issues a token for the next key (its replication takes a while, the current key serves
     meanwhile), the next pair becomes tls.crt/tls.key and the old key's id is kept as the previous one;
  4. remove: removeKey of the previous key, with a proof signed by the new one; then the record is cleared.
So the working key is never touched before its successor has been proven, and no private key Entra knows is ever
dropped before Entra forgets it (except a person's first key whose keyId graphcred cannot learn: left in place).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from graphcred.acquire.credentials import TLS_CERT_KEY
from graphcred.acquire.keygen import thumbprint
from graphcred.api.keys import (
    ADDING_ANNOTATION,
    GENERATED_BY_ANNOTATION,
    KEY_ID_ANNOTATION,
    NEXT_CERT_KEY,
    NEXT_KEY_ID_ANNOTATION,
    NEXT_KEY_KEY,
    PREVIOUS_KEY_ID_ANNOTATION,
    PREVIOUS_THUMBPRINT_ANNOTATION,
    RENEWED_AT_ANNOTATION,
    UNKNOWN_KEY_ID,
)
from graphcred.api.model import GUID_PATTERN, CertificateRotation, CertificateStatus, Condition
from graphcred.base.times import rfc3339

RENEWAL_CONDITION = "CertificateRenewal"
MAX_PEM = 8192  # status.certificate.pem's bound: a leaf certificate is 1-2 KB
NOT_REGISTERED_RETRY = 30.0  # seconds between token requests while a person has yet to upload the certificate
_GUID = re.compile(GUID_PATTERN)


@dataclass(frozen=True)
class CertFacts:
    """Public facts of one certificate."""

    thumbprint: str  # SHA-1, upper-case hex
    thumbprint_sha256: str
    not_after: dt.datetime
    pem: str


def cert_facts(pem: bytes) -> CertFacts | None:
    """The first certificate of a PEM bundle; None if there is none that parses."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    return CertFacts(thumbprint(cert), cert.fingerprint(hashes.SHA256()).hex().upper(), cert.not_valid_after_utc,
                     cert.public_bytes(serialization.Encoding.PEM).decode())


def _decoded(data: Mapping[str, Any], key: str) -> bytes | None:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _key_id(value: Any) -> str | None:
    if value == UNKNOWN_KEY_ID:
        return UNKNOWN_KEY_ID
    return value.lower() if isinstance(value, str) and _GUID.fullmatch(value) else None


@dataclass(frozen=True)
class KeyState:
    """A certificate Secret as rotation sees it."""

    version: str
    current: CertFacts | None
    key_id: str | None  # of the current key: recorded, else the spec's rotation.keyId
    next: CertFacts | None  # a next pair is stored (certificate and key)
    next_key_id: str | None  # a GUID, UNKNOWN_KEY_ID, or None: not registered yet
    adding: bool  # addKey of the next certificate was sent at least once
    previous_key_id: str | None  # switched away from, not yet removed (a GUID or UNKNOWN_KEY_ID)
    previous_thumbprint: str | None
    renewed_at: str | None
    generated: bool

    @classmethod
    def of(cls, secret: Mapping[str, Any], rotation: CertificateRotation) -> KeyState:
        metadata = secret.get("metadata") or {}
        notes = metadata.get("annotations") or {}
        data = secret.get("data") or {}
        current_pem = _decoded(data, TLS_CERT_KEY)
        next_pem = _decoded(data, NEXT_CERT_KEY)
        has_next_key = _decoded(data, NEXT_KEY_KEY) is not None
        previous = notes.get(PREVIOUS_THUMBPRINT_ANNOTATION)
        renewed = notes.get(RENEWED_AT_ANNOTATION)
        return cls(
            version=str(metadata.get("resourceVersion", "")),
            current=cert_facts(current_pem) if current_pem else None,
            key_id=_key_id(notes.get(KEY_ID_ANNOTATION)) or (rotation.key_id.lower() if rotation.key_id else None),
            next=cert_facts(next_pem) if next_pem and has_next_key else None,
            next_key_id=_key_id(notes.get(NEXT_KEY_ID_ANNOTATION)),
            adding=ADDING_ANNOTATION in notes,
            previous_key_id=_key_id(notes.get(PREVIOUS_KEY_ID_ANNOTATION)),
            previous_thumbprint=previous if isinstance(previous, str) else None,
            renewed_at=renewed if isinstance(renewed, str) else None,
            generated=notes.get(GENERATED_BY_ANNOTATION) == "graphcred",
        )


class Step(enum.Enum):
    IDLE = "idle"  # nothing to do until `due`
    STORE = "store"  # generate and store the next key pair
    REGISTER = "register"  # addKey of the stored next certificate
    SWITCH = "switch"  # once Entra accepts the next key: make it the current one
    REMOVE = "remove"  # removeKey of the previous key


@dataclass(frozen=True)
class Plan:
    step: Step
    due: dt.datetime | None = None  # IDLE: when the rotation starts


def renew_at(state: KeyState, rotation: CertificateRotation) -> dt.datetime | None:
    if state.current is None:
        return None
    return state.current.not_after - rotation.renew_before_delta()


def plan(state: KeyState, rotation: CertificateRotation, now: dt.datetime) -> Plan:
    """The next step. Steps in progress come first, in the order they were started: a previous key to remove, a
    stored next key to register or switch to; then a new rotation once the current certificate is due."""
    if state.previous_key_id is not None:
        return Plan(Step.REMOVE)
    if state.next is not None:
        return Plan(Step.SWITCH if state.next_key_id is not None else Step.REGISTER)
    due = renew_at(state, rotation)
    if due is None:
        return Plan(Step.IDLE)
    if now >= due:
        return Plan(Step.STORE)
    return Plan(Step.IDLE, due)


# --- what the user sees ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """How the rotation of one Secret goes, as the rotator last saw it."""

    ok: bool  # False: the last attempt of a step failed (`message` says how)
    reason: str  # CamelCase, for the condition
    message: str
    retry_at: dt.datetime | None = None


def certificate_status(state: KeyState, rotation: CertificateRotation, registered: bool | None
                       ) -> CertificateStatus | None:
    """status.certificate. `registered`: whether Entra accepted the current certificate (False: the PEM is shown
    for the one upload a person must do; None: not known yet)."""
    if state.current is None:
        return None
    due = renew_at(state, rotation)
    return CertificateStatus(
        thumbprint=state.current.thumbprint, thumbprint_sha256=state.current.thumbprint_sha256,
        not_after=rfc3339(state.current.not_after), renew_at=rfc3339(due) if due is not None else None,
        key_id=state.key_id if state.key_id not in (None, UNKNOWN_KEY_ID) else None,
        next_thumbprint=state.next.thumbprint if state.next is not None else None,
        last_renewal_time=state.renewed_at,
        pem=state.current.pem if registered is False and len(state.current.pem) <= MAX_PEM else None)


def renewal_condition(previous: Condition | None, outcome: Outcome, generation: int, now: dt.datetime
                      ) -> Condition:
    """The CertificateRenewal condition: True while renewal works or is scheduled, False while a step keeps
    failing (the working key is untouched meanwhile and tokens still come: Ready says so on its own)."""
    status: Literal["True", "False"] = "True" if outcome.ok else "False"
    kept = previous.last_transition_time if previous is not None and previous.status == status else None
    return Condition(type=RENEWAL_CONDITION, status=status, reason=outcome.reason, message=outcome.message,
                     observed_generation=generation, last_transition_time=kept or rfc3339(now))


def scheduled(state: KeyState, rotation: CertificateRotation) -> Outcome:
    """The outcome while no step is under way."""
    due = renew_at(state, rotation)
    if state.current is None or due is None:
        return Outcome(True, "Pending", "waiting for the certificate Secret")
    return Outcome(True, "Scheduled", f"certificate {state.current.thumbprint} expires at "
                   f"{rfc3339(state.current.not_after)}; graphcred renews it from {rfc3339(due)}")


def not_registered(secret: str, thumbprint: str, client_id: str) -> str:
    """What to do when Entra does not know the certificate (the first one, generated by graphcred)."""
    return (f"Entra does not know certificate {thumbprint} of Secret {secret} (yet): upload it to app {client_id} "
            f"once: kubectl get secret {secret} -o jsonpath='{{.data.tls\\.crt}}' | base64 -d > cert.pem && "
            f"az ad app credential reset --id {client_id} --cert @cert.pem --append (graphcred status prints it "
            f"too); graphcred tries again by itself (every {NOT_REGISTERED_RETRY:.0f} s at first, less often "
            f"later; graphcred renew tries at once) and renews it by itself from then on")
