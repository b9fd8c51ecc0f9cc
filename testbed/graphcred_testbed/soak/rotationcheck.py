"""The checker's part for rotating certificates (rotating.py), judged from the certificate Secrets (as the checker's
poll lists them) and the issuer's keys (`issuer.keys`, read after the Secrets), never from the operator's status:

- `rotation-no-valid-key`: none of the app's current keys (not removed, replicated, certificate not expired) is a
  certificate the Secret holds (tls.crt, or next.crt mid-rotation) for longer than `rotation_grace` (a key just
  added, or just uploaded, is not accepted until it replicates). Then no token can be had, by graphcred or anyone;
- `rotation-token-expired`: a token Secret of a rotating credential holding an expired token, whatever the reason
  (the tokens live long enough to outlast every fault of the plan: a renewal must never cost a consumer its token);
- `rotation-orphan`: at the end, once quiet, a current key of the app that the Secret does not hold, unless
  graphcred recorded it as "unknown" (a key added whose keyId it could not learn: status says so, the key stays).

The functions at the top are pure (tests/unit/test_soak_rotation.py); `_RotationChecker` applies them each poll.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509

from graphcred.api.keys import (
    KEY_ID_ANNOTATION,
    NEXT_CERT_KEY,
    NEXT_KEY_ID_ANNOTATION,
    PREVIOUS_KEY_ID_ANNOTATION,
    PREVIOUS_THUMBPRINT_ANNOTATION,
    UNKNOWN_KEY_ID,
)

from ..issuer import KeyCredential, sha1_hex

if TYPE_CHECKING:
    from .run import Soak

CERT_KEY = "tls.crt"


@dataclass(frozen=True)
class EntraKey:
    """One certificate credential of an app, as the checker judges it (wall-clock seconds)."""

    key_id: str
    thumbprint: str
    usable_from: float
    not_after: float
    removed_at: float | None = None

    @classmethod
    def of(cls, key: KeyCredential) -> EntraKey:
        return cls(key.key_id, key.thumbprint, key.usable_from, key.end.timestamp(), key.removed_at)

    @property
    def current(self) -> bool:
        return self.removed_at is None

    def valid(self, now: float) -> bool:
        """The token service accepts assertions signed with it now (and its certificate has not expired)."""
        return self.current and self.usable_from <= now < self.not_after


def thumbprint(data: Mapping[str, Any], key: str) -> str | None:
    """The SHA-1 thumbprint of the certificate at a Secret's data `key` (base64 PEM); None if absent or unreadable."""
    value = data.get(key)
    if not isinstance(value, str) or not value:
        return None
    try:
        return sha1_hex(x509.load_pem_x509_certificate(base64.b64decode(value, validate=True)))
    except (ValueError, binascii.Error):
        return None


def held(secret: Mapping[str, Any]) -> set[str]:
    """The certificates a certificate Secret holds: tls.crt, and next.crt while a rotation is under way."""
    data = secret.get("data") or {}
    return {t for t in (thumbprint(data, CERT_KEY), thumbprint(data, NEXT_CERT_KEY)) if t is not None}


def unknown(secret: Mapping[str, Any]) -> set[str]:
    """Thumbprints of the keys graphcred recorded with the keyId "unknown" (added, keyId not learned)."""
    notes = (secret.get("metadata") or {}).get("annotations") or {}
    data = secret.get("data") or {}
    found = set()
    if notes.get(KEY_ID_ANNOTATION) == UNKNOWN_KEY_ID:
        found.add(thumbprint(data, CERT_KEY))
    if notes.get(NEXT_KEY_ID_ANNOTATION) == UNKNOWN_KEY_ID:
        found.add(thumbprint(data, NEXT_CERT_KEY))
    previous = notes.get(PREVIOUS_THUMBPRINT_ANNOTATION)
    if notes.get(PREVIOUS_KEY_ID_ANNOTATION) == UNKNOWN_KEY_ID and isinstance(previous, str):
        found.add(previous.upper())
    return {t for t in found if t}


def coverage(keys: Iterable[EntraKey], holds: set[str], now: float) -> str | None:
    """None if a key graphcred holds is valid now; else what the app has (the violation's detail)."""
    keys = list(keys)
    if any(k.valid(now) and k.thumbprint in holds for k in keys):
        return None
    mine = [k for k in keys if k.current and k.thumbprint in holds]
    others = [k for k in keys if k.current and k.thumbprint not in holds]
    parts = []
    for k in mine:
        if now < k.usable_from:
            parts.append(f"{k.thumbprint[:8]} replicating for {k.usable_from - now:.1f} s more")
        elif now >= k.not_after:
            parts.append(f"{k.thumbprint[:8]} expired {now - k.not_after:.0f} s ago")
    return (f"the Secret holds {len(holds)} certificate(s), none valid in Entra"
            + (f" ({'; '.join(parts)})" if parts else "") + f"; the app's other current keys: {len(others)}")


