"""The bed's Microsoft Graph: a local HTTPS resource server that validates bearer tokens as Graph does.

Routes (canned data, read only):
  GET /v1.0/users                     application permission User.Read.All or Directory.Read.All ($top, $select)
  GET /v1.0/users/{id | userPrincipalName}    the same permissions ($select)
  GET /v1.0/users/{id}/messages       Mail.Read ($top, $skip, $select)
Key rollover, on the apps of the issuer given as `directory` (graphcred_testbed.issuer):
  POST /v1.0/applications/{id}/addKey            (also /applications(appId='{appId}')/addKey)
  POST /v1.0/applications/{id}/removeKey         (also /applications(appId='{appId}')/removeKey)
  GET  /v1.0/applications/{id}                   (also /applications(appId='{appId}')): id, appId, keyCredentials
  An app may roll its own keys with no permission; another app needs Application.ReadWrite.All or
  Directory.ReadWrite.All, or Application.ReadWrite.OwnedBy and to be an owner. Each needs a proof of possession: a
  JWT signed RS256 by a current, unexpired certificate of the app (`x5t` header), aud
  00000002-0000-0000-c000-000000000000, iss the application's object id, nbf and exp at most ten minutes apart.
  Every call is logged (`key_calls`); `fail_next` makes the next calls fail.

Tokens are validated like a resource server validates Entra tokens: the signing keys come from the token's issuer's
OIDC discovery document (`{iss}/.well-known/openid-configuration`, then its `jwks_uri`), fetched over HTTPS and cached
by `kid`; an unknown `kid` triggers one refetch at most every `refetch_interval` seconds. Only issuers under the bed's
issuer are trusted. Then: RS256 signature, lifetime, audience (Graph's), issuer, and the route's app roles.

Answers are shaped as Graph's: OData JSON with `@odata.context` and `value`, `request-id`/`client-request-id` headers,
and errors as `{"error": {"code", "message", "innerError": {...}}}` with a `WWW-Authenticate: Bearer` challenge on 401.
Every request is recorded (method, path, status, the token's `uti`); the token itself is never stored or logged.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import math
import re
import ssl
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from . import jose
from .issuer import App, Issuer, KeyCredential, sha1_hex
from .pki import CertificateAuthority

log = logging.getLogger(__name__)

GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
GRAPH_AUDIENCES = frozenset({"https://graph.microsoft.com", GRAPH_APP_ID})
USER_ROLES = frozenset({"User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"})
MAIL_ROLES = frozenset({"Mail.Read", "Mail.ReadWrite"})
DEFAULT_LEEWAY = 0.0  # seconds of clock skew allowed on exp/nbf: the bed's issuer and API share one clock
# Microsoft.IdentityModel's ConfigurationManager refreshes on an unknown kid at most once per 5 minutes
DEFAULT_REFETCH_INTERVAL = 300.0
FAILED_FETCH_RETRY = 1.0  # seconds before a failed metadata fetch may be retried
METADATA_TIMEOUT = 5.0
SUCCESS_CONTENT_TYPE = ("application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;"
                        "charset=utf-8")
ERROR_CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class GraphCall:
    """One request the API answered. `token_id` is the presented token's `uti` claim, never the token."""

    method: str
    path: str
    status: int
    token_id: str | None


