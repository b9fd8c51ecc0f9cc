"""Which resource a scope asks for, and whether a token's audience is that resource.

Entra names one resource several ways: `https://graph.microsoft.com` and Microsoft Graph's application id are the
same API, and a custom API's v2.0 tokens carry its application id where the scope said `api://<application id>`.
Comparison ignores a trailing slash and the case of scheme and host.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
# Microsoft Graph's service root in each cloud (learn.microsoft.com/graph/deployments; msgraph-core's
# NationalClouds also lists graph.microsoft.de, the retired Microsoft Cloud Germany).
GRAPH_HOSTS = frozenset({
    "graph.microsoft.com",
    "graph.microsoft.us",
    "dod-graph.microsoft.us",
    "microsoftgraph.chinacloudapi.cn",
    "graph.microsoft.de",
})
_ANY_GRAPH = "graph:*"  # the application id: Graph in whichever cloud issued the token
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def scope_resource(scope: str) -> str:
    """The resource identifier in a scope: `https://graph.microsoft.com/.default` -> `https://graph.microsoft.com`.

    A permission without a resource (`User.Read`) is Microsoft Graph's, as Entra reads it.
    """
    scope = scope.strip()
    if "://" in scope:
        scheme, rest = scope.split("://", 1)
        # No permission after the host: the scope is the resource itself (v1-style `resource`).
        return f"{scheme}://{rest.rsplit('/', 1)[0]}" if "/" in rest else scope
    if "/" in scope:
        return scope.rsplit("/", 1)[0]  # `<application id>/.default`
    return GRAPH_APP_ID


def _key(resource: str) -> str:
    """One spelling per resource, for comparison."""
    resource = resource.strip()
    if "://" not in resource:
        resource = resource.rstrip("/").lower()
        return _ANY_GRAPH if resource == GRAPH_APP_ID else resource
    parts = urlsplit(resource)
    scheme, netloc, path = parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/")
    if not path and not parts.query:
        if netloc in GRAPH_HOSTS:
            return f"graph:{netloc}"
        if scheme == "api" and _GUID.match(netloc):
            return netloc  # v2.0 tokens for `api://<app id>` carry the bare application id
    return f"{scheme}://{netloc}{path}" + (f"?{parts.query}" if parts.query else "")


def same_resource(audience: str, resource: str) -> bool:
    """Whether a token with `aud` = `audience` is a token for `resource`."""
    a, r = _key(audience), _key(resource)
    if a == r:
        return True
    # Graph's application id names Graph in every cloud; two clouds' hosts are not the same resource.
    return _ANY_GRAPH in (a, r) and a.startswith("graph:") and r.startswith("graph:")
