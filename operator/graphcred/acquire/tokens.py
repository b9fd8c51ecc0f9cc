"""MSAL adapter: acquire a fresh app-only token with `ConfidentialClientApplication.acquire_token_for_client`.

Every acquisition builds a new application object with an empty token cache, so it always reaches the token
endpoint and returns a *new* token (msal would otherwise answer from its cache until five minutes before expiry)
and signs a new client assertion (new `jti`). For workload identity the assertion is the ServiceAccount token the
reconciler requested for this very acquisition (`Federation.assertion`); it is sent, never logged or kept. Discovery
is still fetched once per authority: the shared `PinnedCASession` caches it. Failures become `AcquisitionError`s
with a reason from `graphcred.api.model.Reason`.

What an authority answers reaches status, Events and logs only as classes: the HTTP status, a media type, an OAuth
`error` code from a fixed list, AADSTS digits. Never a description, a body or an exception's name: a credential's
author may point it at an allowed private authority, whose answers are theirs to choose.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msal
import requests

from graphcred.acquire.authority import not_allowed_message, origin
from graphcred.acquire.credentials import Certificate, ClientSecret, Federation, ManagedIdentity, Material
from graphcred.acquire.httpsession import DEFAULT_TIMEOUT, MAX_ANSWER, ExchangeFailed, Failure, PinnedCASession
from graphcred.acquire.jwt import TokenClaims, sign_client_assertion, unverified_claims
from graphcred.api import failures  # its Failure; httpsession's is another (why an exchange failed)
from graphcred.api.model import AppIdentity, Reason

log = logging.getLogger(__name__)

_YEAR = 366 * 24 * 3600.0
_AADSTS = re.compile(r"AADSTS(\d{5,7})(?!\d)")
# The token endpoint's `error` values that are echoed: RFC 6749 §5.2, its §4.1.2.1 server errors, and the ones
# Entra adds. Any other value is the peer's free text and is not repeated.
OAUTH_ERRORS = frozenset({
    "invalid_request", "invalid_client", "invalid_grant", "unauthorized_client", "unsupported_grant_type",
    "invalid_scope", "access_denied", "server_error", "temporarily_unavailable",
    "interaction_required", "consent_required", "invalid_resource", "invalid_target", "expired_token",
})


class _NoResponseBodies(logging.Filter):
    """msal logs an unparseable token response's whole body at ERROR (a proxy's page, or a truncated token).
    The operator reports the failure itself, without the body: drop that record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Token response is not in json format")


logging.getLogger("msal.oauth2cli.oauth2").addFilter(_NoResponseBodies())


@dataclass(frozen=True)
class Token:
    access_token: str = field(repr=False)
    expires_on: dt.datetime
    issued_at: dt.datetime
    claims: TokenClaims
    # the source's own hint of when to ask again (a managed identity's refresh_in); None: graphcred's schedule
    refresh_on: dt.datetime | None = None

    @property
    def lifetime(self) -> dt.timedelta:
        return self.expires_on - self.issued_at


class AcquisitionError(failures.Failure):
    """Why a token could not be had. `permanent`: it needs the user (a fix in Entra or in the spec or Secret), so
    retry only slowly; otherwise transient: retry with backoff, honouring `retry_after` (seconds). `code`: the
    AADSTS code Entra answered with, if any."""

    def __init__(self, reason: Reason, message: str, *, permanent: bool, retry_after: float | None = None,
                 code: int | None = None) -> None:
        super().__init__(reason, message, retry=failures.Retry.NEEDS_USER if permanent else failures.Retry.TRANSIENT,
                         retry_after=retry_after)
        self.code = code

    @property
    def permanent(self) -> bool:
        return self.retry is failures.Retry.NEEDS_USER