class GraphError(Exception):
    """An answer in Graph's error format. `detail` says why, for the bed's own logs only (never in the answer, which
    words it as Graph does); `headers` go with the answer (Retry-After)."""

    def __init__(self, status: int, code: str, message: str, *, detail: str = "",
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.detail = status, code, message, detail
        self.headers = dict(headers or {})


def _unauthorized(message: str) -> GraphError:
    return GraphError(401, "InvalidAuthenticationToken", message)


def _bad_request(message: str, code: str = "BadRequest") -> GraphError:
    return GraphError(400, code, message)


# --- canned directory ---------------------------------------------------------------------------------------------
DOMAIN = "contoso.onmicrosoft.com"


def _user(given: str, surname: str, alias: str, job: str, office: str, phone: str | None) -> dict[str, Any]:
    upn = f"{alias}@{DOMAIN}"
    return {
        "businessPhones": [phone] if phone else [],
        "displayName": f"{given} {surname}",
        "givenName": given,
        "jobTitle": job,
        "mail": upn,
        "mobilePhone": None,
        "officeLocation": office,
        "preferredLanguage": "en-US",
        "surname": surname,
        "userPrincipalName": upn,
        "id": str(uuid.uuid5(uuid.NAMESPACE_DNS, upn)),  # stable across runs, like a directory's object ids
    }


USERS: tuple[dict[str, Any], ...] = (
    _user("Adele", "Vance", "AdeleV", "Retail Manager", "18/2111", "+1 425 555 0109"),
    _user("Alex", "Wilber", "AlexW", "Marketing Assistant", "131/1104", "+1 858 555 0110"),
    _user("Megan", "Bowen", "MeganB", "Marketing Manager", "12/1110", "+1 412 555 0109"),
    _user("Lee", "Gu", "LeeG", "Director", "23/3101", "+1 913 555 0101"),
    _user("Nestor", "Wilke", "NestorW", "Director", "36/2121", None),
)


def _address(user: Mapping[str, Any]) -> dict[str, Any]:
    return {"emailAddress": {"name": user["displayName"], "address": user["mail"]}}


def _message(n: int, to: Mapping[str, Any], sender: Mapping[str, Any], subject: str, received: str,
             preview: str) -> dict[str, Any]:
    return {
        "id": base64.urlsafe_b64encode(f"graphcred-bed-message-{n}".encode()).decode(),
        "createdDateTime": received,
        "receivedDateTime": received,
        "subject": subject,
        "bodyPreview": preview,
        "importance": "normal",
        "isRead": n % 2 == 0,
        "from": _address(sender),
        "toRecipients": [_address(to)],
    }


_ADELE, _ALEX, _MEGAN, _LEE, _ = USERS
MESSAGES: dict[str, tuple[dict[str, Any], ...]] = {  # user id -> mailbox, newest first
    _ADELE["id"]: (
        _message(1, _ADELE, _MEGAN, "Spring campaign: final numbers", "2026-03-12T09:14:03Z",
                 "Adele, the final figures for the spring campaign are attached."),
        _message(2, _ADELE, _LEE, "Store visit on Thursday", "2026-03-11T16:40:51Z",
                 "Can we move the store visit to 10:00?"),
        _message(3, _ADELE, _ALEX, "Shelf layout draft", "2026-03-10T08:02:27Z",
                 "Here is the first draft of the new shelf layout."),
    ),
    _MEGAN["id"]: (
        _message(4, _MEGAN, _ADELE, "Re: Spring campaign: final numbers", "2026-03-12T10:01:44Z",
                 "Thanks Megan, looks great."),
    ),
}


def find_user(key: str) -> dict[str, Any] | None:
    """A user by object id or userPrincipalName (both case-insensitive, as in Entra)."""
    key = key.lower()
    return next((u for u in USERS if key in (u["id"], u["userPrincipalName"].lower())), None)


# --- signing keys -------------------------------------------------------------------------------------------------
class SigningKeys:
    """The issuer's signing keys, discovered and cached as a resource server does.

    Keys are cached by `kid`. A token signed with a `kid` not in the cache makes us refetch the issuer's metadata
    (it may have rotated its keys), but at most once per `refetch_interval` seconds, so a flood of tokens with
    made-up kids cannot hammer the issuer."""

    def __init__(self, issuer_base_url: str, context: ssl.SSLContext, refetch_interval: float,
                 monotonic: Callable[[], float]) -> None:
        self.base = issuer_base_url.rstrip("/")
        # no proxy from the environment: the bed's issuer is local
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                   urllib.request.HTTPSHandler(context=context))
        self._interval = refetch_interval
        self._monotonic = monotonic
        self._lock = threading.Lock()  # held across a fetch, so concurrent unknown kids cause one fetch
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._next_fetch: float | None = None  # monotonic time before which no fetch happens
        self.fetches = 0

    def trusts(self, iss: str, tid: Any) -> bool:
        """Only the bed's issuer, in Entra's v2.0 form `{base}/{tid}/v2.0` for the token's own tenant."""
        return isinstance(tid, str) and re.fullmatch(r"[A-Za-z0-9.-]+", tid) is not None and iss == self.issuer_for(tid)

    def issuer_for(self, tid: str) -> str:
        return f"{self.base}/{tid}/v2.0"

    def key(self, iss: str, kid: str) -> rsa.RSAPublicKey | None:
        with self._lock:
            if kid in self._keys:
                return self._keys[kid]
            now = self._monotonic()
            if self._next_fetch is not None and now < self._next_fetch:
                return None
            self._next_fetch = now + self._interval
            self.fetches += 1
            try:
                self._keys = self._fetch(iss)
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                # soon again, not after the full interval: one outage must not lock every caller out for minutes
                self._next_fetch = now + min(self._interval, FAILED_FETCH_RETRY)
                log.info("signing keys of %s unavailable: %s", iss, exc)
                return None
            return self._keys.get(kid)

    def _fetch(self, iss: str) -> dict[str, rsa.RSAPublicKey]:
        with self._opener.open(f"{iss}/.well-known/openid-configuration", timeout=METADATA_TIMEOUT) as r:
            config = json.loads(r.read())
        if config.get("issuer") != iss:
            raise ValueError(f"the discovery document names issuer {config.get('issuer')!r}")
        jwks_uri = str(config["jwks_uri"])
        if not jwks_uri.startswith(self.base + "/"):
            raise ValueError(f"jwks_uri {jwks_uri!r} is not on the trusted issuer")
        with self._opener.open(jwks_uri, timeout=METADATA_TIMEOUT) as r:
            jwks = json.loads(r.read())
        return {str(k["kid"]): jose.public_key_from_jwk(k) for k in jwks["keys"]
                if k.get("kty") == "RSA" and k.get("kid")}


# --- token validation ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Caller:
    """What a valid token says about its bearer."""

    roles: frozenset[str]
    app_only: bool
    app_id: str | None = None  # the client id the token was issued to (`appid`, or v2.0's `azp`)
    tenant_id: str | None = None  # `tid`: Graph answers for the directory of the token's tenant


def token_id(token: str) -> str | None:
    """The token's `uti` claim (unverified), for the request record; None if there is none."""
    try:
        uti = jose.parse(token)[1].get("uti")
    except jose.JoseError:
        return None
    return uti if isinstance(uti, str) and len(uti) <= 64 else None


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; 401 as Graph answers when there is none."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("Access token is empty.")
    return token


