"""The credential as the SDKs call it: msgraph-sdk's GraphServiceClient (through kiota's token provider) and
azure-core's bearer token policy. No network: the request is built, not sent."""

from __future__ import annotations

import asyncio
import base64

import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.pipeline.policies import AsyncBearerTokenCredentialPolicy, BearerTokenCredentialPolicy
from azure.core.rest import HttpRequest
from kiota_authentication_azure.azure_identity_access_token_provider import AzureIdentityAccessTokenProvider
from msgraph import GraphServiceClient

from graphcred_client import AsyncMountedTokenCredential, MountedTokenCredential

from .tokens import GRAPH_SCOPE, Mount


def test_graph_service_client_constructs(mount: Mount) -> None:
    mount.write()
    for credential in (MountedTokenCredential(mount.directory), AsyncMountedTokenCredential(mount.directory)):
        graph = GraphServiceClient(credentials=credential, scopes=[GRAPH_SCOPE])
        assert graph.users is not None


@pytest.mark.parametrize("asynchronous", [False, True])
def test_kiota_gets_the_token_and_a_claims_challenge_is_refused(mount: Mount, asynchronous: bool) -> None:
    token = mount.write()
    kind = AsyncMountedTokenCredential if asynchronous else MountedTokenCredential
    credential = kind(mount.directory)
    provider = AzureIdentityAccessTokenProvider(credential, None, [GRAPH_SCOPE])  # as GraphServiceClient builds it
    url = "https://graph.microsoft.com/v1.0/users"
    assert asyncio.run(provider.get_authorization_token(url)) == token
    challenge = base64.b64encode(b'{"access_token":{"nbf":{"essential":true}}}').decode()
    with pytest.raises(ClientAuthenticationError, match="claims challenge"):
        asyncio.run(provider.get_authorization_token(url, {"claims": challenge}))


def test_azure_core_policies_send_the_token(mount: Mount) -> None:
    token = mount.write()
    request = PipelineRequest(HttpRequest("GET", "https://graph.microsoft.com/v1.0/users"), PipelineContext(None))
    BearerTokenCredentialPolicy(MountedTokenCredential(mount.directory), GRAPH_SCOPE).on_request(request)
    assert request.http_request.headers["Authorization"] == f"Bearer {token}"

    request = PipelineRequest(HttpRequest("GET", "https://graph.microsoft.com/v1.0/users"), PipelineContext(None))
    policy = AsyncBearerTokenCredentialPolicy(AsyncMountedTokenCredential(mount.directory), GRAPH_SCOPE)
    asyncio.run(policy.on_request(request))
    assert request.http_request.headers["Authorization"] == f"Bearer {token}"
