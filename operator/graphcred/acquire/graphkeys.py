"""Microsoft Graph's key rollover for an app's certificate credential: `application: addKey` (register the next
certificate), `application: removeKey` (remove the old one) and reading the application's keyCredentials (the keyId
of a certificate a person uploaded). Blocking: run it in an executor thread.

Every call carries the app's own Graph token (an app may roll its own keys with no permission) and a proof of
possession (`sign_proof`): a JWT signed RS256 by a certificate currently registered on the app.

The calls go through the same hardened session as token requests (`PinnedCASession`): the CA bundle, only allowed
https hosts (here the clouds' Graph hosts and those the admin adds, never anything else), answers capped at 64 KiB,
one total deadline per call, no redirects. Tokens, proofs and keys are never logged, kept or repeated: a failure
says what Graph answered (status, code, its message cleaned for display), nothing of the request.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import types
import unicodedata
import uuid
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from graphcred.acquire.authority import AllowedAuthorities, origin, parse_allowed
from graphcred.acquire.httpsession import (
    DEFAULT_TIMEOUT,
    MAX_ANSWER,
    ExchangeFailed,
    Failure,
    PinnedCASession,
    media_type,
    retry_after_seconds,
)
from graphcred.acquire.jwt import b64url
from graphcred.api.model import GUID_PATTERN, Cloud

log = logging.getLogger(__name__)

# "Audience needs to be 00000002-0000-0000-c000-000000000000" (Graph's addKey / removeKey documentation)
PROOF_AUDIENCE = "00000002-0000-0000-c000-000000000000"
PROOF_MAX_LIFETIME = 600  # seconds: Graph refuses a proof whose exp is more than 10 minutes after its nbf
GRAPH_BY_CLOUD: Mapping[str, str] = types.MappingProxyType({
    Cloud.AZURE_PUBLIC.value: "https://graph.microsoft.com",
    Cloud.AZURE_US_GOVERNMENT.value: "https://graph.microsoft.us",
    Cloud.AZURE_CHINA.value: "https://microsoftgraph.chinacloudapi.cn",
})
GRAPH_ORIGINS: frozenset[str] = frozenset(GRAPH_BY_CLOUD.values())
MAX_MESSAGE = 300  # characters of Graph's error message that are shown (status, Events)
_GUID = re.compile(GUID_PATTERN)
_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # Graph's error codes: Authorization_RequestDenied, serviceNotAvailable
_THUMBPRINT = re.compile(r"[0-9A-Fa-f]{40}")
_LATER = frozenset({408, 425, 429})  # "ask again later", like 5xx


def graph_scope(cloud: str) -> str:
    """The scope of an app-only Graph token in `cloud` (a `Cloud` value): `{graph}/.default`."""
    try:
        return f"{GRAPH_BY_CLOUD[cloud]}/.default"
    except KeyError:
        raise ValueError(f"unknown cloud {cloud!r}: expected one of {', '.join(GRAPH_BY_CLOUD)}") from None


def sign_proof(key: rsa.RSAPrivateKey, cert_der_sha1: bytes, object_id: str, now: int, lifetime: int = 300) -> str:
    """The proof of possession addKey and removeKey need: an RS256 JWT whose `x5t` header is the base64url SHA-1
    thumbprint (`cert_der_sha1`, 20 bytes) of the registered certificate whose `key` signs it, aud PROOF_AUDIENCE,
    iss the application's OBJECT id (not its client id), nbf `now`, exp `now` + `lifetime` (at most 600 s), a fresh
    jti. base64url without padding, as Graph requires."""
    if len(cert_der_sha1) != hashes.SHA1.digest_size:
        raise ValueError("cert_der_sha1 must be the 20-byte SHA-1 digest of the certificate's DER")
    if not 0 < lifetime <= PROOF_MAX_LIFETIME:
        raise ValueError(f"a proof's lifetime is 1 to {PROOF_MAX_LIFETIME} s, not {lifetime}")
    header = {"alg": "RS256", "typ": "JWT", "x5t": b64url(cert_der_sha1)}
    claims = {"aud": PROOF_AUDIENCE, "iss": _guid(object_id, "object_id"), "nbf": now, "exp": now + lifetime,
              "jti": str(uuid.uuid4())}
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


def _segment(value: Mapping[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def _guid(value: str, what: str) -> str:
    """`value` in lower case if it is a GUID: checked before it goes into a URL or a claim."""
    if not isinstance(value, str) or not _GUID.fullmatch(value):
        raise ValueError(f"{what} must be a GUID")
    return value.lower()


class KeyCallFailed(Exception):
    """A Graph key call that did not do what was asked. `op`: "addKey", "removeKey" or "getApplication".
    `status`: the HTTP status (None: no answer). `code`: Graph's error code ("" if none; for no answer, why:
    "timeout", "connection", ...). `message`: Graph's error message cleaned for display (or what went wrong).
    `transient`: worth trying again later (408, 429, 5xx, no answer); otherwise it needs someone (a permission, the
    app, the proof). `retry_after`: seconds, from Retry-After. `str()` is one line for status and Events."""

    def __init__(self, op: str, status: int | None, code: str, message: str, *, transient: bool,
                 retry_after: float | None = None) -> None:
        self.op, self.status, self.code, self.message = op, status, code, message
        self.transient, self.retry_after = transient, retry_after
        super().__init__(self.line())

    def line(self) -> str:
        """E.g. "Graph addKey answered 403 Authorization_RequestDenied: Insufficient privileges to ..."."""
        if self.status is None:
            return f"Graph {self.op} failed: {self.message}"
        head = f"Graph {self.op} answered {self.status}" + (f" {self.code}" if self.code else "")
        return f"{head}: {self.message}" if self.message else head


def clean_message(text: str, secrets: Iterable[str] = ()) -> str:
    """A peer's text made fit to show: no control or format characters (no line breaks, no bidi overrides), runs of
    whitespace made one space, any of `secrets` cut out, at most MAX_MESSAGE characters."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    kept = "".join(" " if c.isspace() else c for c in text if unicodedata.category(c)[0] != "C" or c.isspace())
    kept = " ".join(kept.split())
    return kept if len(kept) <= MAX_MESSAGE else kept[:MAX_MESSAGE - 3] + "..."


