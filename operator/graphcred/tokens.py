"""MSAL adapter: acquire a fresh app-only token with `ConfidentialClientApplication.acquire_token_for_client`.

Every acquisition builds a new application object with an empty token cache, so it always reaches the token
endpoint and returns a *new* token (msal would otherwise answer from its cache until five minutes before expiry)
and signs a new client assertion (new `jti`). Discovery is still fetched once per authority: the shared
`PinnedCASession` caches it. Failures become `AcquisitionError`s with a reason from `graphcred.model.Reason`.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msal
import requests

from .credentials import Certificate, ClientSecret, Material
from .httpsession import DEFAULT_TIMEOUT, PinnedCASession
from .jwt import TokenClaims, sign_client_assertion, unverified_claims
from .model import GraphAppCredentialSpec, Reason

log = logging.getLogger(__name__)

_AADSTS = re.compile(r"AADSTS(\d+)")


@dataclass(frozen=True)
class Token:
    access_token: str = field(repr=False)
    expires_on: dt.datetime
    issued_at: dt.datetime
    claims: TokenClaims

    @property
    def lifetime(self) -> dt.timedelta:
        return self.expires_on - self.issued_at


class AcquisitionError(Exception):
    """Why a token could not be had. `permanent`: do not retry until the spec or the credential changes."""

    def __init__(self, reason: Reason, message: str, *, permanent: bool, retry_after: float | None = None,
                 code: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.permanent = permanent
        self.retry_after = retry_after
        self.code = code


# What each AADSTS code means for the user, and whether retrying could help.
_KNOWN_CODES: dict[int, tuple[Reason, str]] = {
    7000215: (Reason.UNAUTHORIZED, "the client secret was rejected: check that the Secret holds the secret's "
                                   "Value (not its ID) and that it has not expired in the app registration"),
    7000222: (Reason.UNAUTHORIZED, "the client secret has expired: create a new one in the app registration "
                                   "and update the Secret"),
    700016: (Reason.UNAUTHORIZED, "the app (clientId) was not found in the tenant: check clientId and tenantId, "
                                  "and that the app is registered or consented in that tenant"),
    90002: (Reason.UNAUTHORIZED, "the tenant was not found: check tenantId and cloud"),
    700027: (Reason.UNAUTHORIZED, "the certificate was rejected: upload this certificate (its public part) to "
                                  "the app registration, or check the Secret holds the matching key"),
    700024: (Reason.UNAUTHORIZED, "the client assertion is outside its valid time range: check the node's clock"),
    700023: (Reason.UNAUTHORIZED, "the client assertion was rejected: check clientId"),
    700021: (Reason.UNAUTHORIZED, "the client assertion audience was rejected: check tenantId and authorityHost"),
    1002012: (Reason.INVALID_SPEC, "the scope is not valid: use '<resource>/.default'"),
    70011: (Reason.INVALID_SPEC, "the scope is not valid: use '<resource>/.default'"),
    500011: (Reason.INVALID_SPEC, "the resource in scopes was not found in the tenant: check the scope"),
    7000218: (Reason.UNAUTHORIZED, "no credential was sent"),
}


def classify_error_response(result: dict[str, Any], status: int | None, retry_after: float | None
                            ) -> AcquisitionError:
    """Turn msal's error dict (the token endpoint's JSON) into an AcquisitionError."""
    codes = [c for c in result.get("error_codes") or [] if isinstance(c, int)]
    error = str(result.get("error") or "error")
    if status == 429 or (error in ("temporarily_unavailable", "server_error") and status in (None, 503)):
        reason = Reason.THROTTLED if status == 429 else Reason.AUTHORITY_UNAVAILABLE
        return AcquisitionError(reason, f"token endpoint answered {status or error}; retrying with backoff",
                                permanent=False, retry_after=retry_after)
    for code in codes:
        if code in _KNOWN_CODES:
            reason, advice = _KNOWN_CODES[code]
            return AcquisitionError(reason, f"Entra ID refused the request (AADSTS{code}): {advice}",
                                    permanent=True, code=code)
    # Unknown refusals are retried, slowly: better a few requests than a credential stuck forever.
    code_text = f"AADSTS{codes[0]}" if codes else error
    return AcquisitionError(Reason.UNAUTHORIZED, f"Entra ID refused the request ({code_text}, {error})",
                            permanent=False, retry_after=retry_after, code=codes[0] if codes else None)


class TokenClient:
    """Acquires tokens. Thread-safe; blocking (run it in an executor)."""

    def __init__(self, ca_bundle: str | None = None, timeout: tuple[float, float] = DEFAULT_TIMEOUT,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.session = PinnedCASession(ca_bundle, timeout)
        self._clock = clock

    def acquire(self, spec: GraphAppCredentialSpec, material: Material) -> Token:
        self.session.forget_last_response()
        try:
            app = self._application(spec, material)
            started = self._clock()
            result = app.acquire_token_for_client(list(spec.scopes))
        except requests.exceptions.Timeout:
            raise AcquisitionError(Reason.AUTHORITY_UNAVAILABLE,
                                   f"timed out talking to {spec.authority_base()}", permanent=False) from None
        except requests.exceptions.RequestException as exc:
            raise AcquisitionError(Reason.AUTHORITY_UNAVAILABLE,
                                   f"cannot reach {spec.authority_base()}: {type(exc).__name__}",
                                   permanent=False) from None
        except msal.exceptions.MsalServiceError:
            last = self.session.last_response()
            status = last.status if last else None
            raise AcquisitionError(Reason.THROTTLED if status == 429 else Reason.AUTHORITY_UNAVAILABLE,
                                   f"token endpoint answered HTTP {status or '5xx'}; retrying with backoff",
                                   permanent=False, retry_after=last.retry_after if last else None) from None
        except ValueError as exc:
            raise self._discovery_error(spec, str(exc)) from None
        if not isinstance(result, dict):
            raise AcquisitionError(Reason.AUTHORITY_UNAVAILABLE, "unexpected answer from msal", permanent=False)
        if "access_token" not in result:
            last = self.session.last_response()
            raise classify_error_response(result, last.status if last else None,
                                          last.retry_after if last else None)
        return self._token(result, started)

    def _application(self, spec: GraphAppCredentialSpec, material: Material
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
                    key=material.key, sha256_thumbprint=material.sha256_thumbprint, client_id=spec.client_id,
                    audience=holder[0].authority.token_endpoint,
                    x5c=material.x5c if material.send_x5c else ())

            credential = {"client_assertion": assertion}
        else:  # pragma: no cover - exhaustive
            raise TypeError(type(material).__name__)
        app = msal.ConfidentialClientApplication(
            spec.client_id,
            client_credential=credential,
            authority=spec.authority(),
            # Discovery of instances is for unknown hosts; ours come from a fixed cloud map or the user.
            instance_discovery=False,
            http_client=self.session,
            token_cache=msal.TokenCache(),
        )
        holder.append(app)
        return app

    def _discovery_error(self, spec: GraphAppCredentialSpec, text: str) -> AcquisitionError:
        last = self.session.last_response()
        match = _AADSTS.search(text)
        code = last.aadsts if last and last.aadsts else int(match.group(1)) if match else None
        if code in _KNOWN_CODES:
            reason, advice = _KNOWN_CODES[code]
            return AcquisitionError(reason, f"Entra ID refused the request (AADSTS{code}): {advice}",
                                    permanent=True, code=code)
        if last and 400 <= last.status < 500:
            return AcquisitionError(Reason.UNAUTHORIZED,
                                    f"{spec.authority()} refused discovery (HTTP {last.status}): check tenantId, "
                                    "cloud and authorityHost", permanent=True)
        return AcquisitionError(Reason.AUTHORITY_UNAVAILABLE,
                                f"discovery at {spec.authority()} failed; retrying with backoff", permanent=False)

    def _token(self, result: dict[str, Any], started: dt.datetime) -> Token:
        access_token = str(result["access_token"])
        try:
            claims = unverified_claims(access_token)
        except ValueError:
            claims = TokenClaims(None, None, None, (), None)
        expires_in = result.get("expires_in")
        if isinstance(expires_in, (int, float)) and expires_in > 0:
            expires_on = started + dt.timedelta(seconds=float(expires_in))
        elif claims.expires_at is not None:
            expires_on = dt.datetime.fromtimestamp(claims.expires_at, dt.UTC)
        else:
            raise AcquisitionError(Reason.AUTHORITY_UNAVAILABLE, "token response has no expiry", permanent=False)
        return Token(access_token=access_token, expires_on=expires_on.replace(microsecond=0),
                     issued_at=started, claims=claims)
