from __future__ import annotations

import datetime as dt
import email.utils
import json
import logging
import urllib.parse
import uuid
from collections.abc import Mapping
from typing import Any

import pytest
import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from graphcred.acquire.credentials import ClientSecret, Federation
from graphcred.acquire.tokens import AcquisitionError, TokenClient, classify_error_response
from graphcred.api.failures import Failure, Retry
from graphcred.api.model import GraphAppCredentialSpec, Reason
from graphcred.app.logs import redact

HOST = "https://login.example.test"
TENANT, CLIENT = str(uuid.uuid4()), str(uuid.uuid4())
PROXY_PAGE = b"<html><body>Access denied by proxy SECRET-LOOKING-BODY</body></html>"
GARBAGE = b'{"token_type": "Bearer", "access_token": "eyJSECRET-LOOKING-BODY'


def test_aadsts_codes_are_permanent_with_advice() -> None:
    err = classify_error_response({"error": "invalid_client", "error_codes": [7000215]}, 401, None)
    assert (err.reason, err.permanent, err.code) == (Reason.UNAUTHORIZED, True, 7000215)
    assert "AADSTS7000215" in err.message and "Value (not its ID)" in err.message
    assert classify_error_response({"error_codes": [1002012]}, 400, None).reason == Reason.INVALID_SPEC


def test_throttling_and_unavailability_are_transient() -> None:
    throttled = classify_error_response({"error": "temporarily_unavailable"}, 429, 30.0)
    assert (throttled.reason, throttled.permanent, throttled.retry_after) == (Reason.THROTTLED, False, 30.0)
    unknown = classify_error_response({"error": "invalid_request", "error_codes": [99999]}, 400, None)
    assert not unknown.permanent


def test_an_acquisition_error_is_a_failure_whose_retry_says_whether_it_is_permanent() -> None:
    """One failure carrier: `permanent` is a view of the Failure's retry; the code and Retry-After are kept."""
    refused = classify_error_response({"error": "invalid_client", "error_codes": [7000215]}, 401, None)
    assert isinstance(refused, Failure) and (refused.retry, refused.permanent) == (Retry.NEEDS_USER, True)
    throttled = AcquisitionError(Reason.THROTTLED, "429", permanent=False, retry_after=5.0, code=50196)
    assert (throttled.retry, throttled.permanent, throttled.retry_after, throttled.code) == \
        (Retry.TRANSIENT, False, 5.0, 50196)
    assert str(throttled) == throttled.message == "429"


def test_redaction_of_token_shaped_strings() -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL2dyYXBoIn0.c2lnbmF0dXJlc2lnbmF0dXJl"
    assert jwt not in redact(f"got {jwt} back")
    assert "hunter2hunter2" not in redact("client_secret=hunter2hunter2&scope=x")
    assert "abcdefgh12345" not in redact("Authorization: Bearer abcdefgh12345")
    assert redact("nothing to see") == "nothing to see"


# --- classification of what the authority answers, through real msal and the real session --------------------

Answer = tuple[int, Mapping[str, str], bytes] | Exception


def _json(status: int, body: Any, **headers: str) -> Answer:
    return status, {"Content-Type": "application/json; charset=utf-8", **headers}, json.dumps(body).encode()


def _html(status: int, **headers: str) -> Answer:
    return status, {"Content-Type": "text/html", **headers}, PROXY_PAGE


DISCOVERY = _json(200, {"token_endpoint": f"{HOST}/{TENANT}/oauth2/v2.0/token",
                        "authorization_endpoint": f"{HOST}/{TENANT}/oauth2/v2.0/authorize",
                        "issuer": f"{HOST}/{TENANT}/v2.0"})
TOKEN = _json(200, {"token_type": "Bearer", "expires_in": 3599, "access_token": "a.b.c"})


