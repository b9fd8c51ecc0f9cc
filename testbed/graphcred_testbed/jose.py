"""Minimal JWS (RS256/PS256) helpers for the test issuer, on `cryptography` alone.

The product never verifies tokens (it only decodes claims for status); the issuer and the tests do.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from graphcred.acquire.jwt import b64url as b64url
from graphcred.acquire.jwt import b64url_decode as b64url_decode


def thumbprint_sha1(cert: x509.Certificate) -> str:
    """`x5t`: base64url of the certificate's SHA-1 digest (DER)."""
    return b64url(hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).digest())


def thumbprint_sha256(cert: x509.Certificate) -> str:
    """`x5t#S256`: base64url of the certificate's SHA-256 digest (DER)."""
    return b64url(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest())


def sign(header: dict[str, Any], claims: dict[str, Any], key: rsa.RSAPrivateKey) -> str:
    alg = header["alg"]
    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    if alg == "RS256":
        sig = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    elif alg == "PS256":
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        sig = key.sign(signing_input.encode(), pss, hashes.SHA256())
    else:
        raise ValueError(f"unsupported alg {alg}")
    return signing_input + "." + b64url(sig)


class JoseError(ValueError):
    pass


def parse(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Split a compact JWS into header, claims, signing input and signature (unverified)."""
    try:
        h, c, s = token.split(".")
        header = json.loads(b64url_decode(h))
        claims = json.loads(b64url_decode(c))
        signature = b64url_decode(s)
    except (ValueError, TypeError) as exc:
        raise JoseError("not a compact JWS") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise JoseError("JWS header and payload must be JSON objects")
    return header, claims, f"{h}.{c}".encode(), signature


def verify_signature(
    alg: str, public_key: rsa.RSAPublicKey, signing_input: bytes, signature: bytes
) -> bool:
    try:
        if alg == "RS256":
            public_key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "PS256":
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
            public_key.verify(signature, signing_input, pss, hashes.SHA256())
        else:
            return False
    except InvalidSignature:
        return False
    return True


def jwk(public_key: rsa.RSAPublicKey, kid: str) -> dict[str, str]:
    numbers = public_key.public_numbers()

    def _int(n: int) -> str:
        return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))

    return {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": _int(numbers.n),
            "e": _int(numbers.e)}


def public_key_from_jwk(key: dict[str, str]) -> rsa.RSAPublicKey:
    n = int.from_bytes(b64url_decode(key["n"]), "big")
    e = int.from_bytes(b64url_decode(key["e"]), "big")
    return rsa.RSAPublicNumbers(e, n).public_key()
