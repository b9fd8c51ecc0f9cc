"""The real msgraph-sdk pointed at the bed's Graph API instead of graph.microsoft.com.

`GraphServiceClient(credentials=..., scopes=...)` builds its own request adapter whose httpx client trusts only the
system's CAs and whose base URL is https://graph.microsoft.com/v1.0. For the bed three things change, nothing else:
the base URL (the bed's `graph.base_url`), the httpx client's trust (the bed's CA file), and the hosts the
authentication provider attaches tokens to (kiota's AllowedHostsValidator compares the URL's hostname, no port).
The scope stays Graph's: without explicit scopes kiota would derive one from the host (`https://127.0.0.1/.default`).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from azure.core.credentials import TokenCredential
from azure.core.credentials_async import AsyncTokenCredential
from kiota_authentication_azure.azure_identity_authentication_provider import AzureIdentityAuthenticationProvider
from msgraph.graph_request_adapter import GraphRequestAdapter
from msgraph.graph_request_adapter import options as sdk_middleware_options
from msgraph.graph_service_client import GraphServiceClient
from msgraph_core import GraphClientFactory  # type: ignore[import-untyped]

from graphcred_testbed.graph import GraphApi

GRAPH_SCOPE = "https://graph.microsoft.com/.default"


def trusting_transport(ca_file: Path | str) -> httpx.AsyncHTTPTransport:
    return httpx.AsyncHTTPTransport(verify=ssl.create_default_context(cafile=str(ca_file)))


def graph_service_client(
    credential: TokenCredential | AsyncTokenCredential,
    graph: GraphApi,
    ca_file: Path | str,
    *,
    transport: httpx.AsyncHTTPTransport | None = None,
) -> GraphServiceClient:
    """A GraphServiceClient that calls `graph` (the bed's Graph API) with tokens from `credential`.

    `transport` (default: a new one trusting `ca_file`) holds the connections; `graph_client` closes it for you."""
    hostname = urlsplit(graph.url).hostname
    assert hostname is not None
    auth = AzureIdentityAuthenticationProvider(credential, scopes=[GRAPH_SCOPE], allowed_hosts=[hostname])
    http = httpx.AsyncClient(base_url=graph.base_url, transport=transport or trusting_transport(ca_file),
                             timeout=httpx.Timeout(30.0, connect=10.0))
    # the middleware (retry, redirect, URL replacement for /me, telemetry) the SDK puts on its own client
    http = GraphClientFactory.create_with_default_middleware(client=http, options=sdk_middleware_options)
    adapter = GraphRequestAdapter(auth, client=http)
    adapter.base_url = graph.base_url
    return GraphServiceClient(request_adapter=adapter)


@asynccontextmanager
async def graph_client(
    credential: TokenCredential | AsyncTokenCredential, graph: GraphApi, ca_file: Path | str
) -> AsyncIterator[GraphServiceClient]:
    """`graph_service_client` whose connections are closed on exit. Closing the httpx client would not do it:
    msgraph-core's AsyncGraphTransport wraps the real transport and does not pass `aclose` on."""
    transport = trusting_transport(ca_file)
    try:
        yield graph_service_client(credential, graph, ca_file, transport=transport)
    finally:
        await transport.aclose()
