"""Managed identity: a token for the identity of the node or pod the operator runs on, from the Azure Instance
Metadata Service (IMDS), through `msal.ManagedIdentityClient`.

MSAL picks the source from the environment (App Service, Azure ML, Service Fabric and Azure Arc variables; else
IMDS on a VM or AKS node). IMDS's address is MSAL's default, http://169.254.169.254, or the value of the environment
variable AZURE_POD_IDENTITY_AUTHORITY_HOST (`IMDS_HOST_ENV`): the test bed's IMDS, or AKS's NMI.

Every acquisition builds a new client with an empty `msal.TokenCache`, so MSAL's own cache never answers: the
operator decides when to ask. IMDS keeps a cache of its own and answers the same token (same expires_on) until it is
near expiry: a new request may well return the token the operator already holds.

The HTTP client (`ImdsSession`) ignores the environment's proxy settings (IMDS is link-local, a proxy would see the
request and must never answer it), follows no redirect, reads at most `MAX_ANSWER` bytes of an answer and bounds
the connect and each read with timeouts. Like the token client's (tokens.py), failures reach status, Events and logs
only as classes: the HTTP status and an error code from a fixed list, never the answer's text.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import msal
import requests
import urllib3

from graphcred.acquire.credentials import ManagedIdentity
from graphcred.acquire.httpsession import (
    DEFAULT_TIMEOUT,
    MAX_ANSWER,
    ExchangeFailed,
    Failure,
    retry_after_seconds,
)
from graphcred.acquire.jwt import TokenClaims, unverified_claims
from graphcred.acquire.tokens import OAUTH_ERRORS, AcquisitionError, Token
from graphcred.api.model import Reason
from graphcred.base.backoff import RETRY_AFTER_CAP

log = logging.getLogger(__name__)

IMDS_HOST_ENV = "AZURE_POD_IDENTITY_AUTHORITY_HOST"  # read by MSAL at each request
# IMDS's own error codes besides OAuth's (learn.microsoft.com, managed identities on a VM, error handling)
IMDS_ERRORS = OAUTH_ERRORS | {"bad_request_102", "unknown_source", "unsupported_response_type", "invalid_resource",
                              "unknown", "not_found", "too_many_requests"}
_CHUNK = 16 * 1024
_ASSIGN = ("assign it to the node's VM or scale set (az vm identity assign / az vmss identity assign) or to the "
           "pod (AKS); IMDS answers for a newly assigned identity within moments")


class _NoPayloads(logging.Filter):
    """msal logs an IMDS answer it cannot parse whole, at DEBUG (a truncated token, a proxy's page): dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("IMDS emits unexpected payload")


logging.getLogger("msal.managed_identity").addFilter(_NoPayloads())


@dataclass(frozen=True)
class ImdsAnswer:
    """What the session keeps of the latest answer on a thread: classes and times, never the token or any text."""

    status: int
    retry_after: float | None
    json_object: bool  # the body is a JSON object
    error: str | None = None  # the `error` code, if one of IMDS_ERRORS
    identity_not_found: bool = False  # IMDS's "Identity not found": not (yet) assigned
    several_identities: bool = False  # a system-assigned request on a node with several user-assigned ones only
    expires_on: int | None = None  # Unix time, as IMDS answers it
    refresh_in: float | None = None  # seconds: the source's hint of when to ask again


def _number(value: Any) -> float | None:
    """IMDS sends numbers as strings."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if 0 <= number < 1e11 else None  # finite, and no later than the year 5138


def _answer(status: int, retry_after: float | None, body: bytes) -> ImdsAnswer:
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        return ImdsAnswer(status, retry_after, json_object=False)
    error = parsed.get("error")
    description = parsed.get("error_description")
    description = description.lower() if isinstance(description, str) else ""
    expires_on, refresh_in = _number(parsed.get("expires_on")), _number(parsed.get("refresh_in"))
    return ImdsAnswer(
        status, retry_after, json_object=True,
        error=error if isinstance(error, str) and error in IMDS_ERRORS else None,
        identity_not_found="identity not found" in description,
        several_identities="multiple user assigned identities" in description,
        expires_on=int(expires_on) if expires_on is not None else None,
        refresh_in=refresh_in,
    )


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}" if parts.netloc else "IMDS"


class ImdsSession(requests.Session):
    """The HTTP client handed to MSAL for managed identity: no proxy, no redirect, bounded size and time. The latest
    answer on each thread is kept as an `ImdsAnswer`."""

    def __init__(self, timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        self.trust_env = False  # no proxy (nor netrc, nor CA settings) from the environment
        self._timeout = timeout
        self._last = threading.local()

    def last_answer(self) -> ImdsAnswer | None:
        answer: ImdsAnswer | None = getattr(self._last, "value", None)
        return answer

    def forget_last_answer(self) -> None:
        self._last.value = None

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        target = _where(url if isinstance(url, str) else url.decode())
        connect, read = self._timeout
        kwargs["timeout"] = (connect, read)
        kwargs["allow_redirects"] = False  # never follow: an answer that points elsewhere is a failure
        kwargs["stream"] = True
        headers = dict(kwargs.pop("headers", None) or {})
        headers["Accept-Encoding"] = "identity"  # no decompression bomb
        kwargs["headers"] = headers
        until = time.monotonic() + read
        response: requests.Response | None = None
        try:
            response = super().request(method, url, *args, **kwargs)
            if 300 <= response.status_code < 400:
                raise ExchangeFailed(Failure.REDIRECT, target, response.status_code)
            body = _read_capped(response, target, until)
        except ExchangeFailed:
            if response is not None:
                response.close()
            raise
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            if response is not None:
                response.close()
            timed_out = isinstance(exc, (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError))
            raise ExchangeFailed(Failure.TIMEOUT if timed_out else Failure.CONNECTION, target) from None
        self._last.value = _answer(response.status_code, retry_after_seconds(response.headers.get("Retry-After")),
                                   body)
        return response


def _read_capped(response: requests.Response, target: str, until: float) -> bytes:
    """The body, at most MAX_ANSWER bytes, read before `until` (monotonic); it becomes the response's content."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_ANSWER:
        raise ExchangeFailed(Failure.TOO_LARGE, target, response.status_code)
    chunks: list[bytes] = []
    size = 0
    for chunk in response.raw.stream(_CHUNK, decode_content=False):
        size += len(chunk)
        if size > MAX_ANSWER:
            raise ExchangeFailed(Failure.TOO_LARGE, target, response.status_code)
        if time.monotonic() > until:
            raise ExchangeFailed(Failure.TIMEOUT, target)
        chunks.append(chunk)
    body = b"".join(chunks)
    response._content = body  # how requests stores a body it has read
    response._content_consumed = True  # type: ignore[attr-defined]  # not in the stubs
    return body


def resource_of(scopes: Sequence[str]) -> str:
    """The one resource a managed-identity token is for: the scope `<resource>/.default`, without the suffix."""
    if len(scopes) != 1 or not scopes[0].endswith("/.default") or len(scopes[0]) <= len("/.default"):
        raise AcquisitionError(Reason.INVALID_SPEC, "a managed identity token is for one resource: give exactly one "
                               "scope, '<resource>/.default'", permanent=True)
    return scopes[0][: -len("/.default")]


def _named(identity: ManagedIdentity) -> str:
    return (f"the user-assigned managed identity with client id {identity.client_id}" if identity.client_id
            else "the system-assigned managed identity")


def _retrying(retry_after: float | None) -> str:
    return f"retrying after {retry_after:.0f} s (Retry-After)" if retry_after else "retrying with backoff"


class ManagedIdentityTokens:
    """Acquires managed-identity tokens. Thread-safe; blocking (run it in an executor).

    `timeout`: (connect, read) in seconds for each request to IMDS (the operator's token timeout)."""

    def __init__(self, timeout: tuple[float, float] = DEFAULT_TIMEOUT,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.session = ImdsSession(timeout)
        self.timeout = timeout
        self._clock = clock

    def acquire(self, identity: ManagedIdentity, scopes: Sequence[str]) -> Token:
        resource = resource_of(scopes)
        if identity.client_id:
            which: Any = msal.UserAssignedManagedIdentity(client_id=identity.client_id)
        else:
            which = msal.SystemAssignedManagedIdentity()
        # a new client and cache each time: MSAL's cache must not answer instead of IMDS
        client = msal.ManagedIdentityClient(which, http_client=self.session, token_cache=msal.TokenCache())
        self.session.forget_last_answer()
        started = self._clock()
        try:
            result = client.acquire_token_for_client(resource=resource)
        except ExchangeFailed as exc:
            raise self._network_error(exc) from None
        except requests.exceptions.RequestException:
            raise self._network_error(ExchangeFailed(Failure.CONNECTION, "IMDS")) from None
        except (ValueError, KeyError, TypeError, AttributeError):  # an answer MSAL could not parse
            raise self._refusal(identity, self.session.last_answer()) from None
        answer = self.session.last_answer()
        access_token = result.get("access_token") if isinstance(result, dict) else None
        if isinstance(access_token, str) and access_token.strip() and answer is not None and answer.status == 200:
            return self._token(access_token, result, answer, started)
        raise self._refusal(identity, answer)

    def _refusal(self, identity: ManagedIdentity, answer: ImdsAnswer | None) -> AcquisitionError:
        """Why IMDS gave no token, from the answer's status and fixed codes only."""
        if answer is None:
            return AcquisitionError(Reason.AUTHORITY_UNAVAILABLE, "IMDS gave no usable answer; retrying with "
                                    "backoff", permanent=False)
        status = answer.status
        retry_after = min(answer.retry_after, RETRY_AFTER_CAP) if answer.retry_after is not None else None
        code = f", {answer.error}" if answer.error else ""
        if status == 429:
            return AcquisitionError(Reason.THROTTLED, f"IMDS answered HTTP 429 (throttled); {_retrying(retry_after)}",
                                    permanent=False, retry_after=retry_after)
        if status in (404, 408, 410, 425) or status >= 500 or status == 200 or not answer.json_object:
            what = "IMDS is updating" if status in (404, 410) else "IMDS"
            shape = "" if answer.json_object else " (not JSON)"
            body = " without a usable token" if status == 200 else ""
            return AcquisitionError(Reason.AUTHORITY_UNAVAILABLE, f"{what} answered HTTP {status}{code}{shape}{body}; "
                                    f"{_retrying(retry_after)}", permanent=False, retry_after=retry_after)
        if answer.identity_not_found:
            # usually an assignment that has not reached the node yet: it is tried again soon
            return AcquisitionError(Reason.CREDENTIAL_NOT_FOUND, f"IMDS does not know {_named(identity)} on this "
                                    f"node (HTTP {status}, identity not found): {_ASSIGN}; retrying with backoff",
                                    permanent=False, retry_after=retry_after)
        if answer.several_identities and not identity.client_id:
            return AcquisitionError(Reason.CREDENTIAL_NOT_FOUND, f"the node has no system-assigned managed identity "
                                    f"but several user-assigned ones (HTTP {status}): name one with "
                                    "spec.credential.managedIdentity.clientId, or enable the system-assigned one",
                                    permanent=True)
        return AcquisitionError(Reason.UNAUTHORIZED, f"IMDS refused the request for {_named(identity)} (HTTP "
                                f"{status}{code})", permanent=True)

    def _network_error(self, exc: ExchangeFailed) -> AcquisitionError:
        where = exc.origin
        if exc.failure is Failure.REDIRECT:
            text = f"{where} answered with a redirect (HTTP {exc.status}); graphcred follows no redirects from IMDS"
        elif exc.failure is Failure.TOO_LARGE:
            text = (f"{where} answered more than {MAX_ANSWER // 1024} KiB (HTTP {exc.status}); IMDS's answers are a "
                    "few KiB: refused")
        elif exc.failure is Failure.TIMEOUT:
            text = f"no complete answer from {where} within the {self.timeout[1]:g} s token timeout"
        else:
            text = (f"cannot connect to {where} (connection refused, reset or unreachable): is the operator on an "
                    f"Azure VM or AKS node with a managed identity ({IMDS_HOST_ENV} overrides the address)?")
        return AcquisitionError(Reason.AUTHORITY_UNAVAILABLE, f"{text}; retrying with backoff", permanent=False)

    def _token(self, access_token: str, result: dict[str, Any], answer: ImdsAnswer, started: dt.datetime) -> Token:
        try:
            claims = unverified_claims(access_token)
        except ValueError:
            claims = TokenClaims(None, None, None, (), None)
        expires_in = result.get("expires_in")
        # IMDS's expires_on: the same for the same cached token, where started + expires_in drifts by a second
        if answer.expires_on is not None:
            expires_on = dt.datetime.fromtimestamp(answer.expires_on, dt.UTC)
        elif claims.expires_at is not None:
            expires_on = dt.datetime.fromtimestamp(claims.expires_at, dt.UTC)
        elif isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool) and expires_in > 0:
            expires_on = (started + dt.timedelta(seconds=float(expires_in))).replace(microsecond=0)
        else:
            raise AcquisitionError(Reason.AUTHORITY_UNAVAILABLE, "IMDS answered a token without expiry; retrying "
                                   "with backoff", permanent=False)
        if expires_on <= started:
            raise AcquisitionError(Reason.AUTHORITY_UNAVAILABLE, "IMDS answered an expired token; retrying with "
                                   "backoff", permanent=False)
        return Token(access_token=access_token, expires_on=expires_on, issued_at=started, claims=claims,
                     refresh_on=_refresh_on(result, answer, started, expires_on))


def _refresh_on(result: dict[str, Any], answer: ImdsAnswer, started: dt.datetime, expires_on: dt.datetime
                ) -> dt.datetime | None:
    """The source's hint of when to ask again: IMDS's refresh_in (MSAL drops it on a VM), else MSAL's refresh_on
    (it sets one, at half the lifetime, for tokens of two hours or more); never at or after expiry."""
    when: dt.datetime | None = None
    if answer.refresh_in is not None:
        when = started + dt.timedelta(seconds=answer.refresh_in)
    elif (at := _number(result.get("refresh_on"))) is not None:
        when = dt.datetime.fromtimestamp(at, dt.UTC)
    elif (after := _number(result.get("refresh_in"))) is not None:
        when = started + dt.timedelta(seconds=after)
    if when is None or when >= expires_on:
        return None
    return when.replace(microsecond=0)