class _Canned(BaseAdapter):
    """Answers discovery and token requests with crafted responses: what a gateway, a proxy or Entra sends."""

    def __init__(self, discovery: Answer, token: Answer) -> None:
        super().__init__()
        self.answers = {"GET": discovery, "POST": token}

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        answer = self.answers[str(request.method)]
        if isinstance(answer, Exception):
            raise answer
        status, headers, body = answer
        response = requests.Response()
        response.status_code, response._content, response.encoding = status, body, "utf-8"
        response.headers = CaseInsensitiveDict(
            {k: v.render() if isinstance(v, _HttpDate) else v for k, v in headers.items()})
        response.url, response.request = str(request.url), request
        return response

    def close(self) -> None:
        pass


def _secret_spec() -> GraphAppCredentialSpec:
    """A client-secret credential on HOST."""
    return GraphAppCredentialSpec.model_validate({"tenantId": TENANT, "clientId": CLIENT, "authorityHost": HOST,
                                                  "credential": {"clientSecret": {"name": "app"}}})


def _on_every_scheme(client: TokenClient, adapter: BaseAdapter) -> None:
    """Whatever the session would send, https or http, reaches `adapter` (which records it)."""
    for scheme in ("https://", "http://"):
        client.session.mount(scheme, adapter)


def _acquire(discovery: Answer = DISCOVERY, token: Answer = TOKEN) -> AcquisitionError:
    client = TokenClient(authority_hosts=[HOST])
    client.session.mount("https://", _Canned(discovery, token))
    spec = _secret_spec()
    with pytest.raises(AcquisitionError) as caught:
        client.acquire(spec.identity(), spec.scopes, ClientSecret("pw"))
    err = caught.value
    assert "SECRET-LOOKING-BODY" not in err.message and "Access denied" not in err.message, "no body echoed"
    return err


class _HttpDate(str):
    """A Retry-After HTTP-date so many seconds after the response is sent (not after the test is collected)."""

    def render(self) -> str:
        ahead = dt.timedelta(seconds=int(self))
        return email.utils.format_datetime(dt.datetime.now(dt.UTC) + ahead, usegmt=True)


def _http_date(seconds_ahead: int) -> str:
    return _HttpDate(seconds_ahead)


@pytest.mark.parametrize(("discovery", "reason", "retry_after"), [
    (_json(429, {"error": "throttled"}, **{"Retry-After": "7"}), Reason.THROTTLED, 7.0),
    (_html(429, **{"Retry-After": "9"}), Reason.THROTTLED, 9.0),
    (_html(429, **{"Retry-After": _http_date(60)}), Reason.THROTTLED, 60.0),
    (_json(408, {"error": "timeout"}), Reason.AUTHORITY_UNAVAILABLE, None),
    (_json(425, {"error": "too_early"}), Reason.AUTHORITY_UNAVAILABLE, None),
    (_html(502), Reason.AUTHORITY_UNAVAILABLE, None),
    (_html(200), Reason.AUTHORITY_UNAVAILABLE, None),
    ((200, {"Content-Type": "application/json"}, GARBAGE), Reason.AUTHORITY_UNAVAILABLE, None),
    (_json(200, {"issuer": "no token_endpoint here"}), Reason.AUTHORITY_UNAVAILABLE, None),
    (requests.exceptions.ConnectionError("refused"), Reason.AUTHORITY_UNAVAILABLE, None),
], ids=["429-json", "429-html", "429-http-date", "408", "425", "502-html", "200-html", "200-garbage",
        "200-no-endpoint", "connection"])
def test_discovery_throttling_and_proxy_answers_are_transient(discovery: Answer, reason: Reason,
                                                               retry_after: float | None) -> None:
    err = _acquire(discovery=discovery)
    assert (err.reason, err.permanent) == (reason, False), err.message
    if retry_after is None:
        assert err.retry_after is None
    else:
        assert err.retry_after is not None and retry_after - 2 <= err.retry_after <= retry_after


def test_discovery_messages_say_what_happened() -> None:
    assert "discovery answered HTTP 429 (not JSON: text/html)" in _acquire(discovery=_html(429)).message
    assert "discovery answered HTTP 200 (not JSON: text/html)" in _acquire(discovery=_html(200)).message


