"""A local HTTPS token issuer that speaks the Entra ID v2.0 protocol MSAL talks to.

Endpoints (as on login.microsoftonline.com):
  GET  /{tenant}/v2.0/.well-known/openid-configuration
  GET  /{tenant}/discovery/v2.0/keys
  POST /{tenant}/oauth2/v2.0/token        (grant_type=client_credentials)

Apps are registered with client secrets and/or certificates (and optionally a trusted CA for subject-name/issuer
authentication with `x5c`) and/or federated identity credentials (workload identity federation: an external
issuer's token, e.g. a Kubernetes ServiceAccount token, presented as the client assertion). Client assertions are
verified as Entra does, federated ones against the external issuer's OIDC discovery document and JWKS fetched over
HTTPS (trusting the CAs given to `Issuer.trust_ca`) and cached per issuer. Faults can be injected per app, for every
app at once (an issuer-wide outage) and on a tenant's discovery document; every token request (faulted or not) is
counted per app so tests can assert how many requests a client made.

Certificates are the app's key credentials, each with a `keyId` (`Issuer.keys`). Those registered directly
(`register_app`, or put into `App.certificates`, as a person uploads one in the portal) are usable at once; those added
through the Graph API's `addKey` (`Issuer.add_key`) only after the replication delay (`set_replication_delay`), as
Entra's token service learns of a new key some time after the directory (until then an assertion signed with it is
refused with AADSTS700027); a removed one (`Issuer.remove_key`, or taken out of `App.certificates`) is refused at once.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import logging
import socket
import ssl
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from . import jose
from .pki import CertificateAuthority, new_key

log = logging.getLogger(__name__)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLOCK_SKEW = 300  # Entra tolerates five minutes of skew on client assertions
TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
METADATA_TIMEOUT = 5.0  # seconds for each fetch of an external issuer's discovery document or JWKS
RESERVED_SCOPES = {"openid", "profile", "offline_access"}


PROXY_HTML = b"<html><body>Access denied by proxy</body></html>"
GARBAGE_JSON = b'{"token_type": "Bearer", "expires_in": 3599, "access_tok'  # truncated mid-body


@dataclass
class Fault:
    """What an endpoint does instead of (or before) answering normally.

    Precedence when several are set: delay, drop, html, garbage, empty_token, status, aadsts."""

    aadsts: int | None = None  # answer with this AADSTS error
    status: int | None = None  # answer with this HTTP status (429, 500, 503, ...)
    retry_after: int | None = None  # Retry-After header, with status 429/503 (and html)
    delay: float = 0.0  # seconds to wait before answering (then answer normally unless another fault)
    drop: bool = False  # close the connection without a response
    times: int | None = None  # how many requests it applies to; None: until cleared
    html: bool = False  # a gateway's or login proxy's HTML page, with `status` (default 200)
    garbage: bool = False  # 200, Content-Type application/json, a truncated non-JSON body
    empty_token: bool = False  # 200 with a token response whose access_token is "" (token endpoint only)


def _take(faults: list[Fault]) -> Fault | None:
    """The first fault of a stack, counting down its `times` (call with the issuer's lock held)."""
    if not faults:
        return None
    fault = faults[0]
    if fault.times is not None:
        fault.times -= 1
        if fault.times <= 0:
            faults.pop(0)
    return fault


@dataclass(frozen=True)
class FederatedCredential:
    """A federated identity credential: tokens of `issuer` for `subject` whose `aud` is one of `audiences`.

    Matched as Entra matches them: exact, case-sensitive string comparison, no wildcards, no URL normalisation
    (a trailing slash on the issuer matters)."""

    issuer: str
    subject: str
    audiences: Sequence[str] = (TOKEN_EXCHANGE_AUDIENCE,)


def sha1_hex(cert: x509.Certificate) -> str:
    """The certificate's SHA-1 thumbprint in upper-case hex, as Entra shows it (customKeyIdentifier, the portal)."""
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # the thumbprint is SHA-1 by definition


@dataclass
class KeyCredential:
    """One certificate credential of an app, as the directory keeps it. Times are wall-clock seconds."""

    key_id: str
    certificate: x509.Certificate
    display_name: str
    added_at: float
    usable_from: float  # the token service accepts assertions signed with it from then on (replication)
    via: str  # "registered" (register_app, App.certificates) or "addKey" (the Graph API)
    removed_at: float | None = None

    @property
    def thumbprint(self) -> str:
        return sha1_hex(self.certificate)

    @property
    def start(self) -> dt.datetime:
        return self.certificate.not_valid_before_utc

    @property
    def end(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    def usable(self, now: float) -> bool:
        return self.removed_at is None and now >= self.usable_from


def display_name_of(cert: x509.Certificate) -> str:
    """What Entra names a certificate credential when none is given: the certificate's subject, `CN=...`."""
    return cert.subject.rfc4514_string()


@dataclass
class App:
    """An app registration with its credentials and granted application permissions.

    `certificates` are the app's current certificates (edit it to register or remove one at once); `key_credentials`
    are all its certificate credentials, removed ones included, kept in step with `certificates` by the issuer."""

    tenant_id: str
    client_id: str
    secrets: list[str] = field(default_factory=list)
    certificates: list[x509.Certificate] = field(default_factory=list)
    key_credentials: list[KeyCredential] = field(default_factory=list)
    object_id: str = ""  # the application object's id (not the client id); derived from the client id if not given
    replication_delay: float | None = None  # seconds before an added key is usable; None: the issuer's
    owners: set[str] = field(default_factory=set)  # client ids of apps owning it (Application.ReadWrite.OwnedBy)
    # subject-name/issuer auth: (subject common name, issuing CA) pairs accepted when x5c is sent
    trusted_subjects: list[tuple[str, x509.Certificate]] = field(default_factory=list)
    roles: dict[str, list[str]] = field(default_factory=dict)  # resource -> granted app roles
    lifetime: int = 3599  # access-token lifetime in seconds
    federated: list[FederatedCredential] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.object_id:
            self.object_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"application:{self.client_id}"))


