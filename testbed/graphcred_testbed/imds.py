"""A loopback Azure Instance Metadata Service (IMDS) that hands out managed-identity tokens, as MSAL asks for them.

The protocol (what `msal.ManagedIdentityClient` sends on a VM or AKS node; MSAL reads the base URL from the
environment variable AZURE_POD_IDENTITY_AUTHORITY_HOST, default http://169.254.169.254):

  GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=<resource>[&client_id=|&object_id=|&msi_res_id=]
  Metadata: true

  200 {"access_token", "client_id", "expires_in", "expires_on", "ext_expires_in", "not_before", "resource",
       "token_type"[, "refresh_in"]}      numbers as strings, as IMDS sends them; expires_on is a Unix time

Tokens are RS256 JWTs signed with the bed issuer's key (its `kid`, `iss` = the issuer's v2.0 issuer of the
identity's tenant), so the bed's Graph API accepts them; they go into `Issuer.issued_tokens` too, for the leak
scanners. Claims: aud (the resource), iss, tid, appid/azp (the identity's client id), oid/sub (its object id),
xms_mirid (its resource id), idtyp "app", roles granted to the identity on that resource, iat/nbf/exp, uti.

Identities: a system-assigned one (the VM's) and user-assigned ones, named in a request by client id, object id or
resource id (msi_res_id; mi_res_id, its old name, too), added and removed at runtime (`assign`, `unassign`).

Caching, as IMDS does: the token of an identity for a resource is answered again, the same token with the same
expires_on (and a smaller expires_in), until it is within `refresh_margin` seconds of expiry; then a new one is
minted. Like the real service, the cache keeps a token's roles: roles granted later show in the next new token
(`forget()` drops the cache, as time would). `caching = False` mints a new token for every request.

Failures, as IMDS answers them (learn.microsoft.com: "How to use managed identities ... on a VM to acquire an
access token", error handling):
- no `Metadata: true` header: 400 {"error": "bad_request_102", "error_description": "Required metadata header not
  specified"}; a request carrying X-Forwarded-For (one that came through a proxy): 400 as well.
- no resource: 400 invalid_request; a wrong path: 404.
- an identity the VM does not have: 400 {"error": "invalid_request", "error_description": "Identity not found"}.
  This is also what IMDS answers right after an identity is assigned, until the assignment has reached the host:
  the identity becomes usable moments later, without any change on the caller's side. A request for the system-
  assigned identity on a VM without one gets the token of its only user-assigned identity (MSAL documents this
  service-side behaviour), or, with several, 400 invalid_request "Multiple user assigned identities exist, please
  specify the clientId / resourceId of the identity in the token request".
- 404 and 410 mean IMDS itself is updating (410: back within 70 seconds), 429 its rate limit, 5xx a transient
  error: `fail_next(status, ...)` answers those (and any other status, body or header, e.g. a redirect or an
  oversized body) for the next requests.

Every request is recorded (`requests()`: method, path, query, headers, status); none carries a secret.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from . import jose
from .issuer import Issuer

TOKEN_PATH = "/metadata/identity/oauth2/token"
API_VERSION = "2018-02-01"
DEFAULT_LIFETIME = 3599  # seconds; real managed-identity tokens live about 24 hours, the bed's like its issuer's
DEFAULT_REFRESH_MARGIN = 300  # seconds before expiry when IMDS stops answering a cached token
_IDENTITY_PARAMETERS = ("client_id", "object_id", "msi_res_id", "mi_res_id")
IDENTITY_NOT_FOUND = "Identity not found"
MULTIPLE_IDENTITIES = ("Multiple user assigned identities exist, please specify the clientId / resourceId of the "
                       "identity in the token request")


@dataclass
class Identity:
    """A managed identity of the VM: its service principal's ids and the app roles granted to it, per resource."""

    client_id: str
    object_id: str
    resource_id: str
    system: bool
    roles: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ImdsRequest:
    """One request as it arrived, and the status it was answered with."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int
    minted: bool  # a new token was made for it (False: refused, faulted, or the cached token answered)


@dataclass
class _Fault:
    status: int
    count: int
    retry_after: int | None
    body: bytes | None
    headers: dict[str, str]
    delay: float
    unframed: bool


@dataclass(frozen=True)
class _Cached:
    token: str
    issued: int
    expires: int


def _error_body(status: int) -> bytes:
    error = {429: ("too_many_requests", "Too many requests"),
             404: ("not_found", "IMDS is updating"), 410: ("gone", "IMDS is updating")}.get(
        status, ("unknown", "Failed to get token") if status >= 500 else ("invalid_request", "Injected error"))
    return json.dumps({"error": error[0], "error_description": error[1]}).encode()


class Imds:
    """The service's state: identities, cache, faults, request log. Thread-safe; served by `ImdsServer`.

    `issuer` signs the tokens (its key and kid; `iss` is its issuer URL for `tenant_id`). `lifetime`, `refresh_in`
    (sent as the answer's refresh_in when set), `refresh_margin` and `caching` may be changed at any time."""

    def __init__(self, issuer: Issuer, tenant_id: str | None = None, *, lifetime: int = DEFAULT_LIFETIME,
                 refresh_in: int | None = None, refresh_margin: int = DEFAULT_REFRESH_MARGIN,
                 caching: bool = True) -> None:
        self.issuer = issuer
        self.tenant_id = (tenant_id or str(uuid.uuid4())).lower()
        issuer.add_tenant(self.tenant_id)  # so that a resource server can discover the tenant's keys
        self.lifetime = lifetime
        self.refresh_in = refresh_in
        self.refresh_margin = refresh_margin
        self.caching = caching
        self.vm_resource_id = (f"/subscriptions/{uuid.uuid4()}/resourceGroups/graphcred-testbed/providers/"
                               "Microsoft.Compute/virtualMachines/graphcred-testbed-vm")
        self._lock = threading.Lock()
        self._identities: dict[str, Identity] = {}  # client id -> identity
        self._cache: dict[tuple[str, str], _Cached] = {}  # (client id, resource) -> token
        self._faults: list[_Fault] = []
        self._log: list[ImdsRequest] = []
        self.issued_tokens: list[str] = []

    # --- identities ---------------------------------------------------------------------------------------------
    def assign(self, client_id: str | None = None, *, system: bool = False,
               roles: Mapping[str, Sequence[str]] | None = None) -> Identity:
        """Give the VM a managed identity (a new client id when None): user-assigned, or with `system` its system-
        assigned one (replacing any before it). `roles`: resource -> app roles granted to it. Usable at once."""
        cid = (client_id or str(uuid.uuid4())).lower()
        oid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"imds-identity:{cid}"))
        resource_id = self.vm_resource_id if system else (
            self.vm_resource_id.split("/providers/")[0]
            + f"/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-{cid[:8]}")
        identity = Identity(cid, oid, resource_id, system, {k: list(v) for k, v in (roles or {}).items()})
        with self._lock:
            if system:
                for old in [i for i in self._identities.values() if i.system]:
                    self._drop(old.client_id)
            self._identities[cid] = identity
        return identity

    def unassign(self, client_id: str) -> None:
        """Take the identity (user- or system-assigned, by client id) away from the VM; its cached tokens too."""
        with self._lock:
            self._drop(client_id.lower())

    def grant(self, client_id: str, resource: str, roles: Sequence[str]) -> None:
        """Set the identity's app roles on `resource` (tokens already cached keep their roles: `forget()`)."""
        with self._lock:
            self._identities[client_id.lower()].roles[resource] = list(roles)

    def identities(self) -> list[Identity]:
        with self._lock:
            return list(self._identities.values())

    @property
    def system(self) -> Identity | None:
        with self._lock:
            return next((i for i in self._identities.values() if i.system), None)

    def forget(self) -> None:
        """Drop every cached token: the next request for each identity and resource mints a new one."""
        with self._lock:
            self._cache.clear()

    def _drop(self, client_id: str) -> None:
        self._identities.pop(client_id, None)
        for key in [k for k in self._cache if k[0] == client_id]:
            del self._cache[key]

    # --- faults and the request log ------------------------------------------------------------------------------
    def fail_next(self, status: int, count: int = 1, retry_after: int | None = None, *, body: bytes | None = None,
                  headers: Mapping[str, str] | None = None, delay: float = 0.0, unframed: bool = False) -> None:
        """Answer the next `count` token requests (that carry the Metadata header) with `status` instead: 429 with
        `retry_after` as Retry-After, 404/410 (IMDS updating), 5xx, ... `body` replaces IMDS's JSON error body (an
        oversized or non-JSON answer), `headers` are added (a redirect's Location), `delay` seconds pass before the
        answer; `unframed`: no Content-Length, the body ends when the connection closes. Faults queue up: the first
        given is answered first."""
        with self._lock:
            self._faults.append(_Fault(status, count, retry_after, body, dict(headers or {}), delay, unframed))

    def heal(self) -> None:
        """Forget the faults not yet answered."""
        with self._lock:
            self._faults.clear()

    def requests(self) -> list[ImdsRequest]:
        with self._lock:
            return list(self._log)

    def token_requests(self, client_id: str | None = None) -> int:
        """Token requests received (of any outcome); with `client_id`, those that named it (query client_id)."""
        with self._lock:
            return sum(1 for r in self._log if r.path == TOKEN_PATH
                       and (client_id is None or r.query.get("client_id", "").lower() == client_id.lower()))

    @property
    def minted(self) -> int:
        """Tokens made (a cached token answered again does not count)."""
        with self._lock:
            return sum(1 for r in self._log if r.minted)

    def _take_fault(self) -> _Fault | None:
        with self._lock:
            if not self._faults:
                return None
            fault = self._faults[0]
            fault.count -= 1
            if fault.count <= 0:
                self._faults.pop(0)
            return fault

    def _record(self, request: ImdsRequest) -> None:
        with self._lock:
            self._log.append(request)

    # --- protocol ------------------------------------------------------------------------------------------------
    def _identity(self, query: Mapping[str, str]) -> Identity:
        """The identity a request names; raises LookupError with IMDS's error description."""
        named = [(k, query[k]) for k in _IDENTITY_PARAMETERS if query.get(k)]
        with self._lock:
            if named:
                key, value = named[0]
                attribute = {"client_id": "client_id", "object_id": "object_id"}.get(key, "resource_id")
                found = next((i for i in self._identities.values()
                              if getattr(i, attribute).lower() == value.lower()), None)
                if found is None:
                    raise LookupError(IDENTITY_NOT_FOUND)
                return found
            system = next((i for i in self._identities.values() if i.system), None)
            if system is not None:
                return system
            users = list(self._identities.values())
        if len(users) == 1:
            return users[0]
        raise LookupError(MULTIPLE_IDENTITIES if users else IDENTITY_NOT_FOUND)

    def token(self, identity: Identity, resource: str) -> tuple[dict[str, str], bool]:
        """IMDS's answer for `identity` on `resource`, and whether a new token was minted for it."""
        now = int(time.time())
        key = (identity.client_id, resource)
        with self._lock:
            cached = self._cache.get(key) if self.caching else None
            if cached is not None and cached.expires - now <= self.refresh_margin:
                cached = None
            lifetime, refresh_in = self.lifetime, self.refresh_in
        minted = cached is None
        if cached is None:
            cached = _Cached(self._mint(identity, resource, now, lifetime), now, now + lifetime)
            with self._lock:
                if self.caching and identity.client_id in self._identities:
                    self._cache[key] = cached
        answer = {
            "access_token": cached.token,
            "client_id": identity.client_id,
            "expires_in": str(max(0, cached.expires - now)),
            "expires_on": str(cached.expires),
            "ext_expires_in": str(max(0, cached.expires - now)),
            "not_before": str(cached.issued),
            "resource": resource,
            "token_type": "Bearer",
        }
        if refresh_in is not None:
            answer["refresh_in"] = str(refresh_in)
        return answer, minted

    def _mint(self, identity: Identity, resource: str, now: int, lifetime: int) -> str:
        claims: dict[str, Any] = {
            "aud": resource,
            "iss": self.issuer.issuer_for(self.tenant_id),
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "tid": self.tenant_id,
            "appid": identity.client_id,
            "azp": identity.client_id,
            "oid": identity.object_id,
            "sub": identity.object_id,
            "xms_mirid": identity.resource_id,
            "idtyp": "app",
            "ver": "1.0",
            "uti": uuid.uuid4().hex,
        }
        roles = identity.roles.get(resource) or identity.roles.get(resource.rstrip("/"))
        if roles:
            claims["roles"] = list(roles)
        token = jose.sign({"typ": "JWT", "alg": "RS256", "kid": self.issuer.kid}, claims, self.issuer.signing_key)
        with self._lock:
            self.issued_tokens.append(token)
        with self.issuer._lock:  # the leak scanners read the issuer's list
            self.issuer.issued_tokens.append(token)
        return token