# What each AADSTS code means for the user, and whether it needs the user (permanent) or may pass by itself.
_KNOWN_CODES: dict[int, tuple[Reason, str, bool]] = {
    7000215: (Reason.UNAUTHORIZED, "the client secret was rejected: check that the Secret holds the secret's "
                                   "Value (not its ID) and that it has not expired in the app registration", True),
    7000222: (Reason.UNAUTHORIZED, "the client secret has expired: create a new one in the app registration "
                                   "and update the Secret", True),
    700016: (Reason.UNAUTHORIZED, "the app (clientId) was not found in the tenant: check clientId and tenantId, "
                                  "and that the app is registered or consented in that tenant", True),
    90002: (Reason.UNAUTHORIZED, "the tenant was not found: check tenantId and cloud", True),
    700027: (Reason.UNAUTHORIZED, "the certificate was rejected: upload this certificate (its public part) to "
                                  "the app registration, or check the Secret holds the matching key", True),
    # Clock skew passes when the clock is corrected (NTP): retried with backoff like an outage.
    700024: (Reason.UNAUTHORIZED, "the client assertion is outside its valid time range: check the node's clock",
             False),
    700023: (Reason.UNAUTHORIZED, "the client assertion was rejected: check clientId", True),
    700021: (Reason.UNAUTHORIZED, "the client assertion audience was rejected: check tenantId and authorityHost",
             True),
    1002012: (Reason.INVALID_SPEC, "the scope is not valid: use '<resource>/.default'", True),
    70011: (Reason.INVALID_SPEC, "the scope is not valid: use '<resource>/.default'", True),
    500011: (Reason.INVALID_SPEC, "the resource in scopes was not found in the tenant: check the scope", True),
    7000218: (Reason.UNAUTHORIZED, "no credential was sent", True),
    # Workload identity federation: Entra found no federated identity credential on the app matching the
    # ServiceAccount token's issuer, subject and audience (70021), or, more specifically, none for its issuer
    # (700211), audience (700212) or subject (700213). Fixed in the app registration, never by retrying.
    70021: (Reason.UNAUTHORIZED, "no federated identity credential of the app matches the ServiceAccount token: add "
                                 "one for the cluster's issuer with this subject and audience", True),
    700211: (Reason.UNAUTHORIZED, "no federated identity credential of the app has the ServiceAccount token's "
                                  "issuer: its issuer must be the cluster's service-account issuer URL, exactly", True),
    700212: (Reason.UNAUTHORIZED, "no federated identity credential of the app accepts the ServiceAccount token's "
                                  "audience: its audiences must include spec.credential.workloadIdentity.audience",
             True),
    700213: (Reason.UNAUTHORIZED, "no federated identity credential of the app has the ServiceAccount token's "
                                  "subject: its subject must be this one, exactly (case-sensitive)", True),
    # Entra matches the subject case-sensitively; this says it would have matched but for case.
    7002138: (Reason.UNAUTHORIZED, "the federated identity credential's subject differs from the ServiceAccount "
                                   "token's only in case: Entra compares subjects case-sensitively; correct it",
              True),
}
_FEDERATION_CODES = frozenset({70021, 700211, 700212, 700213, 7002138})


def _known_refusal(code: int) -> AcquisitionError:
    reason, advice, permanent = _KNOWN_CODES[code]
    return AcquisitionError(reason, f"Entra ID refused the request (AADSTS{code}): {advice}",
                            permanent=permanent, code=code)


def _retrying(retry_after: float | None) -> str:
    return f"retrying after {retry_after:.0f} s (Retry-After)" if retry_after else "retrying with backoff"


def _answer(what: str, status: int | None, content_type: str | None = None) -> str:
    """E.g. "token endpoint answered HTTP 429 (not JSON: text/html)": what happened, never the body."""
    text = f"{what} answered HTTP {status}" if status is not None else f"{what} failed"
    if content_type is not None:
        text += f" (not JSON: {content_type or 'no Content-Type'})"
    return text


def status_error(what: str, status: int | None, retry_after: float | None, *, json_object: bool = True,
                 content_type: str = "") -> AcquisitionError | None:
    """Classify by HTTP status first: 429 is throttling; 408, 425, 5xx and an unparseable body (a gateway's or a
    login proxy's page) are the authority being unavailable. All transient. None: the status and body say
    nothing by themselves (a JSON OAuth answer): look at its error codes."""
    described = _answer(what, status, None if json_object else content_type)
    if status == 429:
        return AcquisitionError(Reason.THROTTLED, f"{described}; {_retrying(retry_after)}", permanent=False,
                                retry_after=retry_after)
    if status in (408, 425) or (status is not None and status >= 500) or not json_object:
        return AcquisitionError(Reason.AUTHORITY_UNAVAILABLE, f"{described}; {_retrying(retry_after)}",
                                permanent=False, retry_after=retry_after)
    return None


