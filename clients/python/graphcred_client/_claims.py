"""The few claims of an access token the credential checks, decoded without verifying the signature.

Not verifying is fine here: the token comes from our own mounted file, written by graphcred, and the credential only
uses `aud`, `tid`, `exp` and `iat` to refuse mistakes early (a scope for another resource, another tenant). Trust is the
resource server's business: it verifies the signature of every token it receives.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass

# 9999-12-31T23:59:59Z, datetime's last second: a time beyond it (or NaN, Infinity) is garbled, not a time
_LATEST = 253402300799


class NotAJwt(ValueError):
    """The text is not a JWS-compact JWT with a JSON object as payload. Carries no part of the text."""


@dataclass(frozen=True)
class Claims:
    audiences: tuple[str, ...]  # `aud` may be a string or a list of strings (RFC 7519 §4.1.3)
    tenant_id: str | None
    expires_at: int | None
    issued_at: int | None  # `iat`, else `nbf`: with `exp`, the token's whole lifetime


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def unverified_claims(token: str) -> Claims:
    """`aud`, `tid` and `exp` of `token`. Raises NotAJwt (never quoting the token) if it is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        raise NotAJwt("not three dot-separated parts")
    try:
        payload = json.loads(_b64url_decode(parts[1]))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        # `from None`: the decoder's message could quote part of the payload.
        raise NotAJwt("payload is not base64url-encoded JSON") from None
    if not isinstance(payload, dict):
        raise NotAJwt("payload is not a JSON object")
    aud = payload.get("aud")
    if isinstance(aud, str):
        audiences: tuple[str, ...] = (aud,)
    else:
        audiences = tuple(a for a in aud if isinstance(a, str)) if isinstance(aud, list) else ()
    tid = payload.get("tid")
    exp = payload.get("exp")
    iat = payload.get("iat", payload.get("nbf"))
    return Claims(
        audiences=audiences,
        tenant_id=tid if isinstance(tid, str) else None,
        expires_at=_seconds(exp),
        issued_at=_seconds(iat),
    )


def _seconds(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if math.isfinite(value) and 0 <= value <= _LATEST else None