class AadstsError(Exception):
    def __init__(self, code: int, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.code, self.status, self.error, self.description = code, status, error, description


def _body_for(exc: AadstsError) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
    return {
        "error": exc.error,
        "error_description": f"AADSTS{exc.code}: {exc.description} Trace ID: {trace} "
        f"Correlation ID: {correlation} Timestamp: {stamp}",
        "error_codes": [exc.code],
        "timestamp": stamp,
        "trace_id": trace,
        "correlation_id": correlation,
        "error_uri": f"https://login.microsoftonline.com/error?code={exc.code}",
    }


# The errors tests inject by code, worded as Entra words them.
def canned_error(code: int, app: App | None, tenant: str, client_id: str) -> AadstsError:
    if code == 7000215:
        return AadstsError(code, 401, "invalid_client",
                           "Invalid client secret provided. Ensure the secret being sent in the request "
                           "is the client secret value, not the client secret ID, for a secret added to "
                           f"app '{client_id}'.")
    if code == 700016:
        return AadstsError(code, 400, "unauthorized_client",
                           f"Application with identifier '{client_id}' was not found in the directory "
                           f"'{tenant}'. This can happen if the application has not been installed by the "
                           "administrator of the tenant or consented to by any user in the tenant. You may "
                           "have sent your authentication request to the wrong tenant.")
    if code == 90002:
        return AadstsError(code, 400, "invalid_request",
                           f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant "
                           "ID and are signing into the correct cloud.")
    if code == 700027:
        return AadstsError(code, 401, "invalid_client",
                           "The certificate with identifier used to sign the client assertion is not "
                           "registered on application.")
    if code == 700024:
        return AadstsError(code, 400, "invalid_client",
                           "Client assertion is not within its valid time range.")
    return AadstsError(code, 400, "invalid_request", "Injected error.")


# --- workload identity federation: Entra's answers, worded as Entra words them (401 invalid_client) -------------
_FIC_HINT = ("Check your federated identity credential Subject, Audience and Issuer against the presented "
             "assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation")


def _no_record(assertion_iss: str, sub: str, aud: str) -> AadstsError:
    return AadstsError(70021, 401, "invalid_client",
                       "No matching federated identity record found for presented assertion. "
                       f"Assertion Issuer: '{assertion_iss}'. Assertion Subject: '{sub}'. Assertion Audience: "
                       f"'{aud}'. https://docs.microsoft.com/en-us/azure/active-directory/develop/"
                       "workload-identity-federation")


def _no_record_for(code: int, what: str, value: str, extra: str = "") -> AadstsError:
    return AadstsError(code, 401, "invalid_client",
                       f"No matching federated identity record found for presented assertion {what} '{value}'. "
                       f"{extra}{_FIC_HINT}")


def _key_not_in_metadata(kid: str, issuer: str) -> AadstsError:
    return AadstsError(7000272, 401, "invalid_client",
                       f"The certificate with identifier {kid} used to sign the federated credential could not be "
                       f"found in the metadata of identity provider {issuer}. Please validate that your Identity "
                       "Provider's metadata exposes the key used to sign the incoming token.")


def _bad_signature() -> AadstsError:
    return AadstsError(700027, 401, "invalid_client", "Client assertion failed signature validation.")


def _entra_time(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def _out_of_time_range(now: float, nbf: float, exp: float) -> AadstsError:
    return AadstsError(700024, 401, "invalid_client",
                       f"Client assertion is not within its valid time range. Current time: {_entra_time(now)}, "
                       f"assertion valid from {_entra_time(nbf)}, expiry time of assertion {_entra_time(exp)}. "
                       "Review the documentation at https://learn.microsoft.com/entra/identity-platform/"
                       "certificate-credentials .")


def _audiences(aud: Any) -> list[str]:
    """`aud` is a string or a list of strings (Kubernetes always sends a list)."""
    if isinstance(aud, str):
        return [aud]
    return [a for a in aud if isinstance(a, str)] if isinstance(aud, list) else []


def _is_federated(app: App, assertion: str) -> bool:
    """An external token, not the app's own certificate assertion (that one names the client id as iss, has x5t)."""
    try:
        header, claims, _, _ = jose.parse(assertion)
    except jose.JoseError:
        return False  # the certificate path words the refusal
    own = any(k in header for k in ("x5t", "x5t#S256", "x5c")) or claims.get("iss") == app.client_id
    return not own


class Issuer:
    """The issuer's state: tenants, apps, faults, counters. Thread-safe; served by `IssuerServer`."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        # Other URLs of this same server (a node's pods reach it through a forward at another address): discovery
        # answers with the endpoints of the URL a client came in by, as its assertions' audience may name them.
        self.aliases: set[str] = set()
        self.signing_key = new_key()
        self.kid = "graphcred-testbed-" + uuid.uuid4().hex[:8]
        self._lock = threading.Lock()
        self._tenants: dict[str, str] = {}  # name or id -> tenant id
        self._apps: dict[tuple[str, str], App] = {}  # (tenant id, client id) -> app
        self._faults: dict[str, list[Fault]] = {}  # client id -> faults of its token requests
        self._discovery_faults: dict[str, list[Fault]] = {}  # tenant (as in the URL, or its id) -> faults
        self._global_faults: list[Fault] = []  # every token request, after the per-app faults
        self._token_requests: Counter[str] = Counter()
        self._request_log: list[tuple[str, float]] | None = None  # (client id, monotonic time), once recording
        self._discovery_requests = 0
        self._discovery_by_tenant: Counter[str] = Counter()  # tenant id (or unknown name) -> requests
        self._seen_jti: dict[str, float] = {}
        self.issued_tokens: list[str] = []  # every access token handed out (for leak scanners)
        self.presented_assertions: list[str] = []  # every federated assertion received (ServiceAccount tokens, ditto)
        self._trusted_cas: list[str] = []  # PEM; empty: the system's trust store
        self._issuer_keys: dict[str, dict[str, rsa.RSAPublicKey]] = {}  # external issuer -> kid -> key (cache)
        self._metadata_fetches: Counter[str] = Counter()  # external issuer -> discovery+JWKS fetches
        self._federated_requests: Counter[str] = Counter()  # client id -> token requests with a federated assertion
        self.replication_delay = 0.0  # seconds before a key added with addKey is usable (App.replication_delay wins)

    # --- registration -------------------------------------------------------------------------------------
    def add_tenant(self, tenant_id: str, *domains: str) -> None:
        with self._lock:
            self._tenants[tenant_id.lower()] = tenant_id.lower()
            for d in domains:
                self._tenants[d.lower()] = tenant_id.lower()

    def register_app(
        self,
        tenant_id: str,
        client_id: str | None = None,
        *,
        secret: str | None = None,
        certificate: x509.Certificate | None = None,
        trusted_subject: tuple[str, x509.Certificate] | None = None,
        roles: dict[str, list[str]] | None = None,
        lifetime: int = 3599,
        federated: Iterable[FederatedCredential] = (),
        replication_delay: float | None = None,
        owners: Iterable[str] = (),
    ) -> App:
        """`replication_delay`: this app's, instead of the issuer's; `owners`: client ids of apps that own it."""
        self.add_tenant(tenant_id)
        app = App(
            tenant_id=tenant_id.lower(),
            client_id=(client_id or str(uuid.uuid4())).lower(),
            secrets=[secret] if secret else [],
            certificates=[certificate] if certificate else [],
            trusted_subjects=[trusted_subject] if trusted_subject else [],
            roles=dict(roles or {}),
            lifetime=lifetime,
            federated=list(federated),
            replication_delay=replication_delay,
            owners={o.lower() for o in owners},
        )
        with self._lock:
            self._sync_keys(app, time.time())
            self._apps[(app.tenant_id, app.client_id)] = app
        return app

    def set_federated(self, client_id: str, credentials: Iterable[FederatedCredential]) -> None:
        """Replace the app's federated identity credentials (an empty list removes them all)."""
        app = self.app(client_id)
        with self._lock:
            app.federated = list(credentials)

    def add_federated(self, client_id: str, credential: FederatedCredential) -> None:
        app = self.app(client_id)
        with self._lock:
            app.federated = [*app.federated, credential]

    def trust_ca(self, pem: bytes) -> None:
        """Trust this CA (PEM) when fetching an external issuer's metadata, instead of the system's trust store."""
        with self._lock:
            self._trusted_cas.append(pem.decode())

    def registered_secrets(self) -> list[str]:
        """Every client secret ever registered (for leak scanners)."""
        with self._lock:
            return [s for app in self._apps.values() for s in app.secrets]

    def app(self, client_id: str) -> App:
        with self._lock:
            for (_, cid), app in self._apps.items():
                if cid == client_id.lower():
                    return app
        raise KeyError(client_id)

    def application(self, *, object_id: str | None = None, app_id: str | None = None) -> App | None:
        """The app whose application object id (or client id, `app_id`) this is; None if there is none."""
        with self._lock:
            for app in self._apps.values():
                if (object_id is not None and app.object_id == object_id.lower()) or (
                        app_id is not None and app.client_id == app_id.lower()):
                    return app
        return None

    # --- key credentials ----------------------------------------------------------------------------------
    def keys(self, client_id: str) -> list[KeyCredential]:
        """The app's certificate credentials in the order they were added, removed ones included (copies)."""
        app = self.app(client_id)
        with self._lock:
            self._sync_keys(app, time.time())
            return [replace(k) for k in app.key_credentials]

    def set_replication_delay(self, seconds: float, client_id: str | None = None) -> None:
        """Seconds before a key added with `add_key` is usable: for one app, or (no client id) for every app without
        a delay of its own. Keys already added keep the time they became (or become) usable."""
        if client_id is None:
            with self._lock:
                self.replication_delay = seconds
            return
        app = self.app(client_id)
        with self._lock:
            app.replication_delay = seconds

    def add_key(self, client_id: str, certificate: x509.Certificate, display_name: str | None = None) -> KeyCredential:
        """Add a certificate credential as Graph's addKey does: a new keyId, usable after the replication delay."""
        app = self.app(client_id)
        now = time.time()
        with self._lock:
            self._sync_keys(app, now)
            delay = app.replication_delay if app.replication_delay is not None else self.replication_delay
            key = KeyCredential(str(uuid.uuid4()), certificate, display_name or display_name_of(certificate),
                                added_at=now, usable_from=now + delay, via="addKey")
            app.key_credentials.append(key)
            app.certificates.append(certificate)
            return replace(key)

    def remove_key(self, client_id: str, key_id: str) -> KeyCredential:
        """Remove a certificate credential by keyId, refused for assertions at once; KeyError if there is no such
        current key."""
        app = self.app(client_id)
        now = time.time()
        with self._lock:
            self._sync_keys(app, now)
            key = next((k for k in app.key_credentials if k.key_id == key_id.lower() and k.removed_at is None), None)
            if key is None:
                raise KeyError(key_id)
            key.removed_at = now
            app.certificates[:] = [c for c in app.certificates if sha1_hex(c) != key.thumbprint]
            return replace(key)

    @staticmethod
    def _sync_keys(app: App, now: float) -> None:
        """Bring `key_credentials` in step with `certificates`, which tests (and the soak) edit directly: a new
        certificate there is registered (usable at once), a current key whose certificate is gone is removed.
        Call with the issuer's lock held."""
        current = {sha1_hex(c): c for c in app.certificates}
        live = {k.thumbprint for k in app.key_credentials if k.removed_at is None}
        for key in app.key_credentials:
            if key.removed_at is None and key.thumbprint not in current:
                key.removed_at = now
        for thumbprint, cert in current.items():
            if thumbprint not in live:
                app.key_credentials.append(KeyCredential(str(uuid.uuid4()), cert, display_name_of(cert), added_at=now,
                                                         usable_from=now, via="registered"))

    def _key_for_assertion(self, app: App, thumb: Any, presented: str) -> tuple[x509.Certificate | None, bool]:
        """The certificate of the app's key with this thumbprint, if usable now; and whether such a key exists but
        is not usable yet (added, not yet replicated)."""
        now = time.time()
        with self._lock:
            self._sync_keys(app, now)
            matching = [k for k in app.key_credentials if k.removed_at is None and thumb(k.certificate) == presented]
        usable = next((k.certificate for k in matching if k.usable(now)), None)
        return usable, usable is None and bool(matching)

    # --- faults and counters ------------------------------------------------------------------------------
    def fail(self, client_id: str, fault: Fault | None = None, **kwargs: Any) -> None:
        """Make the token endpoint misbehave for this app (faults stack; first match wins)."""
        with self._lock:
            self._faults.setdefault(client_id.lower(), []).append(fault or Fault(**kwargs))

    def fail_discovery(self, tenant_id: str, fault: Fault | None = None, **kwargs: Any) -> None:
        """Make this tenant's openid-configuration misbehave (same Fault semantics; faults stack)."""
        with self._lock:
            self._discovery_faults.setdefault(tenant_id.lower(), []).append(fault or Fault(**kwargs))

    def fail_all(self, fault: Fault | None = None, **kwargs: Any) -> None:
        """An issuer-wide outage: a fault for every token request of every app, checked after per-app faults."""
        with self._lock:
            self._global_faults.append(fault or Fault(**kwargs))

    def heal(self, client_id: str | None = None) -> None:
        """Clear one app's faults, or (no argument) every fault: per app, discovery and issuer-wide."""
        with self._lock:
            if client_id is None:
                self._faults.clear()
                self._discovery_faults.clear()
                self._global_faults.clear()
            else:
                self._faults.pop(client_id.lower(), None)

    def token_requests(self, client_id: str | None = None) -> int:
        with self._lock:
            if client_id is None:
                return sum(self._token_requests.values())
            return self._token_requests[client_id.lower()]

    def record_token_requests(self) -> None:
        """From now on, also note when each token request arrives (for `token_request_log`; off by default)."""
        with self._lock:
            self._request_log = []

    def token_request_log(self) -> list[tuple[str, float]]:
        """(client id, time.monotonic()) of every token request since `record_token_requests`."""
        with self._lock:
            return list(self._request_log or [])

    def federated_requests(self, client_id: str) -> int:
        """Token requests of this app that presented a federated assertion (also counted in token_requests)."""
        with self._lock:
            return self._federated_requests[client_id.lower()]

    def metadata_fetches(self, issuer: str) -> int:
        """How often the external issuer's discovery document (and then its JWKS) was fetched."""
        with self._lock:
            return self._metadata_fetches[issuer]

    @property
    def discovery_requests(self) -> int:
        with self._lock:
            return self._discovery_requests

    def _take_fault(self, client_id: str) -> Fault | None:
        with self._lock:
            return _take(self._faults.get(client_id, [])) or _take(self._global_faults)

    def _take_discovery_fault(self, tenant: str) -> Fault | None:
        with self._lock:
            faults = self._discovery_faults.get(tenant.lower())
            if not faults:  # registered under the tenant id, asked for by domain name (or the reverse)
                tid = self._tenants.get(tenant.lower())
                faults = self._discovery_faults.get(tid) if tid else None
            return _take(faults or [])

    def count_discovery(self, tenant: str) -> None:
        with self._lock:
            self._discovery_requests += 1
            self._discovery_by_tenant[self._tenants.get(tenant.lower(), tenant.lower())] += 1

    def discovery_requests_for(self, tenant: str) -> int:
        """Discovery requests for one tenant (by id or domain name), faulted ones included."""
        with self._lock:
            return self._discovery_by_tenant[self._tenants.get(tenant.lower(), tenant.lower())]

    # --- protocol ------------------------------------------------------------------------------------------
    def resolve_tenant(self, tenant: str) -> str:
        with self._lock:
            tid = self._tenants.get(tenant.lower())
        if tid is None:
            raise canned_error(90002, None, tenant, "")
        return tid

    def token_endpoint(self, tenant_id: str, base: str | None = None) -> str:
        return f"{base or self.base_url}/{tenant_id}/oauth2/v2.0/token"

    def issuer_for(self, tenant_id: str) -> str:
        return f"{self.base_url}/{tenant_id}/v2.0"

    def openid_configuration(self, tenant: str, via: str | None = None) -> dict[str, Any]:
        """The tenant's discovery document; `via`: the base URL the request came in by, if one of `aliases`."""
        tid = self.resolve_tenant(tenant)
        base = via if via in self.aliases else self.base_url
        return {
            "token_endpoint": self.token_endpoint(tid, base),
            "token_endpoint_auth_methods_supported": [
                "client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{base}/{tid}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": self.issuer_for(tid),
            "request_uri_parameter_supported": False,
            "authorization_endpoint": f"{base}/{tid}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/{tid}/oauth2/v2.0/devicecode",
            "end_session_endpoint": f"{base}/{tid}/oauth2/v2.0/logout",
            "tenant_region_scope": "EU",
            "cloud_instance_name": "graphcred.test",
        }

    def jwks(self) -> dict[str, Any]:
        return {"keys": [jose.jwk(self.signing_key.public_key(), self.kid)]}

    def token(self, tenant: str, form: dict[str, str]) -> dict[str, Any]:
        """Client-credentials grant. Raises AadstsError for protocol errors."""
        tid = self.resolve_tenant(tenant)
        if form.get("grant_type") != "client_credentials":
            raise AadstsError(70003, 400, "unsupported_grant_type",
                              "The app requested an unsupported grant type.")
        client_id = form.get("client_id", "").lower()
        with self._lock:
            app = self._apps.get((tid, client_id))
        if app is None:
            raise canned_error(700016, None, tenant, client_id)
        self._authenticate(app, tid, form)
        resource = self._resource(form.get("scope", ""))
        now = int(time.time())
        claims = {
            "aud": resource,
            "iss": self.issuer_for(tid),
            "iat": now,
            "nbf": now,
            "exp": now + app.lifetime,
            "tid": tid,
            "appid": app.client_id,
            "azp": app.client_id,
            "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, app.client_id)),
            "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, app.client_id)),
            "idtyp": "app",
            "ver": "2.0",
            "uti": uuid.uuid4().hex,  # makes every token distinct, as Entra's are
        }
        roles = app.roles.get(resource) or []
        if roles:
            claims["roles"] = list(roles)
        token = jose.sign({"typ": "JWT", "alg": "RS256", "kid": self.kid}, claims, self.signing_key)
        with self._lock:
            self.issued_tokens.append(token)
        return {"token_type": "Bearer", "expires_in": app.lifetime, "ext_expires_in": app.lifetime,
                "access_token": token}

    @staticmethod
    def _resource(scope: str) -> str:
        scopes = [s for s in scope.split() if s not in RESERVED_SCOPES]
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            raise AadstsError(1002012, 400, "invalid_scope",
                              f"The provided value for scope {scope} is not valid. Client credential flows "
                              "must have a scope value with /.default suffixed to the resource identifier "
                              "(application ID URI).")
        return scopes[0][: -len("/.default")]

    def _authenticate(self, app: App, tid: str, form: dict[str, str]) -> None:
        if "client_secret" in form:
            if form["client_secret"] not in app.secrets:
                raise canned_error(7000215, app, tid, app.client_id)
            return
        if form.get("client_assertion_type") == ASSERTION_TYPE and "client_assertion" in form:
            if _is_federated(app, form["client_assertion"]):
                with self._lock:
                    self._federated_requests[app.client_id] += 1
                    self.presented_assertions.append(form["client_assertion"])
                self._verify_federated(app, form["client_assertion"])
            else:
                self._verify_assertion(app, tid, form["client_assertion"])
            return
        raise AadstsError(7000218, 401, "invalid_client",
                          "The request body must contain the following parameter: 'client_assertion' or "
                          "'client_secret'.")

    def _verify_assertion(self, app: App, tid: str, assertion: str) -> None:
        def bad(why: str) -> AadstsError:
            return AadstsError(700027, 401, "invalid_client", why)

        try:
            header, claims, signing_input, signature = jose.parse(assertion)
        except jose.JoseError:
            raise bad("Client assertion failed signature validation.") from None
        alg = header.get("alg")
        if alg == "RS256":
            wanted, thumb = "x5t", jose.thumbprint_sha1
        elif alg == "PS256":
            wanted, thumb = "x5t#S256", jose.thumbprint_sha256
        else:
            raise bad(f"Client assertion uses an unsupported algorithm '{alg}'.")
        presented = header.get(wanted)
        if not isinstance(presented, str) or not presented:
            raise bad(f"Client assertion with alg {alg} must carry the '{wanted}' header.")
        presented = presented.rstrip("=")  # msal pads its base64url thumbprints; Entra accepts both
        cert, replicating = self._key_for_assertion(app, thumb, presented)
        if cert is None:
            cert = self._trusted_by_subject(app, header.get("x5c"), presented, thumb)
        if cert is None:
            if replicating:  # added with addKey, not yet known to the token service: Entra answers as for no key
                log.info("assertion of app %s signed with key %s: added, not yet replicated", app.client_id, presented)
            raise bad("The certificate with identifier used to sign the client assertion is not registered "
                      f"on application. [Reason - The key was not found., Thumbprint of key used by client: "
                      f"'{presented}']")
        public_key = cert.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey) or not jose.verify_signature(
            alg, public_key, signing_input, signature
        ):
            raise bad("Client assertion contains an invalid signature.")
        audiences = {self.token_endpoint(t, base) for t in (tid, app.tenant_id)
                     for base in (self.base_url, *self.aliases)}
        aud = claims.get("aud")
        if aud not in audiences:
            raise AadstsError(700021, 400, "invalid_client",
                              f"Client assertion audience claim does not match Realm issuer. Review the "
                              f"documentation at https://aka.ms/certCredentials . Audience '{aud}'.")
        if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
            raise AadstsError(700023, 400, "invalid_client",
                              "Client assertion 'iss' and 'sub' must both be the client id.")
        now = time.time()
        exp, nbf = claims.get("exp"), claims.get("nbf", claims.get("iat"))
        if not isinstance(exp, (int, float)) or exp + CLOCK_SKEW < now or (
            isinstance(nbf, (int, float)) and nbf - CLOCK_SKEW > now
        ):
            raise canned_error(700024, app, tid, app.client_id)
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise bad("Client assertion must carry a 'jti' claim.")
        with self._lock:
            for old in [j for j, until in self._seen_jti.items() if until < now]:
                del self._seen_jti[old]
            if jti in self._seen_jti:
                raise bad("Client assertion was already used (jti replayed).")
            self._seen_jti[jti] = float(exp) + CLOCK_SKEW

    # --- workload identity federation --------------------------------------------------------------------------
    def _verify_federated(self, app: App, assertion: str) -> None:
        """Entra's checks of an external token: a record for its issuer, the issuer's key, time, subject, audience.

        Nothing is fetched for an issuer no record of the app trusts. No replay check: the same federated token may
        be exchanged many times while it is valid (Kubernetes projects one token file for an hour)."""
        try:
            header, claims, signing_input, signature = jose.parse(assertion)
        except jose.JoseError:
            raise _bad_signature() from None
        iss, sub, auds = str(claims.get("iss", "")), str(claims.get("sub", "")), _audiences(claims.get("aud"))
        with self._lock:
            records = list(app.federated)
        try:
            if not records:
                raise _no_record(iss, sub, ", ".join(auds))
            records = [r for r in records if r.issuer == iss]
            if not records:
                raise _no_record_for(700211, "issuer", iss)
            kid = str(header.get("kid", ""))
            if header.get("alg") != "RS256" or not jose.verify_signature(
                    "RS256", self._issuer_key(iss, kid), signing_input, signature):
                raise _bad_signature()
            left = self._check_time(claims)
            records = self._match_subject(records, sub)
            matched = next((a for a in auds if any(a in r.audiences for r in records)), None)
            if matched is None:
                raise _no_record_for(700212, "audience", ", ".join(auds))
        except AadstsError as exc:
            log.info("federated assertion for app %s refused: AADSTS%d (iss %s, sub %s, aud %s)",
                     app.client_id, exc.code, iss, sub, ", ".join(auds))
            raise
        log.info("federated assertion for app %s: signature RS256 kid=%s verified with the JWKS of %s, iss matched, "
                 "sub matched %s, aud matched %s, exp ok (%d s left), nbf ok",
                 app.client_id, kid, iss, sub, matched, left)

    @staticmethod
    def _check_time(claims: dict[str, Any]) -> int:
        """Seconds the assertion has left; AADSTS700024 outside exp/nbf (with Entra's skew)."""
        now = time.time()
        exp, nbf = claims.get("exp"), claims.get("nbf", 0)
        nbf = nbf if isinstance(nbf, (int, float)) else 0
        if not isinstance(exp, (int, float)) or exp + CLOCK_SKEW < now or nbf - CLOCK_SKEW > now:
            raise _out_of_time_range(now, nbf, exp if isinstance(exp, (int, float)) else 0)
        return int(exp - now)

    @staticmethod
    def _match_subject(records: list[FederatedCredential], sub: str) -> list[FederatedCredential]:
        matching = [r for r in records if r.subject == sub]
        if matching:
            return matching
        if any(r.subject.lower() == sub.lower() for r in records):  # Entra matches case-sensitively since 2024
            raise _no_record_for(7002138, "subject", sub,
                                 "The subject matches with case-insensitive comparison, but not with case-sensitive "
                                 "comparison. ")
        raise _no_record_for(700213, "subject", sub)

    def _issuer_key(self, issuer: str, kid: str) -> rsa.RSAPublicKey:
        """The issuer's signing key `kid`, from the cache or (unknown kid: the issuer rotated) freshly fetched."""
        with self._lock:
            key = self._issuer_keys.get(issuer, {}).get(kid)
        if key is not None:
            return key
        keys = self._fetch_issuer_keys(issuer, kid)
        with self._lock:
            self._issuer_keys[issuer] = keys
        if kid not in keys:
            raise _key_not_in_metadata(kid, issuer)
        return keys[kid]

    def _fetch_issuer_keys(self, issuer: str, kid: str) -> dict[str, rsa.RSAPublicKey]:
        """OIDC discovery as Entra does it: {issuer}/.well-known/openid-configuration, then its jwks_uri."""
        with self._lock:
            self._metadata_fetches[issuer] += 1
            cas = "".join(self._trusted_cas)
        ctx = ssl.create_default_context(cadata=cas) if cas else ssl.create_default_context()
        # no proxy from the environment: the bed's issuers are local
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))
        try:
            if not issuer.startswith("https://"):
                raise ValueError("the issuer is not an https URL")
            with opener.open(issuer.rstrip("/") + "/.well-known/openid-configuration", timeout=METADATA_TIMEOUT) as r:
                config = json.loads(r.read())
            if config.get("issuer") != issuer:
                raise ValueError(f"the discovery document names issuer {config.get('issuer')!r}")
            with opener.open(str(config["jwks_uri"]), timeout=METADATA_TIMEOUT) as r:
                jwks = json.loads(r.read())
            return {str(k["kid"]): jose.public_key_from_jwk(k) for k in jwks["keys"]
                    if k.get("kty") == "RSA" and k.get("kid")}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Entra then cannot find the signing key in the issuer's metadata
            log.info("metadata of federated issuer %s unavailable: %s", issuer, exc)
            raise _key_not_in_metadata(kid, issuer) from None

    @staticmethod
    def _trusted_by_subject(
        app: App, x5c: Any, presented: str, thumb: Any
    ) -> x509.Certificate | None:
        """Subject-name/issuer auth: the leaf in x5c is accepted if a trusted CA signed it for the subject."""
        if not app.trusted_subjects or not isinstance(x5c, list) or not x5c:
            return None
        try:
            leaf = x509.load_der_x509_certificate(base64.b64decode(x5c[0]))
        except ValueError:
            return None
        if thumb(leaf) != presented:
            return None
        cn = leaf.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
        for subject, ca in app.trusted_subjects:
            ca_key = ca.public_key()
            if not cn or cn[0].value != subject or leaf.issuer != ca.subject:
                continue
            if not isinstance(ca_key, rsa.RSAPublicKey) or leaf.signature_hash_algorithm is None:
                continue
            try:
                ca_key.verify(leaf.signature, leaf.tbs_certificate_bytes, padding.PKCS1v15(),
                              leaf.signature_hash_algorithm)
            except Exception:  # noqa: BLE001 - any failure means "not trusted"
                continue
            return leaf
        return None