class TokenValidator:
    """Entra access-token checks: form, algorithm, issuer (before any key is fetched from it), key, signature,
    lifetime, audience. Messages are those Graph answers with where known (observed answers), else in their style."""

    def __init__(self, keys: SigningKeys, leeway: float, clock: Callable[[], float]) -> None:
        self._keys, self._leeway, self._clock = keys, leeway, clock

    def validate(self, token: str) -> Caller:
        if "." not in token:
            raise _unauthorized("IDX14100: JWT is not well formed, there are no dots (.).")
        if token.count(".") != 2:  # a JWE or worse: Graph takes signed tokens only
            raise _unauthorized("Access token validation failure.")
        try:
            header, claims, signing_input, signature = jose.parse(token)
        except jose.JoseError:
            raise _unauthorized("Access token validation failure.") from None
        if header.get("alg") != "RS256":  # never `none`, never a symmetric alg keyed with public material
            raise _unauthorized("Access token validation failure. Invalid signature algorithm.")
        iss = claims.get("iss")
        if not isinstance(iss, str) or not self._keys.trusts(iss, claims.get("tid")):
            raise _unauthorized("Access token validation failure. Invalid issuer.")
        key = self._keys.key(iss, str(header.get("kid", "")))
        if key is None or not jose.verify_signature("RS256", key, signing_input, signature):
            raise _unauthorized("Access token validation failure. Invalid signature.")
        self._check_lifetime(claims)
        aud = claims.get("aud")  # a string, or an array of them (RFC 7519 §4.1.3): one must name Graph
        if not any(isinstance(a, str) and a in GRAPH_AUDIENCES for a in (aud if isinstance(aud, list) else [aud])):
            raise _unauthorized("Access token validation failure. Invalid audience.")
        roles = claims.get("roles")
        roles = roles if isinstance(roles, list) else []
        # app-only: Entra's `idtyp` optional claim says so; a delegated token carries `scp` instead of roles
        app_only = claims.get("idtyp", "app") == "app" and "scp" not in claims
        app_id, tid = claims.get("appid", claims.get("azp")), claims.get("tid")
        return Caller(frozenset(r for r in roles if isinstance(r, str)), app_only,
                      app_id.lower() if isinstance(app_id, str) else None,
                      tid.lower() if isinstance(tid, str) else None)

    def _check_lifetime(self, claims: Mapping[str, Any]) -> None:
        now, exp, nbf = self._clock(), _seconds(claims.get("exp")), _seconds(claims.get("nbf"))
        if exp is None:
            raise _unauthorized("IDX10225: Lifetime validation failed. The token is missing an Expiration Time.")
        if nbf is None and claims.get("nbf") is not None:  # NaN would pass every comparison
            raise _unauthorized("Access token validation failure.")
        if now > exp + self._leeway:
            raise _unauthorized("Lifetime validation failed, the token is expired.")
        if nbf is not None and now + self._leeway < nbf:
            raise _unauthorized("Access token has expired or is not yet valid.")


def _seconds(value: Any) -> float | None:
    """A NumericDate (RFC 7519 §2): a finite JSON number, not a boolean."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def require(caller: Caller, roles: frozenset[str], denied: Callable[[], GraphError]) -> None:
    if not caller.app_only or not caller.roles & roles:
        raise denied()


# Users are directory objects (Entra answers); messages are mailbox items (Exchange answers).
def directory_denied() -> GraphError:
    return GraphError(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")


def mailbox_denied() -> GraphError:
    return GraphError(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")


# --- OData queries ------------------------------------------------------------------------------------------------
def _option(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(f"${name}")
    return values[-1] if values else None


def _count(query: Mapping[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    raw = _option(query, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise _bad_request(f"Invalid value '{raw}' for query parameter '${name}'.")
    return value


def _selected(query: Mapping[str, list[str]]) -> list[str] | None:
    raw = _option(query, "select")
    return [p.strip() for p in raw.split(",") if p.strip()] if raw else None


def _project(item: Mapping[str, Any], select: Sequence[str] | None, keep: Sequence[str] = ()) -> dict[str, Any]:
    """$select: only the named properties (case-insensitive, as OData), plus `keep`; unknown names are left out."""
    if select is None:
        return dict(item)
    wanted = {p.lower() for p in select} | {k.lower() for k in keep}
    return {k: v for k, v in item.items() if k.lower() in wanted}


# --- key rollover: addKey / removeKey -----------------------------------------------------------------------------
KEY_OPS = ("addKey", "removeKey")
PROOF_AUDIENCE = "00000002-0000-0000-c000-000000000000"  # "Audience needs to be 00000002-0000-0000-c000-000000000000"
PROOF_MAX_LIFETIME = 600  # seconds: "exp should be nbf + 10 minutes", and no more
KEY_ADMIN_ROLES = frozenset({"Application.ReadWrite.All", "Directory.ReadWrite.All"})
OWNED_BY_ROLE = "Application.ReadWrite.OwnedBy"
_BY_APP_ID = re.compile(r"applications\(appId='([^']*)'\)")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# what Graph answers with for a status `fail_next` injects
_INJECTED: dict[int, tuple[str, str]] = {
    400: ("Request_BadRequest", "Bad request."),
    401: ("InvalidAuthenticationToken", "Access token validation failure."),
    403: ("Authorization_RequestDenied", "Insufficient privileges to complete the operation."),
    404: ("Request_ResourceNotFound", "Resource does not exist or one of its queried reference-property objects are "
          "not present."),
    429: ("TooManyRequests", "Too many requests."),
    500: ("generalException", "General exception while processing."),
    502: ("badGateway", "Bad gateway."),
    503: ("serviceNotAvailable", "The service is temporarily unavailable. Please retry later."),
    504: ("gatewayTimeout", "Gateway timeout."),
}


@dataclass(frozen=True)
class KeyCall:
    """One addKey or removeKey call, as the Graph API's key log keeps it. Nothing secret: ids and thumbprints only.

    `time`: wall clock when answered. `app_id`/`object_id`: the target application (None when not found). `caller`: the
    client id of the bearer token (None if it was refused). `key_id`: addKey: the new key's id (when added); removeKey:
    the id asked for. `thumbprint`: SHA-1 (upper-case hex) of the certificate in the request (addKey, once read) or of
    the one removed (removeKey, when found). `proof_thumbprint`: of the registered key that signed the proof, once
    found. `status`: the HTTP status answered. `outcome`: "added" or "removed", or the error code and why
    (`Authentication_MissingOrMalformed: the proof has expired`); with `fail_next(..., applied=True)`: "added,
    answered 503 (fail_next)"."""

    time: float
    op: str
    app_id: str | None
    object_id: str | None
    caller: str | None
    key_id: str | None
    thumbprint: str | None
    proof_thumbprint: str | None
    status: int
    outcome: str

    @property
    def ok(self) -> bool:
        return self.status < 300