class _GraphHosts(AllowedAuthorities):
    """The clouds' Graph hosts and the extra ones given: not the login hosts (a Graph call goes nowhere else)."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        super().__init__(extra)
        self.origins = GRAPH_ORIGINS | self.extra


def _graph_host(value: str) -> str:
    """An extra Graph host as https://host[:port]; a bare host[:port] means https. ValueError when mistyped: it
    must fail at start, not refuse every call later."""
    text = value.strip()
    return parse_allowed(text if "://" in text else f"https://{text}", "graph host")


class GraphSession(PinnedCASession):
    """PinnedCASession (trust, size cap, deadline, no redirects) allowing the Graph hosts only."""

    def __init__(self, ca_bundle: str | None = None, timeout: tuple[float, float] = DEFAULT_TIMEOUT,
                 graph_hosts: Collection[str] = ()) -> None:
        super().__init__(ca_bundle, timeout)
        self.allowed = _GraphHosts(_graph_host(h) for h in graph_hosts)


class GraphKeys:
    """addKey, removeKey and an application's keyIds on Microsoft Graph. Thread-safe; blocking. Holds nothing
    secret: the token and proof of each call are arguments."""

    def __init__(self, ca_bundle: str | None = None, timeout: tuple[float, float] = DEFAULT_TIMEOUT,
                 graph_hosts: Collection[str] = ()) -> None:
        """`timeout`: (connect, whole call) in seconds. `graph_hosts`: hosts besides the clouds' Graph hosts that
        may be called (https://host[:port], or host[:port]). ValueError for a mistyped one."""
        self.session = GraphSession(ca_bundle, timeout, graph_hosts)
        self.deadline = timeout[1]

    def __repr__(self) -> str:
        return f"GraphKeys(hosts={sorted(self.session.allowed.origins)})"

    def add_key(self, graph_url: str, access_token: str, object_id: str, cert_der: bytes, proof: str,
                display_name: str) -> str:
        """Register the certificate `cert_der` on the application `object_id`; its new keyId (a GUID, lower case).
        `proof`: `sign_proof` by a currently registered certificate. KeyCallFailed when Graph refuses, fails, or
        answers without a keyId."""
        op = "addKey"
        url = f"{_base(graph_url)}/v1.0/applications/{_guid(object_id, 'object_id')}/addKey"
        body = {"keyCredential": {"type": "AsymmetricX509Cert", "usage": "Verify",
                                  "key": base64.b64encode(cert_der).decode("ascii"), "displayName": display_name},
                "passwordCredential": None, "proof": proof}
        response = self._call(op, "POST", url, access_token, body)
        if not 200 <= response.status_code < 300:
            raise self._refused(op, response, (access_token, proof))
        answer = _json_object(response)
        key_id = answer.get("keyId") if answer is not None else None
        if not isinstance(key_id, str) or not _GUID.fullmatch(key_id):
            # the key may have been added all the same: find_key_id tells
            raise KeyCallFailed(op, response.status_code, "", "the answer names no keyId (a GUID): the certificate "
                                "may or may not have been added", transient=True)
        return key_id.lower()

    def remove_key(self, graph_url: str, access_token: str, object_id: str, key_id: str, proof: str) -> bool:
        """Remove the key `key_id` from the application `object_id`: True when removed; False when Graph has no
        such key (already removed). KeyCallFailed otherwise, also when the application itself is not found."""
        op = "removeKey"
        url = f"{_base(graph_url)}/v1.0/applications/{_guid(object_id, 'object_id')}/removeKey"
        body = {"keyId": _guid(key_id, "key_id"), "proof": proof}
        response = self._call(op, "POST", url, access_token, body)
        if 200 <= response.status_code < 300:  # 204 No Content, as Graph answers
            return True
        failure = self._refused(op, response, (access_token, proof))
        # Graph answers 404 for a key it does not have, and also for an application it does not find: only the
        # first means "already gone". Graph's message names the application when it is the one not found.
        if response.status_code == 404 and object_id.lower() not in failure.message.lower():
            return False
        raise failure

    def find_key_id(self, graph_url: str, access_token: str, object_id: str, thumbprint: str) -> str | None:
        """The keyId of the application's current certificate with this SHA-1 `thumbprint` (hex, any case); None if
        it has none. KeyCallFailed (403 Authorization_RequestDenied) when the app may not read itself: the caller
        does not know then."""
        op = "getApplication"
        if not isinstance(thumbprint, str) or not _THUMBPRINT.fullmatch(thumbprint):
            raise ValueError("thumbprint must be a SHA-1 thumbprint (40 hex digits)")
        url = f"{_base(graph_url)}/v1.0/applications/{_guid(object_id, 'object_id')}?$select=keyCredentials"
        response = self._call(op, "GET", url, access_token, None)
        if response.status_code != 200:
            raise self._refused(op, response, (access_token,))
        answer = _json_object(response)
        credentials = answer.get("keyCredentials") if answer is not None else None
        if not isinstance(credentials, list):
            raise KeyCallFailed(op, response.status_code, "", "the answer has no keyCredentials", transient=True)
        for credential in credentials:
            key_id = credential.get("keyId") if isinstance(credential, dict) else None
            if isinstance(key_id, str) and _GUID.fullmatch(key_id) and \
                    _same_thumbprint(credential.get("customKeyIdentifier"), thumbprint):
                return key_id.lower()
        return None

    def _call(self, op: str, method: str, url: str, access_token: str, body: Mapping[str, Any] | None
              ) -> requests.Response:
        """One request with its whole answer; KeyCallFailed when there is none (never the request's content)."""
        request_id = str(uuid.uuid4())  # client-request-id: what Microsoft support asks for
        headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json",
                   "client-request-id": request_id}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        try:
            response = self.session.request(method, url, data=data, headers=headers)
        except ExchangeFailed as exc:
            log.info("graph %s: %s (client-request-id %s)", op, exc.failure.value, request_id)
            raise self._no_answer(op, exc) from None
        except requests.exceptions.RequestException:  # the session raises ExchangeFailed only; to be sure
            log.info("graph %s: connection (client-request-id %s)", op, request_id)
            raise self._no_answer(op, ExchangeFailed(Failure.CONNECTION, origin(url) or "Graph")) from None
        answered = response.headers.get("request-id", "")
        log.info("graph %s: %d (client-request-id %s, request-id %s)", op, response.status_code, request_id,
                 answered if _GUID.fullmatch(answered) else "-")
        return response

    @staticmethod
    def _refused(op: str, response: requests.Response, secrets: Iterable[str]) -> KeyCallFailed:
        """KeyCallFailed for an answer that is not a success: Graph's code and message when it sent its error
        shape, else its media type."""
        status = response.status_code
        transient = status in _LATER or status >= 500
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        answer = _json_object(response)
        error = answer.get("error") if answer is not None else None
        if not isinstance(error, dict):
            kind = media_type(response.headers.get("Content-Type")) or "no Content-Type"
            return KeyCallFailed(op, status, "", f"the answer is not a Graph error ({kind})", transient=transient,
                                 retry_after=retry_after)
        code, message = error.get("code"), error.get("message")
        return KeyCallFailed(op, status, code if isinstance(code, str) and _CODE.fullmatch(code) else "",
                             clean_message(message, secrets) if isinstance(message, str) else "",
                             transient=transient, retry_after=retry_after)

    def _no_answer(self, op: str, exc: ExchangeFailed) -> KeyCallFailed:
        """KeyCallFailed for a call that got no usable answer: why, and the host; nothing of the peer's."""
        where = exc.origin
        if exc.failure is Failure.NOT_ALLOWED:
            return KeyCallFailed(op, None, exc.failure.value, f"{where} is not a Graph host graphcred may call (the "
                                 "clouds' own Graph hosts, or hosts the cluster admin allows); nothing was sent",
                                 transient=False)
        texts = {
            Failure.REDIRECT: f"{where} answered with a redirect (HTTP {exc.status}); graphcred follows no redirects",
            Failure.TOO_LARGE: f"{where} answered more than {MAX_ANSWER // 1024} KiB (HTTP {exc.status})",
            Failure.TIMEOUT: f"no complete answer from {where} within {self.deadline:g} s",
            Failure.UNTRUSTED: f"the TLS certificate of {where} is not trusted (or not issued for that name)",
        }
        text = texts.get(exc.failure, f"cannot connect to {where} (connection refused, reset or unreachable, or "
                                      "TLS failed)")
        return KeyCallFailed(op, None, exc.failure.value, text, transient=True)


def _base(graph_url: str) -> str:
    """The Graph root without a trailing slash (the session checks the host before anything is sent)."""
    return graph_url.strip().rstrip("/")


def _json_object(response: requests.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _same_thumbprint(custom_key_identifier: Any, thumbprint: str) -> bool:
    """Graph shows a certificate's customKeyIdentifier as its SHA-1 thumbprint in hex; it is an Edm.Binary, so a
    base64 form (of the digest, or of the hex text) is taken too."""
    if not isinstance(custom_key_identifier, str) or not custom_key_identifier:
        return False
    wanted = thumbprint.upper()
    if custom_key_identifier.upper() == wanted:
        return True
    try:
        raw = base64.b64decode(custom_key_identifier, validate=True)
    except (binascii.Error, ValueError):
        return False
    return raw == bytes.fromhex(wanted) or raw.decode("latin-1").upper() == wanted
