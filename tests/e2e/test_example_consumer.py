"""The examples as a user strings them together: the example credential's declared roles are enough for the example
daemon. A private issuer and Graph API (no control plane); the token is a real MSAL client-credentials token."""


from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import msal
import pytest
import yaml

from graphcred.acquire.httpsession import PinnedCASession
from graphcred_testbed.graph import GraphApi
from graphcred_testbed.issuer import IssuerServer
from graphcred_testbed.volume import SecretVolume

from ..helpers import GRAPH, issuer_and_graph

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[IssuerServer, GraphApi, Path]]:
    with issuer_and_graph(tmp_path) as started:
        yield started


def test_the_example_pod_works_with_the_roles_the_example_credential_declares(
        servers: tuple[IssuerServer, GraphApi, Path], tmp_path: Path) -> None:
    """examples/pod.yaml mounts mail-reader-token (examples/client-secret.yaml, requiredRoles [Mail.Read], and
    docs/entra-app.md grants Mail.Read); its daemon lists /users, which needs User.Read.All or Directory.Read.All.
    Granted exactly what the examples declare, the daemon gets Graph's 403 on every call. (The demo registers the
    app with User.Read.All as well, so it does not show.)"""
    issuer, api, ca_file = servers
    gac = next(d for d in yaml.safe_load_all((ROOT / "examples" / "client-secret.yaml").read_text())
               if d and d["kind"] == "GraphAppCredential")
    pod = yaml.safe_load((ROOT / "examples" / "pod.yaml").read_text())
    assert pod["spec"]["volumes"][0]["secret"]["secretName"] == gac["spec"]["secretName"]  # the pair a user applies
    roles = list(gac["spec"]["requiredRoles"])
    tenant = str(uuid.uuid4())
    app = issuer.issuer.register_app(tenant, secret="example-secret", roles={GRAPH: roles})
    cca = msal.ConfidentialClientApplication(app.client_id, client_credential="example-secret",
                                             authority=f"{issuer.base_url}/{tenant}", instance_discovery=False,
                                             http_client=PinnedCASession(str(ca_file),
                                                                         authority_hosts=[issuer.base_url]))
    result = cca.acquire_token_for_client(gac["spec"]["scopes"])
    assert "access_token" in result, result.get("error_description")
    volume = SecretVolume(tmp_path / "token")
    volume.write({"access_token": result["access_token"].encode(), "token_type": b"Bearer"})
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "consumer" / "graph_daemon.py"), "--count", "1"],
        env={**os.environ, "GRAPHCRED_TOKEN_DIR": str(volume.directory), "GRAPH_BASE_URL": api.base_url,
             "GRAPH_CA_BUNDLE": str(ca_file)},
        capture_output=True, text=True, timeout=120, check=False)
    assert result["access_token"] not in run.stdout + run.stderr
    assert run.returncode == 0, f"roles {roles}: {run.stderr.strip()[-300:]}"
    assert "Adele Vance" in run.stdout