class _Handler(BaseHTTPRequestHandler):
    server: ImdsServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet, like the bed's other servers

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        self._path, self._query, self._minted = url.path, query, False
        self._answer(self.server.imds, url.path, query)

    def _answer(self, imds: Imds, path: str, query: dict[str, str]) -> tuple[int, bool]:
        if path != TOKEN_PATH:
            return self._error(404, "not_found", "Not found"), False
        if (self.headers.get("Metadata") or "").lower() != "true":
            return self._error(400, "bad_request_102", "Required metadata header not specified"), False
        if self.headers.get("X-Forwarded-For") is not None:
            return self._error(400, "bad_request", "Request contains X-Forwarded-For header"), False
        fault = imds._take_fault()
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            headers = dict(fault.headers)
            if fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
            self._send(fault.status, fault.body if fault.body is not None else _error_body(fault.status), headers,
                       framed=not fault.unframed)
            return fault.status, False
        if not query.get("api-version"):
            return self._error(400, "invalid_request", "Required query variable 'api-version' is missing"), False
        resource = query.get("resource", "")
        if not resource:
            return self._error(400, "invalid_request", "Required audience parameter not specified"), False
        try:
            identity = imds._identity(query)
        except LookupError as exc:
            return self._error(400, "invalid_request", str(exc)), False
        answer, self._minted = imds.token(identity, resource)
        self._send(200, json.dumps(answer).encode())
        return 200, self._minted

    def _error(self, status: int, error: str, description: str) -> int:
        self._send(status, json.dumps({"error": error, "error_description": description}).encode())
        return status

    def _send(self, status: int, payload: bytes, headers: Mapping[str, str] | None = None, *,
              framed: bool = True) -> None:
        # recorded before the answer goes out: a client that has its answer finds its request in the log
        self.server.imds._record(ImdsRequest("GET", self._path, self._query, dict(self.headers.items()), status,
                                             self._minted))
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        if framed:
            self.send_header("Content-Length", str(len(payload)))
        else:  # the body ends with the connection
            self.send_header("Connection", "close")
            self.close_connection = True
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)


class ImdsServer(ThreadingHTTPServer):
    """IMDS on plain HTTP (as the real one, a link-local address) at `base_url`, http://127.0.0.1:PORT: point MSAL
    at it with AZURE_POD_IDENTITY_AUTHORITY_HOST=`base_url`. `ImdsServer(issuer).start()`; `stop()` when done."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, issuer: Issuer, tenant_id: str | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 **options: Any) -> None:
        """`options`: Imds's (lifetime, refresh_in, refresh_margin, caching)."""
        super().__init__((host, port), _Handler)
        self.base_url = f"http://{host}:{self.server_address[1]}"
        self.imds = Imds(issuer, tenant_id, **options)
        self._thread: threading.Thread | None = None

    def start(self) -> ImdsServer:
        self._thread = threading.Thread(target=self.serve_forever, name="graphcred-imds", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> ImdsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