def classify_error_response(result: dict[str, Any], status: int | None, retry_after: float | None
                            ) -> AcquisitionError:
    """Turn msal's error dict (the token endpoint's JSON) into an AcquisitionError."""
    by_status = status_error("token endpoint", status, retry_after)
    raw_codes = result.get("error_codes")
    codes = [c for c in (raw_codes if isinstance(raw_codes, list) else [])
             if isinstance(c, int) and not isinstance(c, bool) and 10_000 <= c <= 9_999_999]
    if by_status is not None:
        by_status.code = codes[0] if codes else None  # a 429's code says whether the whole tenant is throttled
        return by_status
    error = result.get("error")
    error = error if isinstance(error, str) and error in OAUTH_ERRORS else "unrecognised error code"
    if status is None and error in ("temporarily_unavailable", "server_error"):
        return AcquisitionError(Reason.AUTHORITY_UNAVAILABLE, f"token endpoint answered {error}; "
                                f"{_retrying(retry_after)}", permanent=False, retry_after=retry_after)
    for code in codes:
        if code in _KNOWN_CODES:
            return _known_refusal(code)
    # Unknown refusals are retried, slowly: better a few requests than a credential stuck forever.
    code_text = f"AADSTS{codes[0]}, {error}" if codes else error
    return AcquisitionError(Reason.UNAUTHORIZED, f"Entra ID refused the request ({code_text})",
                            permanent=False, retry_after=retry_after, code=codes[0] if codes else None)


# What msal raises when an answer cannot be used (json.loads, missing keys, wrong types, a nesting too deep to
# parse): the answer's fault, provided there was one (see `_unusable_answer`).
_UNUSABLE = (ValueError, KeyError, TypeError, AttributeError, RecursionError)


def _same_host(identity: AppIdentity, token_endpoint: str) -> None:
    """A credential (secret, assertion, ServiceAccount token) goes to the authority host and nowhere else: not to a
    token endpoint on another host, or on plain http, that a discovery document (a proxy's, a private one's)
    names. The endpoint's text is the peer's: not repeated."""
    if origin(token_endpoint) != origin(identity.authority_base()) \
            or urlsplit(token_endpoint).scheme.lower() != "https":
        raise AcquisitionError(Reason.AUTHORITY_NOT_ALLOWED,
                               f"{identity.authority()}: discovery names a token endpoint that is not on the authority "
                               "host itself (https, same host and port); graphcred sends credentials to the "
                               "authority host only", permanent=True)


class _NothingCached(msal.TokenCache):  # type: ignore[misc]
    """A token cache that keeps nothing: every acquisition reaches the token endpoint (the application is built
    anew each time anyway), and msal's indexing of each answer (a tenth of an acquisition's time) is skipped."""

    def add(self, event: Any, now: Any = None) -> None:
        pass


