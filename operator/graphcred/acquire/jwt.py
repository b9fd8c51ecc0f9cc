"""Just enough JWT for the operator: read a token's non-secret claims, and sign client assertions. Pure: the
signing time and the assertion's id are arguments.

The operator never needs to verify an access token (the resource server does); it decodes claims only to report
expiry, audience and roles in status.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class TokenClaims:
    """The claims of an access token that help debugging and are safe to show."""

    audience: str | None
    tenant_id: str | None
    app_id: str | None
    roles: tuple[str, ...]
    expires_at: int | None


def unverified_claims(token: str) -> TokenClaims:
    """Decode (not verify) an access token's payload. Raises ValueError for anything that is not a JWT."""
    try:
        payload = json.loads(b64url_decode(token.split(".")[1]))
    except (IndexError, ValueError, TypeError) as exc:
        raise ValueError("access token is not a JWT") from exc
    if not isinstance(payload, dict):
        raise ValueError("access token payload is not a JSON object")
    aud = payload.get("aud")
    roles = payload.get("roles")
    exp = payload.get("exp")
    return TokenClaims(
        audience=aud if isinstance(aud, str) else None,
        tenant_id=payload.get("tid") if isinstance(payload.get("tid"), str) else None,
        app_id=next((payload[k] for k in ("appid", "azp") if isinstance(payload.get(k), str)), None),
        roles=tuple(r for r in roles if isinstance(r, str)) if isinstance(roles, list) else (),
        expires_at=int(exp) if isinstance(exp, (int, float)) else None,
    )


def sign_client_assertion(
    *,
    key: rsa.RSAPrivateKey,
    now: int,
    jti: str,
    sha256_thumbprint: bytes,
    client_id: str,
    audience: str,
    x5c: Sequence[str] = (),
    lifetime: int = 600,
) -> str:
    """A PS256 client assertion with `x5t#S256`, as Entra expects for certificate credentials.

    `now`: Unix time of signing. `jti`: a fresh id every time (Entra refuses a replayed assertion).
    """
    header: dict[str, Any] = {"alg": "PS256", "typ": "JWT", "x5t#S256": b64url(sha256_thumbprint)}
    if x5c:
        header["x5c"] = list(x5c)
    claims = {"aud": audience, "iss": client_id, "sub": client_id, "jti": jti,
              "nbf": now, "iat": now, "exp": now + lifetime}
    signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                     + b64url(json.dumps(claims, separators=(",", ":")).encode()))
    signature = key.sign(signing_input.encode(),
                         padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256())
    return signing_input + "." + b64url(signature)
