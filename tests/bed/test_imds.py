"""The bed's IMDS answers managed-identity token requests as Azure's does: to MSAL's ManagedIdentityClient and to a
plain HTTP request, including its refusals and faults; its tokens are accepted by the bed's Graph API."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import msal
import pytest
import requests

from graphcred_testbed import jose
from graphcred_testbed.bed import Bed
from graphcred_testbed.graph import GraphApi
from graphcred_testbed.imds import TOKEN_PATH, ImdsServer
from graphcred_testbed.issuer import IssuerServer

pytestmark = pytest.mark.bed

GRAPH = "https://graph.microsoft.com"


def _msal(identity: Any) -> dict[str, Any]:
    """What MSAL answers, asking IMDS (a new client and cache: MSAL's own cache never answers)."""
    session = requests.Session()
    session.trust_env = False
    client = msal.ManagedIdentityClient(identity, http_client=session, token_cache=msal.TokenCache())
    result: dict[str, Any] = client.acquire_token_for_client(resource=GRAPH)
    return result


def _raw(server: ImdsServer, *, metadata: bool = True, **query: str) -> requests.Response:
    params = {"api-version": "2018-02-01", "resource": GRAPH, **query}
    return requests.get(server.base_url + TOKEN_PATH, params=params, headers={"Metadata": "true"} if metadata else {},
                        timeout=10, proxies={"http": "", "https": ""})


def _verified(issuer: IssuerServer, token: str) -> dict[str, Any]:
    header, claims, signing_input, signature = jose.parse(token)
    assert header["kid"] == issuer.issuer.kid
    assert jose.verify_signature("RS256", issuer.issuer.signing_key.public_key(), signing_input, signature)
    return claims


def test_system_assigned_token_through_msal_is_accepted_by_graph(
        imds_server: ImdsServer, issuer_graph: tuple[IssuerServer, GraphApi, Path]) -> None:
    issuer, graph, ca_file = issuer_graph
    identity = imds_server.imds.assign(system=True, roles={GRAPH: ["User.Read.All"]})
    result = _msal(msal.SystemAssignedManagedIdentity())
    assert result["token_source"] == "identity_provider"
    assert 3590 <= result["expires_in"] <= 3599
    claims = _verified(issuer, result["access_token"])
    assert claims["aud"] == GRAPH
    assert claims["tid"] == imds_server.imds.tenant_id
    assert claims["appid"] == claims["azp"] == identity.client_id
    assert claims["oid"] == identity.object_id
    assert claims["roles"] == ["User.Read.All"]
    assert claims["iss"] == issuer.issuer.issuer_for(imds_server.imds.tenant_id)
    assert 3590 <= claims["exp"] - time.time() <= 3599
    users = requests.get(f"{graph.base_url}/users", headers={"Authorization": f"Bearer {result['access_token']}"},
                         verify=str(ca_file), timeout=10)
    assert users.status_code == 200, users.text
    request = imds_server.imds.requests()[0]
    assert request.headers["Metadata"] == "true"
    assert request.headers["x-client-SKU"] == "MSAL.Python"
    assert request.query == {"api-version": "2018-02-01", "resource": GRAPH}
    assert request.status == 200 and request.minted


@pytest.mark.parametrize("named_by", ["client_id", "object_id", "resource_id"])
def test_user_assigned_identity_by_each_of_its_ids(imds_server: ImdsServer, named_by: str) -> None:
    imds = imds_server.imds
    imds.assign(system=True)
    wanted = imds.assign(roles={GRAPH: ["Mail.Read"]})
    imds.assign()
    result = _msal(msal.UserAssignedManagedIdentity(**{named_by: getattr(wanted, named_by)}))
    claims = jose.parse(result["access_token"])[1]
    assert claims["appid"] == wanted.client_id
    assert claims["xms_mirid"] == wanted.resource_id
    assert claims["roles"] == ["Mail.Read"]
    wire = {"client_id": "client_id", "object_id": "object_id", "resource_id": "msi_res_id"}[named_by]
    assert imds.requests()[0].query[wire] == getattr(wanted, named_by)


def test_answer_is_shaped_as_imds_with_numbers_as_strings(imds_server: ImdsServer) -> None:
    identity = imds_server.imds.assign()
    imds_server.imds.refresh_in = 1800
    body = _raw(imds_server, client_id=identity.client_id).json()
    assert set(body) == {"access_token", "client_id", "expires_in", "expires_on", "ext_expires_in", "not_before",
                         "resource", "token_type", "refresh_in"}
    assert body["client_id"] == identity.client_id and body["resource"] == GRAPH and body["token_type"] == "Bearer"
    assert body["refresh_in"] == "1800"
    assert int(body["expires_on"]) == jose.parse(body["access_token"])[1]["exp"]
    assert 3590 <= int(body["expires_in"]) <= 3599


def test_the_same_token_is_answered_until_near_expiry(imds_server: ImdsServer) -> None:
    imds = imds_server.imds
    identity = imds.assign()
    first = _raw(imds_server, client_id=identity.client_id).json()
    again = _raw(imds_server, client_id=identity.client_id).json()
    assert again["access_token"] == first["access_token"]
    assert again["expires_on"] == first["expires_on"]
    assert imds.token_requests(identity.client_id) == 2 and imds.minted == 1
    other = _raw(imds_server, client_id=identity.client_id, resource="https://vault.azure.net").json()
    assert other["access_token"] != first["access_token"]  # cached per resource
    imds.refresh_margin = imds.lifetime  # every cached token is now "near expiry"
    assert _raw(imds_server, client_id=identity.client_id).json()["access_token"] != first["access_token"]


def test_caching_can_be_switched_off(imds_server: ImdsServer) -> None:
    imds_server.imds.caching = False
    identity = imds_server.imds.assign()
    tokens = {_raw(imds_server, client_id=identity.client_id).json()["access_token"] for _ in range(3)}
    assert len(tokens) == 3 and imds_server.imds.minted == 3


def test_without_the_metadata_header_or_through_a_proxy_it_refuses(imds_server: ImdsServer) -> None:
    imds_server.imds.assign(system=True)
    refused = _raw(imds_server, metadata=False)
    assert refused.status_code == 400
    assert refused.json() == {"error": "bad_request_102", "error_description": "Required metadata header not specified"}
    proxied = requests.get(imds_server.base_url + TOKEN_PATH, params={"api-version": "2018-02-01", "resource": GRAPH},
                           headers={"Metadata": "true", "X-Forwarded-For": "10.0.0.1"}, timeout=10)
    assert proxied.status_code == 400
    assert imds_server.imds.minted == 0


def test_an_identity_not_assigned_is_not_found_until_it_is(imds_server: ImdsServer) -> None:
    imds = imds_server.imds
    client_id = str(uuid.uuid4())
    answer = _raw(imds_server, client_id=client_id)
    assert answer.status_code == 400
    assert answer.json() == {"error": "invalid_request", "error_description": "Identity not found"}
    assert _msal(msal.UserAssignedManagedIdentity(client_id=client_id))["error"] == "invalid_request"
    imds.assign(client_id)
    assert "access_token" in _msal(msal.UserAssignedManagedIdentity(client_id=client_id))
    imds.unassign(client_id)
    assert _raw(imds_server, client_id=client_id).status_code == 400


def test_system_assigned_request_without_a_system_identity(imds_server: ImdsServer) -> None:
    imds = imds_server.imds
    assert _raw(imds_server).json()["error_description"] == "Identity not found"
    only = imds.assign()
    # as Azure does (MSAL documents it): the only user-assigned identity answers for the system-assigned one
    assert jose.parse(_raw(imds_server).json()["access_token"])[1]["appid"] == only.client_id
    imds.assign()
    several = _raw(imds_server)
    assert several.status_code == 400
    assert several.json()["error_description"].startswith("Multiple user assigned identities exist")


def test_faults_are_answered_in_turn_then_tokens_again(imds_server: ImdsServer) -> None:
    imds = imds_server.imds
    identity = imds.assign()
    imds.fail_next(429, retry_after=7)
    imds.fail_next(503, count=2)
    throttled = _raw(imds_server, client_id=identity.client_id)
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "7"
    assert "error" in throttled.json()
    assert [_raw(imds_server, client_id=identity.client_id).status_code for _ in range(3)] == [503, 503, 200]
    imds.fail_next(500)
    assert _msal(msal.UserAssignedManagedIdentity(client_id=identity.client_id))["error"] == "unknown"
    assert [r.status for r in imds.requests()] == [429, 503, 503, 200, 500]


def test_bed_starts_an_imds_whose_tokens_its_graph_accepts(bed: Bed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", bed.imds_host)
    identity = bed.imds.assign(roles={GRAPH: ["User.Read.All"]})
    token = _msal(msal.UserAssignedManagedIdentity(client_id=identity.client_id))["access_token"]
    assert token in bed.issuer.issued_tokens  # the leak scanners look for it
    users = requests.get(f"{bed.graph.base_url}/users", headers={"Authorization": f"Bearer {token}"},
                         verify=str(bed.issuer_ca_file), timeout=10)
    assert users.status_code == 200
    bed.imds.unassign(identity.client_id)
