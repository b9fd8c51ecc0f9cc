"""The bed's Graph API validates tokens from the bed's issuer as Microsoft Graph does, and answers as Graph does:
first with plain HTTP, then through the real msgraph-sdk."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import msal
import pytest
import requests
from azure.core.credentials import AccessToken
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.users.users_request_builder import UsersRequestBuilder

from graphcred.acquire.httpsession import PinnedCASession
from graphcred_testbed import jose
from graphcred_testbed.bed import Bed, wait_for
from graphcred_testbed.graph import GraphApi, GraphCall
from graphcred_testbed.issuer import App, IssuerServer
from graphcred_testbed.pki import new_key, public_key_pem

from ..graphsdk import GRAPH_SCOPE, graph_client

pytestmark = pytest.mark.bed

GRAPH = "https://graph.microsoft.com"
ADELE_UPN = "AdeleV@contoso.onmicrosoft.com"


# --- tokens from the bed's real issuer ------------------------------------------------------------------------------
def _register(bed: Bed, *roles: str, lifetime: int = 3599) -> App:
    return bed.issuer.register_app(str(uuid.uuid4()), secret="graph-test-secret", roles={GRAPH: list(roles)},
                                   lifetime=lifetime)


def _token(bed: Bed, app: App, resource: str = GRAPH, authority_host: str | None = None) -> str:
    cca = msal.ConfidentialClientApplication(
        app.client_id, client_credential="graph-test-secret",
        authority=f"{authority_host or bed.authority_host}/{app.tenant_id}", instance_discovery=False,
        http_client=PinnedCASession(str(bed.issuer_ca_file),
                                    authority_hosts=[authority_host or bed.authority_host]))
    result = cca.acquire_token_for_client([f"{resource}/.default"])
    assert "access_token" in result, result.get("error_description")
    token: str = result["access_token"]
    return token


def _claims(token: str) -> dict[str, Any]:
    return jose.parse(token)[1]


def _segment(obj: dict[str, Any]) -> str:
    return jose.b64url(json.dumps(obj, separators=(",", ":")).encode())


def _forge(token: str, key: Any, kid: str, **changes: Any) -> str:
    """The token's claims with `changes`, signed RS256 by `key` under `kid`."""
    return jose.sign({"typ": "JWT", "alg": "RS256", "kid": kid}, {**_claims(token), **changes}, key)


@pytest.fixture(scope="module")
def reader(bed: Bed) -> App:
    return _register(bed, "User.Read.All")


@pytest.fixture(scope="module")
def reader_token(bed: Bed, reader: App) -> str:
    return _token(bed, reader)


@pytest.fixture(scope="module")
def http(bed: Bed) -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment overrides `verify`
    session.verify = str(bed.issuer_ca_file)
    yield session
    session.close()


def _get(http: requests.Session, graph: GraphApi, path: str, token: str | None = None,
         **headers: str) -> requests.Response:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return http.get(graph.base_url + path, headers=headers, timeout=10)


def _assert_graph_error(resp: requests.Response, status: int, code: str, token: str | None = None) -> str:
    """Graph's error shape; returns the message. The token never comes back."""
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    error = resp.json()["error"]
    assert error["code"] == code
    inner = error["innerError"]
    assert inner["request-id"] == resp.headers["request-id"]
    assert inner["client-request-id"] == resp.headers["client-request-id"]
    assert time.strptime(inner["date"], "%Y-%m-%dT%H:%M:%S")
    if status == 401:
        challenge = resp.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer realm="", authorization_uri="')
        assert 'client_id="00000003-0000-0000-c000-000000000000"' in challenge
    if token:
        assert token not in resp.text
        assert token.split(".")[2] not in resp.text
    message: str = error["message"]
    return message


