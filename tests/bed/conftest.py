"""Fixtures of the bed's own tests: a private issuer and Graph API (no control plane), and an IMDS per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from graphcred_testbed.graph import GraphApi
from graphcred_testbed.imds import ImdsServer
from graphcred_testbed.issuer import IssuerServer

from ..helpers import issuer_and_graph


@pytest.fixture(scope="module")
def issuer_graph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[IssuerServer, GraphApi, Path]]:
    """A private issuer and Graph API with their CA file, for the module."""
    with issuer_and_graph(tmp_path_factory.mktemp("ca")) as started:
        yield started


@pytest.fixture
def imds_server(issuer_graph: tuple[IssuerServer, GraphApi, Path], monkeypatch: pytest.MonkeyPatch
                ) -> Iterator[ImdsServer]:
    """A new IMDS signing with the module's issuer; MSAL is pointed at it (AZURE_POD_IDENTITY_AUTHORITY_HOST)."""
    with ImdsServer(issuer_graph[0].issuer) as server:
        monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", server.base_url)
        for other_source in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT"):
            monkeypatch.delenv(other_source, raising=False)  # MSAL would ask them instead
        yield server