class TokenClient:
    """Acquires tokens. Thread-safe; blocking (run it in an executor)."""

    def __init__(self, ca_bundle: str | None = None, timeout: tuple[float, float] = DEFAULT_TIMEOUT,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
                 authority_hosts: Collection[str] = ()) -> None:
        """`timeout`: (connect, whole exchange) in seconds: discovery and token request together end within the
        second. `authority_hosts`: hosts besides the clouds' own login hosts that may be contacted."""
        self.session = PinnedCASession(ca_bundle, timeout, authority_hosts)
        # tokens of the host's managed identity (ClusterGraphApps only): set by the wiring
        self.managed: Callable[[ManagedIdentity, Sequence[str]], Token] | None = None
        self.deadline = timeout[1]
        self._clock = clock

    def acquire(self, identity: AppIdentity, scopes: Sequence[str], material: Material) -> Token:
        if isinstance(material, ManagedIdentity):
            # not Entra's token endpoint: the host's identity endpoint (IMDS), through msal's ManagedIdentityClient
            if self.managed is None:
                raise AcquisitionError(Reason.INVALID_CREDENTIAL, "managed identity is not available in this "
                                       "operator", permanent=True)
            return self.managed(material, scopes)
        if not self.session.allowed.allows(identity.authority_base()):
            raise AcquisitionError(Reason.AUTHORITY_NOT_ALLOWED, not_allowed_message(identity.authority_base()),
                                   permanent=True)
        self.session.forget_last_response()
        try:
            with self.session.exchange():
                return self._exchange(identity, scopes, material)
        except ExchangeFailed as exc:
            raise self._network_error(exc) from None

    def _exchange(self, identity: AppIdentity, scopes: Sequence[str], material: Material) -> Token:
        try:
            app = self._application(identity, material)
        except ExchangeFailed:
            raise
        except requests.exceptions.RequestException as exc:  # none but ExchangeFailed leave the session
            raise self._network_error(ExchangeFailed(Failure.CONNECTION, identity.authority_base())) from exc
        except (msal.exceptions.MsalServiceError, *_UNUSABLE) as exc:  # msal raises MsalServiceError for 5xx
            raise self._discovery_error(identity, exc) from None
        started = self._clock()
        try:
            result = app.acquire_token_for_client(list(scopes))
        except ExchangeFailed:
            raise
        except requests.exceptions.RequestException as exc:
            raise self._network_error(ExchangeFailed(Failure.CONNECTION, identity.authority_base())) from exc
        except msal.exceptions.MsalServiceError:  # msal raises these for 5xx
            raise self._unusable_answer(None) from None
        except _UNUSABLE as exc:
            raise self._unusable_answer(exc) from None
        if not isinstance(result, dict):  # the endpoint's answer as msal passed it on (a JSON list, say)
            raise self._unusable_answer(None)
        last = self.session.last_response()
        access_token = result.get("access_token")
        if isinstance(access_token, str) and access_token.strip() and "error" not in result:
            return self._token(access_token, result, started)
        if last is not None and (by_status := status_error("token endpoint", last.status, last.retry_after,
                                                           json_object=last.json_object,
                                                           content_type=last.content_type)):
            raise by_status
        if "error" in result:
            error = classify_error_response(result, last.status if last else None,
                                            last.retry_after if last else None)
            raise _with_federation_hint(error, material)
        # A 200 without a token: a private authority's bug. Never write it; ask again later.
        raise AcquisitionError(Reason.AUTHORITY_UNAVAILABLE,
                               f"{_answer('token endpoint', last.status if last else None)} but the token "
                               "response has no access_token; retrying with backoff", permanent=False)

    def _unusable_answer(self, exc: Exception | None) -> AcquisitionError:
        """msal could not use the token endpoint's answer (or raised for its 5xx status)."""
        last = self.session.last_response()
        if last is None or last.discovery:
            if exc is None:
                return AcquisitionError(Reason.AUTHORITY_UNAVAILABLE, "token endpoint failed; retrying with "
                                        "backoff", permanent=False)
            raise exc  # no answer to blame: not the authority's doing
        by_status = status_error("token endpoint", last.status, last.retry_after, json_object=last.json_object,
                                 content_type=last.content_type)
        return by_status or AcquisitionError(
            Reason.AUTHORITY_UNAVAILABLE, f"{_answer('token endpoint', last.status)} with a token response that "
            "could not be used; retrying with backoff", permanent=False)

    def _application(self, identity: AppIdentity, material: Material
                     ) -> msal.ConfidentialClientApplication:
        credential: Any
        holder: list[msal.ConfidentialClientApplication] = []
        if isinstance(material, ClientSecret):
            credential = material.value
        elif isinstance(material, Certificate):
            # We sign the assertion ourselves: msal's own certificate path can only do PS256 together with x5c,
            # and sendX5c must stay the user's choice. The audience is the token endpoint from discovery.
            def assertion() -> str:
                return sign_client_assertion(
                    key=material.key, now=int(time.time()), jti=str(uuid.uuid4()),
                    sha256_thumbprint=material.sha256_thumbprint, client_id=identity.client_id,
                    audience=holder[0].authority.token_endpoint,
                    x5c=material.x5c if material.send_x5c else ())

            credential = {"client_assertion": assertion}
        elif isinstance(material, Federation):
            # The ServiceAccount token is the assertion (msal sends it with client_assertion_type jwt-bearer). A
            # callable, not the string: msal warns about static assertions, and it is called once, at the request.
            service_account_token = material.assertion
            if not service_account_token:
                raise TypeError("federation material without a ServiceAccount token")
            credential = {"client_assertion": lambda: service_account_token}
        else:  # pragma: no cover - exhaustive
            raise TypeError(type(material).__name__)
        app = msal.ConfidentialClientApplication(
            identity.client_id,
            client_credential=credential,
            authority=identity.authority(),
            # Discovery of instances is for unknown hosts; ours come from a fixed cloud map or the user.
            instance_discovery=False,
            http_client=self.session,
            token_cache=_NothingCached(),
        )
        holder.append(app)
        _same_host(identity, app.authority.token_endpoint)
        return app

    def _network_error(self, exc: ExchangeFailed) -> AcquisitionError:
        """What the user is told about a failed exchange: its class and the host, nothing of the peer's."""
        where = exc.origin
        if exc.failure is Failure.NOT_ALLOWED:
            return AcquisitionError(Reason.AUTHORITY_NOT_ALLOWED, not_allowed_message(where), permanent=True)
        if exc.failure is Failure.REDIRECT:
            text = (f"{where} answered with a redirect (HTTP {exc.status}); graphcred follows no redirects: "
                    "set spec.authorityHost to the host that answers itself")
        elif exc.failure is Failure.TOO_LARGE:
            text = (f"{where} answered more than {MAX_ANSWER // 1024} KiB (HTTP {exc.status}); an authority's "
                    "answers are a few KiB: refused")
        elif exc.failure is Failure.TIMEOUT:
            text = f"no complete answer from {where} within the {self.deadline:g} s token timeout"
        elif exc.failure is Failure.UNTRUSTED:
            text = (f"the TLS certificate of {where} is not trusted (or not issued for that name): for a private "
                    "authority, give its CA with graphcred run --ca-bundle (chart value caBundle.configMapName)")
        else:
            text = f"cannot connect to {where} (connection refused, reset or unreachable, or TLS failed)"
        return AcquisitionError(Reason.AUTHORITY_UNAVAILABLE, f"{text}; retrying with backoff", permanent=False)

    def _discovery_error(self, identity: AppIdentity, exc: Exception) -> AcquisitionError:
        """msal could not get the tenant's openid-configuration: classify the answer it got."""
        last = self.session.last_response()
        what = f"{identity.authority()}: discovery"
        if last is None or not last.discovery:
            if not isinstance(exc, (ValueError, msal.exceptions.MsalServiceError)):
                raise exc  # no discovery answer to blame: not the authority's doing
            match = _AADSTS.search(str(exc))
            if match and int(match.group(1)) in _KNOWN_CODES:
                return _known_refusal(int(match.group(1)))
            return AcquisitionError(Reason.AUTHORITY_UNAVAILABLE, f"{what} failed; retrying with backoff",
                                    permanent=False)
        by_status = status_error(what, last.status, last.retry_after, json_object=last.json_object,
                                 content_type=last.content_type)
        if by_status is not None:
            return by_status
        if last.aadsts in _KNOWN_CODES:
            return _known_refusal(last.aadsts)
        if 400 <= last.status < 500:
            return AcquisitionError(Reason.UNAUTHORIZED, f"{what} was refused (HTTP {last.status}): check "
                                    "tenantId, cloud and authorityHost", permanent=True, code=last.aadsts)
        return AcquisitionError(Reason.AUTHORITY_UNAVAILABLE, f"{_answer(what, last.status)} without a usable "
                                "document (no https token_endpoint); retrying with backoff", permanent=False)

    def _token(self, access_token: str, result: dict[str, Any], started: dt.datetime) -> Token:
        try:
            claims = unverified_claims(access_token)
        except ValueError:
            claims = TokenClaims(None, None, None, (), None)
        expires_in = result.get("expires_in")
        # a year at most: a hostile authority's 1e12 would overflow the date, a bool is no number of seconds
        if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool) and 0 < expires_in <= _YEAR:
            expires_on = started + dt.timedelta(seconds=float(expires_in))
        elif claims.expires_at is not None:
            expires_on = dt.datetime.fromtimestamp(claims.expires_at, dt.UTC)
        else:
            raise AcquisitionError(Reason.AUTHORITY_UNAVAILABLE, "token response has no expiry", permanent=False)
        return Token(access_token=access_token, expires_on=expires_on.replace(microsecond=0),
                     issued_at=started, claims=claims)


def _with_federation_hint(error: AcquisitionError, material: Material) -> AcquisitionError:
    """A federation refusal names what this credential presents (never the token): the subject and audience a
    federated identity credential of the app must match, and where to read the issuer."""
    if not isinstance(material, Federation) or error.code not in _FEDERATION_CODES:
        return error
    hint = (f" (this credential presents subject system:serviceaccount:{material.namespace}:"
            f"{material.service_account} and audience {material.audience}; the issuer is the cluster's "
            "service-account issuer: `kubectl get --raw /.well-known/openid-configuration`)")
    return AcquisitionError(error.reason, error.message + hint, permanent=error.permanent,
                            retry_after=error.retry_after, code=error.code)
