"""The bed's Graph API as a resource server, on odd claims: an `aud` array, non-finite `exp`/`nbf`. A private issuer
and API, no control plane (regressions found by the review of 31b2c5d)."""


from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from graphcred_testbed import jose
from graphcred_testbed.graph import GraphApi
from graphcred_testbed.issuer import IssuerServer

from ..helpers import GRAPH, issuer_and_graph


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[IssuerServer, GraphApi, Path]]:
    with issuer_and_graph(tmp_path_factory.mktemp("ca")) as started:
        yield started


def _signed(issuer: IssuerServer, **changes: Any) -> str:
    tid = str(uuid.uuid4())
    issuer.issuer.add_tenant(tid)
    now = int(time.time())
    claims = {"aud": GRAPH, "iss": issuer.issuer.issuer_for(tid), "tid": tid, "iat": now, "nbf": now,
              "exp": now + 3600, "roles": ["User.Read.All"], "idtyp": "app", "uti": uuid.uuid4().hex, **changes}
    return jose.sign({"typ": "JWT", "alg": "RS256", "kid": issuer.issuer.kid}, claims, issuer.issuer.signing_key)


def _status(servers: tuple[IssuerServer, GraphApi, Path], token: str) -> int:
    _, api, ca_file = servers
    resp = requests.get(f"{api.base_url}/users", headers={"Authorization": f"Bearer {token}"}, verify=str(ca_file),
                        timeout=10)
    return resp.status_code


def test_an_audience_array_naming_graph_is_accepted_not_a_500(servers: tuple[IssuerServer, GraphApi, Path]) -> None:
    """RFC 7519 §4.1.3 allows `aud` as an array; Microsoft.IdentityModel accepts one that names the API.
    On 31b2c5d `list in frozenset` raises TypeError: a 500 and a stack trace in the log."""
    issuer = servers[0]
    naming_graph = _status(servers, _signed(issuer, aud=[GRAPH, "https://other.example"]))
    assert naming_graph == 200
    not_naming_graph = _status(servers, _signed(issuer, aud=["https://other.example"]))
    assert not_naming_graph == 401


@pytest.mark.parametrize("claim", ["exp", "nbf"])
def test_a_nan_lifetime_claim_is_refused(servers: tuple[IssuerServer, GraphApi, Path], claim: str) -> None:
    """NaN compares false both ways: on 31b2c5d a signed token with exp NaN never expires, and nbf NaN is always
    valid. A resource server refuses a lifetime it cannot read (IDX10225-style)."""
    token = _signed(servers[0], **{claim: float("nan")})
    assert "NaN" in jose.b64url_decode(token.split(".")[1]).decode()  # the payload really carries it
    status = _status(servers, token)
    assert status == 401