@pytest.mark.parametrize(("discovery", "fragment"), [
    (_json(400, {"error": "invalid_tenant", "error_codes": [90002]}), "AADSTS90002"),
    (_json(404, {"error": "not_found"}), "HTTP 404"),
])
def test_discovery_refusals_need_the_user(discovery: Answer, fragment: str) -> None:
    err = _acquire(discovery=discovery)
    assert (err.reason, err.permanent) == (Reason.UNAUTHORIZED, True)
    assert fragment in err.message


@pytest.mark.parametrize(("token", "reason", "retry_after", "fragment"), [
    (_html(429, **{"Retry-After": "5"}), Reason.THROTTLED, 5.0, "HTTP 429 (not JSON: text/html)"),
    (_json(429, {"error": "temporarily_unavailable"}, **{"Retry-After": _http_date(30)}), Reason.THROTTLED, 30.0,
     "HTTP 429"),
    (_json(408, {"error": "timeout"}), Reason.AUTHORITY_UNAVAILABLE, None, "HTTP 408"),
    (_json(425, {"error": "too_early"}), Reason.AUTHORITY_UNAVAILABLE, None, "HTTP 425"),
    (_html(503), Reason.AUTHORITY_UNAVAILABLE, None, "HTTP 503"),
    (_html(200), Reason.AUTHORITY_UNAVAILABLE, None, "HTTP 200 (not JSON: text/html)"),
    ((200, {"Content-Type": "application/json"}, GARBAGE), Reason.AUTHORITY_UNAVAILABLE, None, "not JSON"),
    (_json(200, ["a", "list"]), Reason.AUTHORITY_UNAVAILABLE, None, "token endpoint"),
    (_json(200, {"token_type": "Bearer"}), Reason.AUTHORITY_UNAVAILABLE, None, "no access_token"),
    (requests.exceptions.ConnectionError("reset"), Reason.AUTHORITY_UNAVAILABLE, None, "cannot connect to"),
], ids=["429-html", "429-http-date", "408", "425", "503-html", "200-html", "200-garbage", "200-list",
        "200-no-token", "connection"])
def test_token_endpoint_throttling_and_proxy_answers_are_transient(
        token: Answer, reason: Reason, retry_after: float | None, fragment: str) -> None:
    err = _acquire(token=token)
    assert (err.reason, err.permanent) == (reason, False), err.message
    assert fragment in err.message
    if retry_after is None:
        assert err.retry_after is None
    else:
        assert err.retry_after is not None and retry_after - 2 <= err.retry_after <= retry_after


@pytest.mark.parametrize("value", ["", None, 42], ids=["empty", "null", "number"])
def test_an_empty_access_token_is_never_a_token(value: Any) -> None:
    err = _acquire(token=_json(200, {"token_type": "Bearer", "expires_in": 3599, "access_token": value}))
    assert (err.reason, err.permanent) == (Reason.AUTHORITY_UNAVAILABLE, False)
    assert "token response has no access_token" in err.message


def test_clock_skew_is_transient_and_entra_refusals_need_the_user() -> None:
    skew = _acquire(token=_json(400, {"error": "invalid_client", "error_codes": [700024]}))
    assert (skew.permanent, skew.code) == (False, 700024)
    assert "clock" in skew.message
    for code in (7000215, 700016, 90002, 700027):
        refused = _acquire(token=_json(401, {"error": "invalid_client", "error_codes": [code]}))
        assert (refused.reason, refused.permanent, refused.code) == (Reason.UNAUTHORIZED, True, code)


def test_a_good_answer_is_a_token() -> None:
    client = TokenClient(authority_hosts=[HOST])
    client.session.mount("https://", _Canned(DISCOVERY, TOKEN))
    spec = _secret_spec()
    token = client.acquire(spec.identity(), spec.scopes, ClientSecret("pw"))
    assert token.access_token == "a.b.c"
    assert dt.timedelta(seconds=3590) < token.lifetime <= dt.timedelta(seconds=3599)



