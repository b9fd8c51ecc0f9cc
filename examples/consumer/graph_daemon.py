"""A daemon that calls Microsoft Graph with the token graphcred keeps fresh in a mounted Secret (examples/pod.yaml).

Every call asks the credential for a token; the credential re-reads the mounted files when the kubelet has swapped
them (graphcred refreshed the token) or when the token is close to expiry, so the daemon never restarts and never
sends an expired token. It prints the users it lists and when the token it used expires, never the token.

Settings (environment):
  GRAPHCRED_TOKEN_DIR  where the token Secret is mounted (default /var/run/graphcred)
  GRAPH_BASE_URL       default https://graph.microsoft.com/v1.0; another host (a sovereign cloud's Graph, or the
                       test bed's Graph API) is allowed to receive the token explicitly
  GRAPH_SCOPE          the scope to ask for; default Graph's `.default` in the cloud GRAPH_BASE_URL names
                       (https://graph.microsoft.us/.default for graph.microsoft.us), else global Graph's
  GRAPH_CA_BUNDLE      extra CA file for that host (the test bed's own CA); default: the system's trust store
  INTERVAL             seconds between calls (default 60)
Arguments: `--count N` stops after N calls (the demo uses it); without it the daemon runs until stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import ssl
import sys
from urllib.parse import urlsplit

import httpx
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_authentication_azure.azure_identity_authentication_provider import AzureIdentityAuthenticationProvider
from msgraph import GraphServiceClient
from msgraph.generated.users.users_request_builder import UsersRequestBuilder
from msgraph.graph_request_adapter import GraphRequestAdapter
from msgraph.graph_request_adapter import options as sdk_middleware_options
from msgraph_core import GraphClientFactory

from graphcred_client import AsyncMountedTokenCredential

GRAPH = "https://graph.microsoft.com/v1.0"
SCOPES = ["https://graph.microsoft.com/.default"]
# Graph's service root in each cloud: a token for one is refused for another (learn.microsoft.com/graph/deployments)
GRAPH_CLOUD_HOSTS = frozenset({"graph.microsoft.com", "graph.microsoft.us", "dod-graph.microsoft.us",
                               "microsoftgraph.chinacloudapi.cn"})


def scopes_for(base_url: str) -> list[str]:
    """GRAPH_SCOPE, else Graph's `.default` in the cloud of `base_url`; another host (the bed) is global Graph."""
    if scope := os.environ.get("GRAPH_SCOPE"):
        return [scope]
    host = (urlsplit(base_url).hostname or "").lower()
    return [f"https://{host}/.default"] if host in GRAPH_CLOUD_HOSTS else SCOPES


def graph_client(credential: AsyncMountedTokenCredential, base_url: str, ca_bundle: str | None) -> GraphServiceClient:
    if base_url.rstrip("/") == GRAPH:
        return GraphServiceClient(credentials=credential, scopes=SCOPES)  # the usual case: nothing else to say
    # Another Graph host: the SDK attaches tokens only to hosts it is told to, and trusts only the system's CAs.
    host = urlsplit(base_url).hostname or ""
    auth = AzureIdentityAuthenticationProvider(credential, scopes=scopes_for(base_url), allowed_hosts=[host])
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True
    http = GraphClientFactory.create_with_default_middleware(
        client=httpx.AsyncClient(base_url=base_url, verify=verify, timeout=httpx.Timeout(30.0, connect=10.0)),
        options=sdk_middleware_options)
    adapter = GraphRequestAdapter(auth, client=http)
    adapter.base_url = base_url
    return GraphServiceClient(request_adapter=adapter)


async def call_once(graph: GraphServiceClient, credential: AsyncMountedTokenCredential, scopes: list[str]) -> None:
    query = UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(select=["displayName", "mail"], top=10)
    users = await graph.users.get(request_configuration=RequestConfiguration(query_parameters=query))
    # the same token the SDK just used (the credential caches it until the file changes): only its expiry is shown
    expires = dt.datetime.fromtimestamp((await credential.get_token(*scopes)).expires_on, dt.UTC)
    names = ", ".join(u.display_name or "?" for u in (users.value if users and users.value else []))
    now = dt.datetime.now(dt.UTC)
    print(f"{now:%H:%M:%S} GET /users -> {names} (token expires {expires:%H:%M:%S}Z)", flush=True)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=0, help="stop after this many calls (0: run until stopped)")
    args = parser.parse_args(argv)
    interval = float(os.environ.get("INTERVAL", "60"))
    async with AsyncMountedTokenCredential(os.environ.get("GRAPHCRED_TOKEN_DIR", "/var/run/graphcred")) as credential:
        base_url = os.environ.get("GRAPH_BASE_URL", GRAPH)
        graph = graph_client(credential, base_url, os.environ.get("GRAPH_CA_BUNDLE"))
        done = 0
        while True:
            try:
                await call_once(graph, credential, scopes_for(base_url))
            except Exception as exc:  # noqa: BLE001 - a daemon reports and carries on; the next call may well succeed
                print(f"Graph call failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                if args.count:
                    return 1
            done += 1
            if args.count and done >= args.count:
                return 0
            await asyncio.sleep(interval)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
