"""Tokens for the credential's tests: unsigned-looking JWTs (the credential reads claims, never verifies), and a
mounted token Secret written the way the kubelet writes it."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphcred_testbed.volume import SecretVolume

GRAPH = "https://graph.microsoft.com"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
TENANT = "8c2f4a51-3b7e-4d0a-9f61-2a5e7c9d0b13"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_jwt(*, exp: int, aud: str | list[str] = GRAPH, tid: str | None = TENANT, **claims: Any) -> str:
    """header.claims.signature, base64url; the signature is random bytes, distinctive enough to find in a leak."""
    now = int(time.time())
    body: dict[str, Any] = {"aud": aud, "iss": f"https://login.microsoftonline.com/{tid}/v2.0", "iat": now,
                            "nbf": now, "exp": exp, "uti": uuid.uuid4().hex, "roles": ["User.Read.All"], **claims}
    if tid is not None:
        body["tid"] = tid
    header = {"alg": "RS256", "typ": "JWT", "kid": "test"}
    return ".".join([_b64url(json.dumps(header).encode()), _b64url(json.dumps(body).encode()),
                     _b64url(os.urandom(64))])


def rfc3339(unix: int) -> str:
    return dt.datetime.fromtimestamp(unix, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def secrets_of(token: str) -> tuple[str, str]:
    """What must never be shown: the token, and its signature on its own."""
    return token, token.rsplit(".", 1)[-1]


def shows_no_token(text: str, *tokens: str) -> bool:
    return not any(part in text for token in tokens for part in secrets_of(token))


@dataclass
class Mount:
    """A token Secret mounted as a volume at `directory`, with the keys graphcred writes."""

    directory: Path
    volume: SecretVolume

    def write(self, *, lifetime: int = 3600, expires_on: int | None = None, with_expires_on: bool = True,
              token: str | None = None, **claims: Any) -> str:
        """A new token that expires `lifetime` seconds from now (`expires_on` overrides the file's expiry)."""
        exp = int(time.time()) + lifetime
        token = token or make_jwt(exp=exp, **claims)
        data = {"access_token": token.encode(), "token_type": b"Bearer", "authorization": f"Bearer {token}".encode()}
        if with_expires_on:
            data["expires_on"] = rfc3339(exp if expires_on is None else expires_on).encode()
        self.volume.write(data)
        return token
