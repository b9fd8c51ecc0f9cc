"""The whole test bed in one object: the control plane, the token issuer, the Graph API, an IMDS (managed
identities, graphcred_testbed.imds), and API clients; with `node=True` also a real node (graphcred_testbed.node:
containerd, runc, kubelet) that runs the cluster's pods."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config

from .cluster import ControlPlane
from .graph import GraphApi
from .imds import Imds, ImdsServer
from .issuer import Issuer, IssuerServer
from .node import NODE_IP, Node
from .pki import CertificateAuthority

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T | None], *, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"
) -> T:
    """Poll `probe` until it returns something truthy, or fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


class Bed:
    """Control plane + issuer + Graph API (+ IMDS). `with Bed(dir) as bed:` starts them all and stops them all.
    `imds=False`: no IMDS (it is one thread on the loopback: on by default)."""

    def __init__(self, workdir: Path | None = None, *, node: bool = False, imds: bool = True) -> None:
        self.control_plane = ControlPlane(workdir, node=node)
        self.node_wanted = node
        self.imds_wanted = imds
        # managed identities: tokens signed with the issuer's key, so the Graph API accepts them
        self.imds_server: ImdsServer | None = None
        self._node: Node | None = None
        self.issuer_ca = CertificateAuthority("graphcred-testbed-issuer-ca")
        self.issuer_ca_file = self.control_plane.dir / "issuer-ca.crt"
        self.issuer_ca_file.write_bytes(self.issuer_ca.cert_pem)
        self.issuer_server: IssuerServer | None = None
        self.node_authority_host: str | None = None  # the issuer as the node's pods reach it (`Bed(node=True)`)
        self.node_imds_host: str | None = None  # the IMDS as the node's pods reach it (`Bed(node=True)`)
        self.graph_api: GraphApi | None = None
        self.api: client.ApiClient | None = None

    @property
    def issuer(self) -> Issuer:
        assert self.issuer_server is not None, "bed not started"
        return self.issuer_server.issuer

    @property
    def authority_host(self) -> str:
        assert self.issuer_server is not None, "bed not started"
        return self.issuer_server.base_url

    @property
    def imds(self) -> Imds:
        """The bed's IMDS (`Bed(imds=True)`, the default): managed identities, faults, the request log."""
        assert self.imds_server is not None, "bed started without an IMDS"
        return self.imds_server.imds

    @property
    def imds_host(self) -> str:
        """http://127.0.0.1:PORT: the value of AZURE_POD_IDENTITY_AUTHORITY_HOST for MSAL to use the bed's IMDS."""
        assert self.imds_server is not None, "bed started without an IMDS"
        return self.imds_server.base_url

    @property
    def graph(self) -> GraphApi:
        """The bed's Microsoft Graph; its certificate is issued by `issuer_ca` (trust `issuer_ca_file`)."""
        assert self.graph_api is not None, "bed not started"
        return self.graph_api

    @property
    def node(self) -> Node:
        """The bed's node (`Bed(node=True)`)."""
        assert self._node is not None, "bed started without node=True"
        return self._node

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    def start(self) -> Bed:
        # with a node, its pods reach the issuer through a forward at the node's address: the certificate names it
        self.issuer_server = IssuerServer(self.issuer_ca, also=(NODE_IP,) if self.node_wanted else ()).start()
        # federated assertions: the issuer fetches the apiserver's discovery document and JWKS, served with this CA
        self.issuer_server.issuer.trust_ca(self.control_plane.ca.cert_pem)
        try:
            if self.imds_wanted:
                self.imds_server = ImdsServer(self.issuer_server.issuer).start()
            self.graph_api = GraphApi(self.issuer_ca, self.issuer_server.base_url, self.issuer_ca_file,
                                      directory=self.issuer_server.issuer).start()
            self.control_plane.start()
            if self.node_wanted:
                self._node = Node(self.control_plane).start()
                ip, port = self._node.forward(self.issuer_server.server_address[1])
                self.node_authority_host = f"https://{ip}:{port}"
                self.issuer_server.issuer.aliases.add(self.node_authority_host)
                if self.imds_server is not None:
                    ip, port = self._node.forward(self.imds_server.server_address[1])
                    self.node_imds_host = f"http://{ip}:{port}"
        except BaseException:  # pytest-timeout's Failed too: nothing of a half-started bed may outlive it
            self.stop()
            raise
        self.api = config.new_client_from_config(str(self.kubeconfig))  # type: ignore[no-untyped-call]
        return self

    def stop(self) -> None:
        # every part is stopped even when stopping one before it failed (last registered first; errors after)
        with contextlib.ExitStack() as parts:
            if self.issuer_server is not None:
                parts.callback(self.issuer_server.stop)
            if self.graph_api is not None:
                parts.callback(self.graph_api.stop)
            if self.imds_server is not None:
                parts.callback(self.imds_server.stop)
            parts.callback(self.control_plane.stop)
            if self._node is not None:
                parts.callback(self._node.stop)
            if self.api is not None:
                parts.callback(self.api.close)

    def __enter__(self) -> Bed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- conveniences for tests and the demo ----------------------------------------------------------------
    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def create_namespace(self, name: str) -> None:
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))

    def delete_namespace(self, name: str) -> None:
        try:
            self.core.delete_namespace(name)
        except client.ApiException as exc:
            if exc.status != 404:
                raise

    def kubectl(self, *args: str, **kwargs: Any) -> Any:
        return self.control_plane.kubectl(*args, **kwargs)