@dataclass
class _Failure:
    status: int
    count: int
    applied: bool  # carry the operation out, then answer the failure (the caller cannot know it happened)
    retry_after: int | None

    def error(self, op: str) -> GraphError:
        code, message = _INJECTED.get(self.status, ("generalException", "Injected failure."))
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        return GraphError(self.status, code, message, detail=f"injected by fail_next({op!r}, {self.status})",
                          headers=headers)


def _application_route(segments: Sequence[str]) -> tuple[str, str, str] | None:
    """(operation: "" for the application itself, "addKey" or "removeKey"; "id" or "appId"; the value) for the path
    segments of an application or its key actions; None for others."""
    if len(segments) in (3, 4) and segments[:2] == ["v1.0", "applications"]:
        op, by, value = segments[3] if len(segments) == 4 else "", "id", segments[2]
    elif len(segments) in (2, 3) and segments[0] == "v1.0" and (match := _BY_APP_ID.fullmatch(segments[1])):
        op, by, value = segments[2] if len(segments) == 3 else "", "appId", match.group(1)
    else:
        return None
    op = op.removeprefix("microsoft.graph.")  # the action's qualified name works too
    return (op, by, value) if op in ("", *KEY_OPS) else None


def _key_credential_body(key: KeyCredential) -> dict[str, Any]:
    """A keyCredential as Graph shows it: never the key itself."""
    return {"customKeyIdentifier": key.thumbprint, "displayName": key.display_name,
            "endDateTime": _graph_time(key.end), "key": None, "keyId": key.key_id,
            "startDateTime": _graph_time(key.start), "type": "AsymmetricX509Cert", "usage": "Verify"}


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        request = json.loads(body or b"null")
    except ValueError:
        raise _bad_request("Unable to read JSON request payload. Please ensure Content-Type header is set and payload "
                           "is of valid JSON format.") from None
    if not isinstance(request, dict):
        raise _bad_request("Empty Payload. JSON content expected.")
    return request


def _new_certificate(value: Any, now: float) -> tuple[x509.Certificate, str | None]:
    """The certificate of addKey's `keyCredential` (type AsymmetricX509Cert, usage Verify, key: base64 DER), and the
    displayName asked for; 400 as Graph answers an invalid key credential."""
    def invalid(why: str) -> GraphError:
        return GraphError(400, "Request_BadRequest", "Invalid value specified for property 'keyCredential' of "
                          "resource 'Application'.", detail=why)

    if not isinstance(value, dict):
        raise invalid("keyCredential is missing or not an object")
    if value.get("type") != "AsymmetricX509Cert":
        raise invalid(f"type {value.get('type')!r}: the bed takes AsymmetricX509Cert only")
    if value.get("usage") != "Verify":
        raise invalid(f"usage {value.get('usage')!r}: AsymmetricX509Cert needs usage Verify")
    key = value.get("key")
    try:
        if not isinstance(key, str):
            raise ValueError("no key")
        cert = x509.load_der_x509_certificate(base64.b64decode(key, validate=True))
    except ValueError:
        raise invalid("key is not the base64 of a DER X.509 certificate") from None
    if not isinstance(cert.public_key(), rsa.RSAPublicKey):
        raise invalid("the certificate's key is not RSA")
    if cert.not_valid_after_utc.timestamp() <= now:
        raise invalid("the certificate has expired")
    name = value.get("displayName")
    return cert, name if isinstance(name, str) and name else None