def test_msal_never_logs_an_unparseable_body(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        _acquire(token=(200, {"Content-Type": "application/json"}, GARBAGE))
        _acquire(token=_html(200))
    assert "SECRET-LOOKING-BODY" not in caplog.text


# --- workload identity: the ServiceAccount token as client assertion, and Entra's federation refusals -----------
SA_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.SA-TOKEN-SIGNATURE"
FEDERATED_SPEC = {"tenantId": TENANT, "clientId": CLIENT, "authorityHost": HOST,
                  "credential": {"workloadIdentity": {"serviceAccountName": "reader"}}}


class _Recording(_Canned):
    """Also keeps the body of each token request, as the token endpoint would receive it."""

    def __init__(self, discovery: Answer, token: Answer) -> None:
        super().__init__(discovery, token)
        self.posted: list[dict[str, list[str]]] = []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        if request.method == "POST":
            body = request.body.decode() if isinstance(request.body, bytes) else str(request.body)
            self.posted.append(urllib.parse.parse_qs(body))
        return super().send(request, *args, **kwargs)


def _federation(assertion: str | None = SA_TOKEN) -> Federation:
    material = Federation(namespace="batch", service_account="reader", uid="uid-1",
                          audience="api://AzureADTokenExchange", client_id=CLIENT)
    return material.with_assertion(assertion) if assertion else material


def _federated(token: Answer) -> tuple[TokenClient, _Recording, GraphAppCredentialSpec]:
    client = TokenClient(authority_hosts=[HOST])
    adapter = _Recording(DISCOVERY, token)
    client.session.mount("https://", adapter)
    return client, adapter, GraphAppCredentialSpec.model_validate(FEDERATED_SPEC)


def test_the_service_account_token_is_sent_as_a_jwt_bearer_client_assertion(recwarn: pytest.WarningsRecorder
                                                                            ) -> None:
    client, adapter, spec = _federated(TOKEN)
    token = client.acquire(spec.identity(), spec.scopes, _federation())
    assert token.access_token == "a.b.c"
    [posted] = adapter.posted
    assert posted["client_assertion"] == [SA_TOKEN]
    assert posted["client_assertion_type"] == ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]
    assert posted["grant_type"] == ["client_credentials"] and posted["client_id"] == [CLIENT]
    assert "client_secret" not in posted
    assert not [w for w in recwarn if "client_assertion" in str(w.message)], "no static-assertion warning"


def test_federation_material_without_a_token_is_a_bug_not_a_request() -> None:
    client, adapter, spec = _federated(TOKEN)
    with pytest.raises(TypeError):
        client.acquire(spec.identity(), spec.scopes, _federation(assertion=None))
    assert adapter.posted == []