class _Handler(BaseHTTPRequestHandler):
    server: IssuerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: request lines could carry nothing secret, but tests read their own output

    def _send_json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(body).encode(), "application/json; charset=utf-8", headers)

    def _send(self, status: int, payload: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store, no-cache")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)

    def _answer_fault(self, fault: Fault, tenant: str, client_id: str) -> bool:
        """Act out `fault`; True if it answered (or dropped) the request, False to answer normally."""
        if fault.delay:
            time.sleep(fault.delay)
        retry_after = {"Retry-After": str(fault.retry_after)} if fault.retry_after else {}
        if fault.drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        elif fault.html:
            self._send(fault.status or 200, PROXY_HTML, "text/html; charset=utf-8", retry_after)
        elif fault.garbage:
            self._send(200, GARBAGE_JSON, "application/json; charset=utf-8")
        elif fault.empty_token:
            self._send_json(200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                                  "access_token": ""})
        elif fault.status is not None:
            self._send_json(fault.status, {"error": "temporarily_unavailable",
                                           "error_description": f"Injected HTTP {fault.status}."}, retry_after)
        elif fault.aadsts is not None:
            exc = canned_error(fault.aadsts, None, tenant, client_id)
            self._send_json(exc.status, _body_for(exc))
        else:
            return False
        return True

    def do_GET(self) -> None:
        issuer = self.server.issuer
        parts = [p for p in urlsplit(self.path).path.split("/") if p]
        try:
            if len(parts) == 4 and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
                issuer.count_discovery(parts[0])
                fault = issuer._take_discovery_fault(parts[0])
                if fault is not None and self._answer_fault(fault, parts[0], ""):
                    return
                self._send_json(200, issuer.openid_configuration(parts[0], f"https://{self.headers.get('Host')}"))
            elif len(parts) == 4 and parts[1:] == ["discovery", "v2.0", "keys"]:
                self._send_json(200, issuer.jwks())
            else:
                self._send_json(404, {"error": "not_found"})
        except AadstsError as exc:
            body = _body_for(exc)
            if exc.code == 90002:
                body["error"] = "invalid_tenant"
            self._send_json(exc.status, body)

    def do_POST(self) -> None:
        issuer = self.server.issuer
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("utf-8", "replace")
        form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        parts = [p for p in urlsplit(self.path).path.split("/") if p]
        if not (len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]):
            self._send_json(404, {"error": "not_found"})
            return
        client_id = form.get("client_id", "").lower()
        with issuer._lock:
            issuer._token_requests[client_id] += 1
            if issuer._request_log is not None:
                issuer._request_log.append((client_id, time.monotonic()))
        fault = issuer._take_fault(client_id)
        if fault is not None and self._answer_fault(fault, parts[0], client_id):
            return
        try:
            self._send_json(200, issuer.token(parts[0], form))
        except AadstsError as exc:
            self._send_json(exc.status, _body_for(exc))


class IssuerServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, ca: CertificateAuthority, host: str = "127.0.0.1", port: int = 0,
                 also: tuple[str, ...] = ()) -> None:
        """`also`: other addresses its certificate names (where a forward to it listens, see `Issuer.aliases`)."""
        super().__init__((host, port), _Handler)
        self.base_url = f"https://{host}:{self.server_address[1]}"
        self.issuer = Issuer(self.base_url)
        pair = ca.issue("graphcred-testbed-issuer", server=True, hosts=(host, "localhost", *also))
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tmp = tempfile.TemporaryDirectory(prefix="graphcred-issuer-")
        crt, key = pair.write(Path(self._tmp.name), "issuer")
        self._tls.load_cert_chain(crt, key)
        self.socket = self._tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self._thread: threading.Thread | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            if isinstance(request, ssl.SSLSocket):
                request.settimeout(30)
                request.do_handshake()
            super().finish_request(request, client_address)
        except (ssl.SSLError, OSError):
            pass  # a client that hangs up mid-handshake is not our problem

    def start(self) -> IssuerServer:
        self._thread = threading.Thread(target=self.serve_forever, name="graphcred-issuer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread:
            self._thread.join(timeout=5)
        self._tmp.cleanup()