def _graph_time(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _proof_refused(why: str) -> GraphError:
    # Graph words every refused proof alike; `why` goes to the key log only
    return GraphError(401, "Authentication_MissingOrMalformed", "Access Token missing or malformed.", detail=why)


class _Handler(BaseHTTPRequestHandler):
    server: GraphServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # the request line carries no token, but tests read their own output

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""  # read in any case: keeps the connection usable
        request_id = str(uuid.uuid4())
        client_request_id = self.headers.get("client-request-id") or request_id
        path = urlsplit(self.path).path
        authorization = self.headers.get("Authorization")
        uti = None
        try:
            token = bearer_token(authorization)
            uti = token_id(token)
            status, answer = self.server.api.answer(self.command, self.path, token, body)
            self._send(status, answer, SUCCESS_CONTENT_TYPE, request_id, client_request_id)
        except GraphError as err:
            status = err.status
            self._send(status, self._error_body(err, request_id, client_request_id), ERROR_CONTENT_TYPE,
                       request_id, client_request_id, self.server.api.challenge if status == 401 else None,
                       err.headers)
        except Exception:  # a bug here must still answer, as Graph's 500 does
            log.exception("graph API failed on %s %s", self.command, path)
            status = 500
            failure = GraphError(500, "InternalServerError", "The bed's Graph API failed; see its log.")
            self._send(status, self._error_body(failure, request_id, client_request_id), ERROR_CONTENT_TYPE,
                       request_id, client_request_id)
        self.server.api.record(GraphCall(self.command, path, status, uti))

    @staticmethod
    def _error_body(err: GraphError, request_id: str, client_request_id: str) -> dict[str, Any]:
        date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return {"error": {"code": err.code, "message": err.message,
                          "innerError": {"date": date, "request-id": request_id,
                                         "client-request-id": client_request_id}}}

    def _send(self, status: int, body: Mapping[str, Any] | None, content_type: str, request_id: str,
              client_request_id: str, challenge: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        payload = json.dumps(body).encode() if body is not None else b""  # None: 204 No Content
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("OData-Version", "4.0")
        self.send_header("Strict-Transport-Security", "max-age=31536000")
        self.send_header("request-id", request_id)
        self.send_header("client-request-id", client_request_id)
        if challenge:
            self.send_header("WWW-Authenticate", challenge)
        self.end_headers()
        self.wfile.write(payload)


class GraphServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, api: GraphApi, certfile: Path, keyfile: Path, host: str) -> None:
        super().__init__((host, 0), _Handler)
        self.api = api
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(certfile, keyfile)
        self.socket = tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            if isinstance(request, ssl.SSLSocket):
                request.settimeout(30)
                request.do_handshake()  # here, in the request's thread, not in the accept loop
            super().finish_request(request, client_address)
        except (ssl.SSLError, OSError):
            pass  # a client that hangs up mid-handshake is not our problem


class GraphApi:
    """The bed's Graph-protocol resource server. `GraphApi(ca, issuer_base_url).start()`; `stop()` when done.

    `ca` issues the serving certificate (for 127.0.0.1 and localhost). The issuer's metadata is fetched over HTTPS
    trusting `ca_file_for_issuer` (None: `ca` itself, as in the bed where one CA serves issuer and API).
    `leeway`: seconds of clock skew tolerated on exp/nbf. `refetch_interval`: the least time between metadata fetches
    caused by unknown kids. `clock` (wall time, for exp/nbf) and `monotonic` (for the refetch interval) let tests
    move time."""

    def __init__(
        self,
        ca: CertificateAuthority,
        issuer_base_url: str,
        ca_file_for_issuer: Path | None = None,
        *,
        host: str = "127.0.0.1",
        leeway: float = DEFAULT_LEEWAY,
        refetch_interval: float = DEFAULT_REFETCH_INTERVAL,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        directory: Issuer | None = None,
    ) -> None:
        """`directory`: the issuer whose apps addKey/removeKey act on (without one, every application is unknown)."""
        self._ca, self._host = ca, host
        self.directory = directory
        self._clock, self._leeway = clock, leeway
        self._key_calls: list[KeyCall] = []
        self._failures: dict[str, list[_Failure]] = {}  # operation -> failures injected by fail_next
        # addKey of a certificate the app already has: refused (400) unless this is False, when it gets a second keyId
        self.reject_duplicate_keys = True
        self.issuer_base_url = issuer_base_url.rstrip("/")
        context = (ssl.create_default_context(cafile=str(ca_file_for_issuer)) if ca_file_for_issuer
                   else ssl.create_default_context(cadata=ca.cert_pem.decode()))
        self.keys = SigningKeys(self.issuer_base_url, context, refetch_interval, monotonic)
        self._validator = TokenValidator(self.keys, leeway, clock)
        # Graph's challenge, with the bed's issuer as the authorization server
        self.challenge = (f'Bearer realm="", authorization_uri="{self.issuer_base_url}/common/oauth2/authorize", '
                          f'client_id="{GRAPH_APP_ID}"')
        self._lock = threading.Lock()
        self._calls: list[GraphCall] = []
        self._server: GraphServer | None = None
        self._thread: threading.Thread | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    # --- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> GraphApi:
        self._tmp = tempfile.TemporaryDirectory(prefix="graphcred-graph-")
        pair = self._ca.issue("graphcred-testbed-graph", server=True, hosts=(self._host, "localhost"))
        crt, key = pair.write(Path(self._tmp.name), "graph")
        self._server = GraphServer(self, crt, key, self._host)
        self._thread = threading.Thread(target=self._server.serve_forever, name="graphcred-graph", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> GraphApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`"""
        assert self._server is not None, "graph API not started"
        return f"{self._host}:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    @property
    def base_url(self) -> str:
        """The Graph service root, as `https://graph.microsoft.com/v1.0`."""
        return f"{self.url}/v1.0"

    # --- the request record ----------------------------------------------------------------------------------------
    def record(self, call: GraphCall) -> None:
        with self._lock:
            self._calls.append(call)

    def calls(self) -> list[GraphCall]:
        with self._lock:
            return list(self._calls)

    # --- key rollover: the log and failure injection -------------------------------------------------------------
    def key_calls(self, app: str | None = None) -> list[KeyCall]:
        """Every addKey/removeKey call answered, oldest first; `app`: only those on this app (client or object id)."""
        with self._lock:
            calls = list(self._key_calls)
        if app is None:
            return calls
        return [c for c in calls if app.lower() in (c.app_id, c.object_id)]

    def fail_next(self, op: str, status: int, count: int = 1, *, applied: bool = False,
                  retry_after: int | None = None) -> None:
        """The next `count` calls of `op` ("addKey" or "removeKey") that pass authentication and find their app are
        answered `status` (503: serviceNotAvailable, 403: Authorization_RequestDenied, ...) with Graph's error body.
        `applied`: the key is added (removed) all the same, only the answer says it failed, as when Graph's answer
        is lost. `retry_after`: a Retry-After header. Failures stack: first injected, first answered."""
        if op not in KEY_OPS:
            raise ValueError(f"fail_next: unknown operation {op!r}, expected one of {KEY_OPS}")
        with self._lock:
            self._failures.setdefault(op, []).append(_Failure(status, count, applied, retry_after))

    def heal(self) -> None:
        """Forget every failure `fail_next` injected that has not been answered yet."""
        with self._lock:
            self._failures.clear()

    def _take_failure(self, op: str) -> _Failure | None:
        with self._lock:
            stack = self._failures.get(op) or []
            if not stack:
                return None
            failure = stack[0]
            failure.count -= 1
            if failure.count <= 0:
                stack.pop(0)
            return failure

    # --- routes -------------------------------------------------------------------------------------------------
    def answer(self, method: str, target: str, token: str, body: bytes = b"") -> tuple[int, dict[str, Any] | None]:
        """The status and body (None: no content) for an authenticated request; raises GraphError for every
        refusal."""
        split = urlsplit(target)
        segments = [unquote(s) for s in split.path.split("/") if s]
        application = _application_route(segments)
        if application is not None and application[0]:
            return self._key_action(method, *application, token, body)
        if application is not None:
            return 200, self._application(method, application[1], application[2], token)
        caller = self._validator.validate(token)  # first, as Graph's gateway authenticates before routing
        if not segments or segments[0] != "v1.0":
            raise _bad_request(f"Invalid version: {segments[0] if segments else ''}")
        query = parse_qs(split.query, keep_blank_values=True)
        route = segments[1:]
        if route[:1] == ["me"]:
            raise _bad_request("/me request is only valid with delegated authentication flow.")
        if not route or route[0] != "users":
            raise _bad_request(f"Resource not found for the segment '{route[0] if route else ''}'.")
        if len(route) > 3 or (len(route) == 3 and route[2] != "messages"):
            raise _bad_request(f"Resource not found for the segment '{route[-1]}'.")
        if method != "GET":
            raise GraphError(405, "Request_BadRequest", f"The bed's Graph API does not serve {method} requests.")
        if len(route) == 1:
            require(caller, USER_ROLES, directory_denied)
            return 200, self._users(query)
        if len(route) == 2:
            require(caller, USER_ROLES, directory_denied)
            return 200, self._user(route[1], query)
        require(caller, MAIL_ROLES, mailbox_denied)
        return 200, self._messages(route[1], query)

    def _context(self, fragment: str, select: Sequence[str] | None) -> str:
        return f"{self.base_url}/$metadata#{fragment}" + (f"({','.join(select)})" if select else "")

    def _users(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        select, top = _selected(query), _count(query, "top", 100, 1, 999)
        skip = self._skiptoken(_option(query, "skiptoken"))
        page = USERS[skip:skip + top]
        body: dict[str, Any] = {"@odata.context": self._context("users", select),
                                "value": [_project(u, select) for u in page]}
        if skip + top < len(USERS):
            body["@odata.nextLink"] = self._next("users", query, "$skiptoken", self._token_for(skip + top))
        return body

    def _user(self, key: str, query: Mapping[str, list[str]]) -> dict[str, Any]:
        user = find_user(key)
        if user is None:
            raise GraphError(404, "Request_ResourceNotFound", f"Resource '{key}' does not exist or one of its "
                             "queried reference-property objects are not present.")
        select = _selected(query)
        return {"@odata.context": self._context("users", select) + "/$entity", **_project(user, select)}

    def _messages(self, key: str, query: Mapping[str, list[str]]) -> dict[str, Any]:
        user = find_user(key)
        if user is None:
            raise GraphError(404, "Request_ResourceNotFound", f"Resource '{key}' does not exist or one of its "
                             "queried reference-property objects are not present.")
        select, top = _selected(query), _count(query, "top", 10, 1, 1000)
        skip = _count(query, "skip", 0, 0, 1_000_000)
        mailbox = MESSAGES.get(user["id"], ())
        # a message's id comes back whatever was selected, as Graph does for Outlook items
        body: dict[str, Any] = {"@odata.context": self._context(f"users('{key}')/messages", select),
                                "value": [_project(m, select, keep=("id",)) for m in mailbox[skip:skip + top]]}
        if skip + top < len(mailbox):
            body["@odata.nextLink"] = self._next(f"users/{quote(key)}/messages", query, "$skip", str(skip + top))
        return body

    def _next(self, path: str, query: Mapping[str, list[str]], name: str, value: str) -> str:
        kept = [(k, v[-1]) for k, v in query.items() if k not in (name, "$skiptoken", "$skip")]
        params = "&".join(f"{k}={quote(v, safe=',')}" for k, v in [*kept, (name, value)])
        return f"{self.base_url}/{path}?{params}"

    @staticmethod
    def _token_for(offset: int) -> str:
        return base64.urlsafe_b64encode(f"graphcred-bed:{offset}".encode()).decode().rstrip("=")

    @staticmethod
    def _skiptoken(raw: str | None) -> int:
        if raw is None:
            return 0
        try:
            prefix, _, offset = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode().partition(":")
            if prefix == "graphcred-bed" and int(offset) >= 0:
                return int(offset)
        except ValueError:
            pass
        raise _bad_request("Invalid $skiptoken.", code="Request_BadRequest")

    # --- key rollover: addKey / removeKey -------------------------------------------------------------------------
    def _key_action(self, method: str, op: str, by: str, value: str, token: str,
                    body: bytes) -> tuple[int, dict[str, Any] | None]:
        """addKey or removeKey on the application `by` ("id" or "appId") `value`; every call is logged."""
        entry: dict[str, Any] = dict.fromkeys(("app_id", "object_id", "caller", "key_id", "thumbprint",
                                               "proof_thumbprint"))
        status, outcome, done = 500, "failed", ""
        try:
            caller = self._validator.validate(token)  # first, as Graph's gateway authenticates before routing
            entry["caller"] = caller.app_id
            if method != "POST":
                raise GraphError(405, "Request_BadRequest", f"The request method '{method}' is not allowed for "
                                 f"the action '{op}'.")
            app = self._find_app(caller, by, value)
            entry["app_id"], entry["object_id"] = app.client_id, app.object_id
            self._authorize(caller, app)
            failure = self._take_failure(op)
            if failure is not None and not failure.applied:
                raise failure.error(op)
            request = _json_object(body)
            result: tuple[int, dict[str, Any] | None]
            if op == "addKey":
                result = self._add_key(app, request, entry)
                done = "added"
            else:
                result = self._remove_key(app, request, entry)
                done = "removed"
            if failure is not None:  # carried out, but the caller is told otherwise
                raise failure.error(op)
            status, outcome = result[0], done
            return result
        except GraphError as err:
            status = err.status
            outcome = f"{done}, answered {status} (fail_next)" if done else (
                f"{err.code}: {err.detail}" if err.detail else err.code)
            raise
        finally:
            call = KeyCall(time=self._clock(), op=op, status=status, outcome=outcome, **entry)
            with self._lock:
                self._key_calls.append(call)
            log.info("graph %s on app %s by %s: %d %s (keyId %s, thumbprint %s)", op, call.app_id or value,
                     call.caller, status, outcome, call.key_id, call.thumbprint)

    def _find_app(self, caller: Caller, by: str, value: str) -> App:
        if by == "id" and not _GUID.fullmatch(value):
            raise _bad_request(f"Invalid object identifier '{value}'.", code="Request_BadRequest")
        app = None
        if self.directory is not None:
            app = (self.directory.application(object_id=value) if by == "id"
                   else self.directory.application(app_id=value))
        if app is None or app.tenant_id != caller.tenant_id:  # Graph answers for the token's tenant only
            shown = value if by == "id" else f"appId='{value}'"
            raise GraphError(404, "Request_ResourceNotFound", f"Resource '{shown}' does not exist or one of its "
                             "queried reference-property objects are not present.")
        return app

    def _application(self, method: str, by: str, value: str, token: str) -> dict[str, Any]:
        """GET the application: its ids and current keyCredentials (with Application.Read.All or the like, or
        Application.ReadWrite.OwnedBy as an owner; an app reads itself only if it is its own owner)."""
        caller = self._validator.validate(token)
        if method != "GET":
            raise GraphError(405, "Request_BadRequest", f"The bed's Graph API does not serve {method} requests on "
                             "applications.")
        app = self._find_app(caller, by, value)
        readers = KEY_ADMIN_ROLES | {"Application.Read.All", "Directory.Read.All"}
        owner = OWNED_BY_ROLE in caller.roles and caller.app_id in app.owners
        if not caller.app_only or not (caller.roles & readers or owner):
            raise directory_denied()
        keys = [k for k in self._directory().keys(app.client_id) if k.removed_at is None]
        return {"@odata.context": f"{self.base_url}/$metadata#applications/$entity", "id": app.object_id,
                "appId": app.client_id, "keyCredentials": [_key_credential_body(k) for k in keys]}

    @staticmethod
    def _authorize(caller: Caller, app: App) -> None:
        """An app rolls its own keys with no permission; another needs to be allowed to write applications."""
        if caller.app_only and caller.app_id == app.client_id:
            return
        if caller.app_only and caller.roles & KEY_ADMIN_ROLES:
            return
        if caller.app_only and OWNED_BY_ROLE in caller.roles and caller.app_id in app.owners:
            return
        raise GraphError(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.",
                         detail=f"caller {caller.app_id} may not change the keys of app {app.client_id}")

    def _directory(self) -> Issuer:
        assert self.directory is not None, "an application was found, so there is a directory"
        return self.directory

    def _add_key(self, app: App, request: dict[str, Any], entry: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        cert, display_name = _new_certificate(request.get("keyCredential"), self._clock())
        entry["thumbprint"] = sha1_hex(cert)
        entry["proof_thumbprint"] = self._check_proof(app, request.get("proof")).thumbprint
        current = [k for k in self._directory().keys(app.client_id) if k.removed_at is None]
        if self.reject_duplicate_keys and any(k.thumbprint == entry["thumbprint"] for k in current):
            raise GraphError(400, "Request_BadRequest", "Invalid value specified for property 'keyCredential' of "
                             "resource 'Application'.", detail="the application already has this certificate")
        key = self._directory().add_key(app.client_id, cert, display_name)
        entry["key_id"] = key.key_id
        return 200, {"@odata.context": f"{self.base_url}/$metadata#microsoft.graph.keyCredential",
                     **_key_credential_body(key)}

    def _remove_key(self, app: App, request: dict[str, Any], entry: dict[str, Any]) -> tuple[int, None]:
        key_id = request.get("keyId")
        if not isinstance(key_id, str) or not _GUID.fullmatch(key_id):
            raise GraphError(400, "Request_BadRequest", "Invalid value specified for property 'keyId'.",
                             detail="keyId is missing or not a GUID")
        entry["key_id"] = key_id.lower()
        entry["proof_thumbprint"] = self._check_proof(app, request.get("proof")).thumbprint
        try:
            removed = self._directory().remove_key(app.client_id, key_id)
        except KeyError:
            raise GraphError(404, "Request_ResourceNotFound", f"No key credential with keyId '{key_id}' was found "
                             "on the application.", detail="no current key has this keyId") from None
        entry["thumbprint"] = removed.thumbprint
        return 204, None

    def _check_proof(self, app: App, proof: Any) -> KeyCredential:
        """The app's registered key that signed this proof of possession, or 401 as Graph refuses a proof."""
        if not isinstance(proof, str) or not proof:
            raise _proof_refused("no proof")
        parts = proof.split(".")
        if len(parts) != 3:
            raise _proof_refused("the proof is not a signed JWT (compact JWS)")
        if any("=" in p for p in parts[:2]):  # the docs: padding in header or payload is refused
            raise _proof_refused("base64 padding '=' in the proof's header or payload")
        try:
            header, claims, signing_input, signature = jose.parse(proof)
        except jose.JoseError:
            raise _proof_refused("the proof is not a JWT") from None
        if header.get("alg") != "RS256":
            raise _proof_refused(f"the proof's alg is {str(header.get('alg'))[:20]!r}, not RS256")
        key = self._proof_key(app, header)
        if key is None:
            raise _proof_refused("the proof is not signed by a certificate registered on the application")
        now = self._clock()
        cert = key.certificate
        if not cert.not_valid_before_utc.timestamp() <= now < cert.not_valid_after_utc.timestamp():
            raise _proof_refused("the certificate that signed the proof is expired or not yet valid")
        public_key = cert.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey) or not jose.verify_signature(
                "RS256", public_key, signing_input, signature):
            raise _proof_refused("the proof's signature does not verify with the registered certificate")
        aud = claims.get("aud")
        if PROOF_AUDIENCE not in (aud if isinstance(aud, list) else [aud]):
            raise _proof_refused(f"the proof's aud is {str(aud)[:60]!r}, not {PROOF_AUDIENCE}")
        iss = claims.get("iss")
        if not isinstance(iss, str) or iss.lower() != app.object_id:
            raise _proof_refused(f"the proof's iss is {str(iss)[:60]!r}, not the application's object id")
        nbf, exp = _seconds(claims.get("nbf")), _seconds(claims.get("exp"))
        if nbf is None or exp is None:
            raise _proof_refused("the proof has no nbf or no exp")
        if exp - nbf > PROOF_MAX_LIFETIME:
            raise _proof_refused(f"the proof's lifetime is {exp - nbf:.0f} s, more than {PROOF_MAX_LIFETIME}")
        if now > exp + self._leeway:
            raise GraphError(401, "Authentication_ExpiredToken", "Your access token has expired. Please renew it "
                             "before submitting the request.", detail="the proof has expired")
        if now + self._leeway < nbf:
            raise _proof_refused("the proof is not valid yet (nbf)")
        return key

    def _proof_key(self, app: App, header: Mapping[str, Any]) -> KeyCredential | None:
        """The app's current key named by the proof's `x5t` (base64url SHA-1), or by `kid` as the hex thumbprint
        (what Microsoft.IdentityModel's X509SigningCredentials puts there). Keys added but not yet replicated to the
        token service count: the directory itself knows them."""
        x5t, kid = header.get("x5t"), header.get("kid")
        for key in self._directory().keys(app.client_id):
            if key.removed_at is not None:
                continue
            if isinstance(x5t, str) and x5t.rstrip("=") == jose.thumbprint_sha1(key.certificate):
                return key
            if isinstance(kid, str) and kid.upper() == key.thumbprint:
                return key
        return None