# --- plain HTTP -----------------------------------------------------------------------------------------------------
def test_users_are_listed_with_a_valid_token(bed: Bed, http: requests.Session, reader_token: str) -> None:
    resp = _get(http, bed.graph, "/users", reader_token, **{"client-request-id": "my-correlation"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("application/json;odata.metadata=minimal")
    assert resp.headers["client-request-id"] == "my-correlation"
    uuid.UUID(resp.headers["request-id"])
    body = resp.json()
    assert body["@odata.context"] == f"{bed.graph.base_url}/$metadata#users"
    adele = next(u for u in body["value"] if u["displayName"] == "Adele Vance")
    assert adele["userPrincipalName"] == ADELE_UPN and adele["mail"] == ADELE_UPN
    uuid.UUID(adele["id"])
    uti = _claims(reader_token)["uti"]
    assert GraphCall("GET", "/v1.0/users", 200, uti) in bed.graph.calls()
    assert reader_token not in repr(bed.graph.calls())


def test_top_select_and_next_link_page_through_users(bed: Bed, http: requests.Session, reader_token: str) -> None:
    seen: list[str] = []
    url: str | None = f"{bed.graph.base_url}/users?$top=2&$select=displayName,id"
    while url:
        body = http.get(url, headers={"Authorization": f"Bearer {reader_token}"}, timeout=10).json()
        assert len(body["value"]) <= 2
        assert all(set(u) == {"displayName", "id"} for u in body["value"])
        seen += [u["displayName"] for u in body["value"]]
        url = body.get("@odata.nextLink")
    assert len(seen) == len(set(seen)) >= 5 and "Adele Vance" in seen
    _assert_graph_error(_get(http, bed.graph, "/users?$top=0", reader_token), 400, "BadRequest")


def test_one_user_by_id_or_principal_name_and_a_missing_one(bed: Bed, http: requests.Session,
                                                            reader_token: str) -> None:
    by_upn = _get(http, bed.graph, f"/users/{ADELE_UPN}", reader_token).json()
    by_id = _get(http, bed.graph, f"/users/{by_upn['id']}?$select=displayName", reader_token).json()
    assert by_upn["displayName"] == by_id["displayName"] == "Adele Vance"
    assert by_upn["@odata.context"].endswith("$metadata#users/$entity")
    assert set(by_id) == {"@odata.context", "displayName"}
    missing = _get(http, bed.graph, f"/users/{uuid.uuid4()}", reader_token)
    _assert_graph_error(missing, 404, "Request_ResourceNotFound", reader_token)


def test_messages_need_mail_read(bed: Bed, http: requests.Session, reader_token: str) -> None:
    mail_reader = _token(bed, _register(bed, "Mail.Read"))
    resp = _get(http, bed.graph, f"/users/{ADELE_UPN}/messages", mail_reader)
    assert resp.status_code == 200, resp.text
    messages = resp.json()["value"]
    assert messages and all(m["subject"] and m["receivedDateTime"] for m in messages)
    assert messages[0]["from"]["emailAddress"]["address"].endswith("@contoso.onmicrosoft.com")
    # Mail.Read does not read the directory, User.Read.All does not read mail: each gets its API's 403
    message = _assert_graph_error(_get(http, bed.graph, "/users", mail_reader), 403, "Authorization_RequestDenied")
    assert message == "Insufficient privileges to complete the operation."
    denied = _get(http, bed.graph, f"/users/{ADELE_UPN}/messages", reader_token)
    _assert_graph_error(denied, 403, "ErrorAccessDenied", reader_token)
    assert GraphCall("GET", f"/v1.0/users/{ADELE_UPN}/messages", 403, _claims(reader_token)["uti"]) \
        in bed.graph.calls()


def test_delegated_token_does_not_get_application_permissions(bed: Bed, http: requests.Session,
                                                               reader_token: str) -> None:
    # the routes take application permissions (`roles` of an app-only token), not a signed-in user's `scp`
    delegated = _forge(reader_token, bed.issuer.signing_key, bed.issuer.kid, idtyp="user", scp="User.Read.All")
    _assert_graph_error(_get(http, bed.graph, "/users", delegated), 403, "Authorization_RequestDenied", delegated)


def test_no_token_or_a_garbled_one_is_401(bed: Bed, http: requests.Session) -> None:
    assert _assert_graph_error(_get(http, bed.graph, "/users"), 401, "InvalidAuthenticationToken") \
        == "Access token is empty."
    basic = _get(http, bed.graph, "/users", Authorization="Basic dXNlcjpwdw==")
    _assert_graph_error(basic, 401, "InvalidAuthenticationToken")
    _assert_graph_error(_get(http, bed.graph, "/users", "not-a-jwt"), 401, "InvalidAuthenticationToken")
    assert bed.graph.calls()[-1] == GraphCall("GET", "/v1.0/users", 401, None)


def test_token_for_another_resource_is_401(bed: Bed, http: requests.Session, reader: App) -> None:
    vault_token = _token(bed, reader, resource="https://vault.azure.net")
    message = _assert_graph_error(_get(http, bed.graph, "/users", vault_token), 401, "InvalidAuthenticationToken",
                                  vault_token)
    assert message == "Access token validation failure. Invalid audience."


def test_expired_token_is_401(bed: Bed, http: requests.Session) -> None:
    token = _token(bed, _register(bed, "User.Read.All", lifetime=1))
    # a list around the response: a 401 Response is falsy, wait_for wants something truthy
    [refused] = wait_for(lambda: [r] if (r := _get(http, bed.graph, "/users", token)).status_code == 401 else None,
                         timeout=15, what="the 1-second token to be refused")
    assert time.time() > _claims(token)["exp"]
    message = _assert_graph_error(refused, 401, "InvalidAuthenticationToken", token)
    assert message == "Lifetime validation failed, the token is expired."


def test_not_yet_valid_token_is_401(bed: Bed, http: requests.Session, reader_token: str) -> None:
    early = _forge(reader_token, bed.issuer.signing_key, bed.issuer.kid, nbf=int(time.time()) + 600)
    message = _assert_graph_error(_get(http, bed.graph, "/users", early), 401, "InvalidAuthenticationToken", early)
    assert message == "Access token has expired or is not yet valid."
    # the same forgery with honest times passes: the refusal above was the lifetime check
    assert _get(http, bed.graph, "/users", _forge(reader_token, bed.issuer.signing_key, bed.issuer.kid)).ok


def test_tampered_payload_is_401(bed: Bed, http: requests.Session, reader_token: str) -> None:
    header, _, signature = reader_token.split(".")
    claims = {**_claims(reader_token), "roles": ["User.Read.All", "Mail.Read"]}
    tampered = f"{header}.{_segment(claims)}.{signature}"
    message = _assert_graph_error(_get(http, bed.graph, f"/users/{ADELE_UPN}/messages", tampered), 401,
                                  "InvalidAuthenticationToken", tampered)
    assert message == "Access token validation failure. Invalid signature."


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_unsigned_or_symmetric_token_is_401(bed: Bed, http: requests.Session, reader_token: str, alg: str) -> None:
    header = _segment({"typ": "JWT", "alg": alg, "kid": bed.issuer.kid})
    signing_input = f"{header}.{reader_token.split('.')[1]}"
    # HS256 keyed with the issuer's public key: the classic algorithm confusion a verifier must not fall for
    mac = hmac.new(public_key_pem(bed.issuer.signing_key), signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{'' if alg == 'none' else jose.b64url(mac)}"
    message = _assert_graph_error(_get(http, bed.graph, "/users", forged), 401, "InvalidAuthenticationToken")
    assert message == "Access token validation failure. Invalid signature algorithm."


def test_foreign_issuer_is_401_and_never_consulted(bed: Bed, http: requests.Session, reader_token: str) -> None:
    foreign = IssuerServer(bed.issuer_ca).start()
    try:
        app = foreign.issuer.register_app(str(uuid.uuid4()), secret="graph-test-secret",
                                          roles={GRAPH: ["User.Read.All"]})
        token = _token(bed, app, authority_host=foreign.base_url)
        before = foreign.issuer.discovery_requests
        _assert_graph_error(_get(http, bed.graph, "/users", token), 401, "InvalidAuthenticationToken", token)
        assert foreign.issuer.discovery_requests == before, "an untrusted issuer's metadata must not be fetched"
    finally:
        foreign.stop()
    # the bed's own key, the right tenant, but Entra's public issuer: not the issuer this API trusts
    claims = _claims(reader_token)
    elsewhere = _forge(reader_token, bed.issuer.signing_key, bed.issuer.kid,
                       iss=f"https://login.microsoftonline.com/{claims['tid']}/v2.0")
    message = _assert_graph_error(_get(http, bed.graph, "/users", elsewhere), 401, "InvalidAuthenticationToken")
    assert message == "Access token validation failure. Invalid issuer."


def test_unknown_kids_refetch_keys_at_most_once_per_interval(bed: Bed, http: requests.Session) -> None:
    """A private issuer and API with a hand-driven clock: the issuer rotates its key, forgers flood made-up kids."""
    now = [1000.0]
    issuer = IssuerServer(bed.issuer_ca).start()
    api = GraphApi(bed.issuer_ca, issuer.base_url, bed.issuer_ca_file, refetch_interval=60,
                   monotonic=lambda: now[0]).start()
    try:
        app = issuer.issuer.register_app(str(uuid.uuid4()), secret="graph-test-secret",
                                         roles={GRAPH: ["User.Read.All"]})
        token = _token(bed, app, authority_host=issuer.base_url)

        def asked() -> int:  # the issuer's count of discovery requests (MSAL's own included, hence deltas)
            return issuer.issuer.discovery_requests_for(app.tenant_id)

        before = asked()
        assert _get(http, api, "/users", token).ok
        assert api.keys.fetches == 1 and asked() == before + 1

        stranger = new_key()
        flood = [_forge(token, stranger, f"made-up-{i}") for i in range(20)]
        assert all(_get(http, api, "/users", t).status_code == 401 for t in flood)
        assert api.keys.fetches == 1 and asked() == before + 1, "made-up kids must not reach the issuer so soon"

        issuer.issuer.signing_key, issuer.issuer.kid = new_key(), "rotated"  # the issuer rolls its key
        rotated = _token(bed, app, authority_host=issuer.base_url)
        before = asked()
        assert _get(http, api, "/users", rotated).status_code == 401  # too soon to ask again
        now[0] += 61
        assert _get(http, api, "/users", rotated).ok, "after the interval an unknown kid refetches the keys"
        assert api.keys.fetches == 2 and asked() == before + 1
        assert all(_get(http, api, "/users", t).status_code == 401 for t in flood)
        assert api.keys.fetches == 2
        assert _get(http, api, "/users", token).status_code == 401, "a key the issuer dropped is no longer trusted"
    finally:
        api.stop()
        issuer.stop()


# --- the real msgraph-sdk -------------------------------------------------------------------------------------------
class FixedTokenCredential:
    """The smallest azure-core AsyncTokenCredential: one token, whatever is asked (records the scopes asked for)."""

    def __init__(self, token: str) -> None:
        self._token = token
        self.scopes: list[tuple[str, ...]] = []

    async def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                        enable_cae: bool = False, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self._token, int(_claims(self._token)["exp"]))

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> FixedTokenCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass


def test_sdk_lists_users_and_pages(bed: Bed, reader_token: str) -> None:
    credential = FixedTokenCredential(reader_token)

    async def calls() -> tuple[list[str], list[str], str | None]:
        async with graph_client(credential, bed.graph, bed.issuer_ca_file) as client:
            everyone = await client.users.get()
            query = UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(top=2, select=["displayName", "id"])
            first = await client.users.get(RequestConfiguration(query_parameters=query))
            assert everyone and everyone.value and first and first.value and first.odata_next_link
            second = await client.users.with_url(first.odata_next_link).get()
            assert second and second.value
        return ([str(u.display_name) for u in everyone.value],
                [str(u.display_name) for u in first.value + second.value], first.value[0].mail)

    names, paged, unselected_mail = asyncio.run(calls())
    assert "Adele Vance" in names
    assert paged == names[:4] and unselected_mail is None
    assert credential.scopes and set(credential.scopes) == {(GRAPH_SCOPE,)}
    uti = _claims(reader_token)["uti"]
    assert [c.status for c in bed.graph.calls() if c.token_id == uti][-3:] == [200, 200, 200]


def test_sdk_reads_a_mailbox(bed: Bed) -> None:
    token = _token(bed, _register(bed, "User.Read.All", "Mail.Read"))

    async def subjects() -> list[str]:
        async with graph_client(FixedTokenCredential(token), bed.graph, bed.issuer_ca_file) as client:
            adele = await client.users.by_user_id(ADELE_UPN).get()
            assert adele and adele.id
            page = await client.users.by_user_id(adele.id).messages.get()
        assert page and page.value
        return [str(m.subject) for m in page.value]

    assert "Spring campaign: final numbers" in asyncio.run(subjects())


def test_sdk_raises_odata_error_on_403_and_401_without_retrying(bed: Bed) -> None:
    mail_only = _token(bed, _register(bed, "Mail.Read"))
    denied = _sdk_error(bed, mail_only)
    assert denied.response_status_code == 403
    assert denied.error and denied.error.code == "Authorization_RequestDenied"
    assert mail_only not in str(denied)

    expired = _forge(mail_only, bed.issuer.signing_key, bed.issuer.kid, exp=int(time.time()) - 60,
                     uti=uuid.uuid4().hex)
    refused = _sdk_error(bed, expired)
    assert refused.response_status_code == 401
    assert refused.error and refused.error.code == "InvalidAuthenticationToken"
    # Graph's challenge carries no `claims`: kiota must not take it for a CAE challenge and loop
    assert [c.status for c in bed.graph.calls() if c.token_id == _claims(expired)["uti"]] == [401]


def _sdk_error(bed: Bed, token: str) -> ODataError:
    async def call() -> None:
        async with graph_client(FixedTokenCredential(token), bed.graph, bed.issuer_ca_file) as client:
            await client.users.get()

    with pytest.raises(ODataError) as caught:
        asyncio.run(call())
    return caught.value