def orphans(keys: Iterable[EntraKey], holds: set[str], recorded_unknown: set[str]) -> list[EntraKey]:
    """The app's current keys the Secret does not hold, but for those graphcred recorded as unknown."""
    return [k for k in keys if k.current and k.thumbprint not in holds and k.thumbprint not in recorded_unknown]


def overdue(since: float | None, now: float, grace: float) -> bool:
    """A condition first seen at `since` (None: not seen) has lasted beyond the grace."""
    return since is not None and now - since > grace


class _RotationChecker:
    def __init__(self, soak: Soak) -> None:
        self.soak = soak
        self.uncovered_since: dict[str, float] = {}  # certificate Secret -> first poll without a valid held key
        self.recorded_unknown: dict[str, set[str]] = {}  # certificate Secret -> thumbprints recorded "unknown"
        self.expired_seen: set[str] = set()  # token (tail) already reported

    @property
    def enabled(self) -> bool:
        return bool(self.soak.rotating.apps)

    def judge(self, secrets: list[dict[str, Any]], tokens: Mapping[str, tuple[dict[str, Any], str | None]],
              live: Mapping[str, dict[str, Any]], t0: float) -> None:
        """One poll: `secrets` as listed (before the issuer is read), `tokens` the token Secrets matched to live
        credentials (by uid)."""
        by_name = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in secrets}
        for rapp in self.soak.rotating.apps:
            secret = by_name.get((rapp.key.namespace, rapp.key.name))
            if secret is None or rapp.uploaded_at is None:
                continue  # before the upload there is nothing in Entra to hold
            self.recorded_unknown.setdefault(rapp.key.ref, set()).update(unknown(secret))
            keys = [EntraKey.of(k) for k in self.soak.bed.issuer.keys(rapp.app.client_id)]
            now = time.time()
            self.soak.checker.checks["rotation-keys"] += 1
            why = coverage(keys, held(secret), now)
            if why is None:
                self.uncovered_since.pop(rapp.key.ref, None)
                continue
            since = self.uncovered_since.setdefault(rapp.key.ref, now)
            if overdue(since, now, self.soak.cfg.rotation_grace):
                self.soak.violation("rotation-no-valid-key", rapp.key.ref, f"for {now - since:.0f} s: {why}",
                                    dedup="for ")
        refs = {c.ref for c in self.soak.rotating.creds}
        for uid, (_, token) in tokens.items():
            meta = live[uid]["metadata"]
            ref = f"{meta['namespace']}/{meta['name']}"
            if ref not in refs or not token:
                continue
            self.soak.checker.checks["rotation-token"] += 1
            claims = self.soak.checker._claims_of(token) or {}
            exp = float(claims.get("exp", 0))
            if exp < t0 and token[-16:] not in self.expired_seen:
                self.expired_seen.add(token[-16:])
                self.soak.violation("rotation-token-expired", ref, f"its token Secret holds a token expired "
                                    f"{t0 - exp:.0f} s ago (at {exp - self.soak.t0:.0f} s)", dedup="its token")

    def final(self, read_secret: Any, within: float = 30.0) -> None:
        """Once quiet: every current key of each app is held by its Secret (or recorded unknown). A rotation under
        way (its previous key not yet removed) is given `within` seconds to finish."""
        for rapp in self.soak.rotating.apps:
            if rapp.uploaded_at is None:
                continue
            deadline = time.time() + within
            while True:
                try:
                    secret = read_secret(rapp.key.namespace, rapp.key.name)
                except Exception as exc:  # noqa: BLE001 - the apiserver did not answer: try again until the deadline
                    secret, error = None, f"Secret unreadable: {type(exc).__name__}"
                else:
                    error = "Secret absent"
                extra: list[EntraKey] = []
                if secret is not None:
                    known = self.recorded_unknown.setdefault(rapp.key.ref, set())
                    known.update(unknown(secret))
                    keys = [EntraKey.of(k) for k in self.soak.bed.issuer.keys(rapp.app.client_id)]
                    extra = orphans(keys, held(secret), known)
                    self.soak.checker.checks["rotation-orphan"] += 1
                    if not extra:
                        break
                if time.time() > deadline:
                    self.soak.violation("rotation-orphan", rapp.key.ref, error if secret is None else
                                        f"{len(extra)} key(s) on the app that the Secret does not hold: "
                                        + ", ".join(f"keyId {k.key_id} ({k.thumbprint[:8]})" for k in extra))
                    break
                time.sleep(1.0)