@pytest.mark.parametrize(("code", "fragment"), [
    (70021, "no federated identity credential of the app matches"),
    (700211, "issuer"),
    (700212, "audience"),
    (700213, "subject"),
    (7002138, "only in case"),
])
def test_federation_refusals_need_the_user_and_say_what_to_register(code: int, fragment: str,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    description = (f"AADSTS{code}: No matching federated identity record found for presented assertion. "
                   f"Assertion Subject: 'system:serviceaccount:batch:reader'. ({SA_TOKEN})")
    client, _, spec = _federated(_json(401, {"error": "invalid_client", "error_description": description,
                                             "error_codes": [code]}))
    with caplog.at_level(logging.DEBUG), pytest.raises(AcquisitionError) as caught:
        client.acquire(spec.identity(), spec.scopes, _federation())
    err = caught.value
    assert (err.reason, err.permanent, err.code) == (Reason.UNAUTHORIZED, True, code)
    assert f"AADSTS{code}" in err.message and fragment in err.message
    assert "subject system:serviceaccount:batch:reader and audience api://AzureADTokenExchange" in err.message
    assert "/.well-known/openid-configuration" in err.message, "where to read the issuer"
    assert SA_TOKEN not in err.message and SA_TOKEN not in str(err) and "SA-TOKEN" not in caplog.text


def test_federation_hints_are_only_for_federation() -> None:
    err = _acquire(token=_json(401, {"error": "invalid_client", "error_codes": [70021]}))
    assert "AADSTS70021" in err.message and "system:serviceaccount" not in err.message


class _Everywhere(_Recording):
    """Mounted for every host (http and https): records which URLs were POSTed to."""

    def __init__(self, discovery: Answer, token: Answer) -> None:
        super().__init__(discovery, token)
        self.urls: list[str] = []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        if request.method == "POST":
            self.urls.append(str(request.url))
        return super().send(request, *args, **kwargs)


def test_a_service_account_token_is_never_sent_to_a_token_endpoint_on_another_host() -> None:
    # the discovery document (a proxy's, a private endpoint's) names a token endpoint elsewhere
    elsewhere = _json(200, {"token_endpoint": f"https://elsewhere.example/{TENANT}/oauth2/v2.0/token",
                            "authorization_endpoint": f"{HOST}/{TENANT}/oauth2/v2.0/authorize",
                            "issuer": f"{HOST}/{TENANT}/v2.0"})
    client = TokenClient(authority_hosts=[HOST])
    adapter = _Everywhere(elsewhere, TOKEN)
    client.session.mount("https://", adapter)
    spec = GraphAppCredentialSpec.model_validate(FEDERATED_SPEC)
    with pytest.raises(AcquisitionError) as caught:
        client.acquire(spec.identity(), spec.scopes, _federation())
    assert (caught.value.reason, caught.value.permanent) == (Reason.AUTHORITY_NOT_ALLOWED, True)
    assert "not on the authority host itself" in caught.value.message and SA_TOKEN not in caught.value.message
    assert adapter.urls == [], "nothing was POSTed anywhere"


def test_a_token_request_is_never_re_sent_where_a_redirect_points() -> None:
    moved = (307, {"Location": "http://plain.example/token", "Content-Type": "text/plain"}, b"moved")
    client = TokenClient(authority_hosts=[HOST])
    adapter = _Everywhere(DISCOVERY, moved)
    client.session.mount("https://", adapter)
    client.session.mount("http://", adapter)
    spec = GraphAppCredentialSpec.model_validate(FEDERATED_SPEC)
    with pytest.raises(AcquisitionError):
        client.acquire(spec.identity(), spec.scopes, _federation())
    assert adapter.urls == [f"{HOST}/{TENANT}/oauth2/v2.0/token"], adapter.urls


# --- only allowed hosts, only the authority's own token endpoint, only known error codes echoed -----------------

def test_a_host_nobody_allowed_gets_no_request() -> None:
    client = TokenClient()  # the clouds' login hosts only
    adapter = _Everywhere(DISCOVERY, TOKEN)
    _on_every_scheme(client, adapter)
    spec = _secret_spec()
    with pytest.raises(AcquisitionError) as caught:
        client.acquire(spec.identity(), spec.scopes, ClientSecret("pw"))
    assert (caught.value.reason, caught.value.permanent) == (Reason.AUTHORITY_NOT_ALLOWED, True)
    assert "--authority-host" in caught.value.message and "authorityHosts" in caught.value.message
    assert adapter.urls == [] and adapter.posted == []


class _Gets(_Everywhere):
    """Also records the GETs."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self.urls.append(f"{request.method} {request.url}")
        return super().send(request, *args, **kwargs)


def test_a_client_secret_is_never_sent_to_a_token_endpoint_on_another_host() -> None:
    """Before: only ServiceAccount tokens were kept on the authority host; a client secret (or a signed assertion)
    went wherever discovery pointed, e.g. an internal service's URL (review finding 5)."""
    for endpoint in ("https://internal.example/api/v1/admin/export?all=true", f"http://{HOST[8:]}/t/token",
                     f"{HOST}:8443/t/token"):
        client = TokenClient(authority_hosts=[HOST, "https://internal.example"])
        adapter = _Gets(_json(200, {"token_endpoint": endpoint, "issuer": f"{HOST}/{TENANT}/v2.0",
                                    "authorization_endpoint": f"{HOST}/{TENANT}/oauth2/v2.0/authorize"}), TOKEN)
        _on_every_scheme(client, adapter)
        spec = _secret_spec()
        with pytest.raises(AcquisitionError) as caught:
            client.acquire(spec.identity(), spec.scopes, ClientSecret("pw"))
        assert [u for u in adapter.urls if u.startswith("POST")] == [], endpoint
        if endpoint.startswith("https"):  # msal itself refuses an http one, as no usable document
            assert (caught.value.reason, caught.value.permanent) == (Reason.AUTHORITY_NOT_ALLOWED, True), endpoint


def test_a_redirect_is_a_failure_of_its_own_and_is_not_followed() -> None:
    moved = (302, {"Location": "http://169.254.169.254/latest/meta-data/", "Content-Type": "text/plain"}, b"")
    client = TokenClient(authority_hosts=[HOST])
    adapter = _Gets(moved, TOKEN)
    _on_every_scheme(client, adapter)
    spec = _secret_spec()
    with pytest.raises(AcquisitionError) as caught:
        client.acquire(spec.identity(), spec.scopes, ClientSecret("pw"))
    assert (caught.value.reason, caught.value.permanent) == (Reason.AUTHORITY_UNAVAILABLE, False)
    assert f"{HOST} answered with a redirect (HTTP 302)" in caught.value.message
    assert [u.split("?")[0] for u in adapter.urls] == [f"GET {HOST}/{TENANT}/v2.0/.well-known/openid-configuration"]


def test_an_answer_above_the_cap_is_refused() -> None:
    big = _json(200, {"token_type": "Bearer", "expires_in": 3599, "access_token": "a.b.c", "pad": "x" * 70_000})
    err = _acquire(token=big)
    assert (err.reason, err.permanent) == (Reason.AUTHORITY_UNAVAILABLE, False)
    assert "answered more than 64 KiB" in err.message


@pytest.mark.parametrize(("body", "shown", "hidden"), [
    ({"error": "invalid_client\n2031-01-01 ERROR graphcred: FORGED", "error_codes": [123456789012]},
     "(unrecognised error code)", "FORGED"),
    ({"error": "invalid_grant", "error_codes": [54321], "error_description": "AADSTS54321: BODY-TEXT"},
     "(AADSTS54321, invalid_grant)", "BODY-TEXT"),
    ({"error": "<script>", "error_codes": ["AADSTS1\nX", True, 7]}, "(unrecognised error code", "<script>"),
], ids=["forged-line", "known-code", "junk-codes"])
def test_only_known_oauth_error_codes_and_aadsts_digits_are_echoed(body: dict[str, Any], shown: str,
                                                                   hidden: str) -> None:
    """Before: `error` was copied verbatim into status, Events and the log (review finding 11: forged log lines)."""
    err = _acquire(token=_json(400, body))
    assert shown in err.message, err.message
    assert hidden not in err.message and "\n" not in err.message


def test_no_exception_class_names_in_messages() -> None:
    for failure in (requests.exceptions.ConnectionError("refused"), requests.exceptions.SSLError("bad"),
                    requests.exceptions.ReadTimeout("slow"), requests.exceptions.ChunkedEncodingError("cut")):
        message = _acquire(discovery=failure).message
        assert type(failure).__name__ not in message and "Error" not in message, message


@pytest.mark.parametrize("token", [
    _json(200, {"token_type": "Bearer", "expires_in": 1e12, "access_token": "a.b.c"}),
    (200, {"Content-Type": "application/json"}, b"[" * 100_000 + b"]" * 100_000),
], ids=["expires-in-beyond-any-date", "nested-beyond-parsing"])
def test_an_answer_that_breaks_the_parsing_is_the_authority_s_failure(token: Answer) -> None:
    """Review: a hostile authority's `expires_in` of 1e12 overflowed the date and a deeply nested answer overflowed
    the parser's recursion: both escaped as internal errors. They are the authority's failures, retried."""
    err = _acquire(token=token)
    assert err.reason is Reason.AUTHORITY_UNAVAILABLE and not err.permanent, err.message
