"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver and kube-controller-manager.

TLS everywhere the apiserver is concerned, an admin client certificate (group system:masters) in a kubeconfig,
and a service-account issuer and signing key so that the TokenRequest API works. The issuer is the apiserver's own
URL and its OIDC discovery document and JWKS are readable anonymously (what a managed cluster's public OIDC issuer
endpoint offers), so that the bed's Entra issuer can verify ServiceAccount tokens (workload identity federation).
The controller manager runs
the garbage collector (owner references really delete Secrets), the namespace controller and the
service-account controller. The OwnerReferencesPermissionEnforcement admission plugin is on, as on OpenShift.
Ports are random; every process dies with its parent (PR_SET_PDEATHSIG).

`ControlPlane(node=True)` prepares for a real node (graphcred_testbed.node): the Node authorizer and NodeRestriction
for the kubelet's credentials, the controllers a Deployment needs (deployment, replicaset, and the root-CA publisher
whose `kube-root-ca.crt` every pod's ServiceAccount volume mounts), and kube-scheduler.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from .binaries import binary, node_binary
from .pki import CertificateAuthority, KeyPair, key_pem, new_key, public_key_pem

log = logging.getLogger("graphcred_testbed")

_PR_SET_PDEATHSIG = 1

# Anonymous read of the issuer discovery endpoints (the built-in role's non-resource URLs) and nothing more: Entra
# fetches them without credentials. Managed clusters publish the same documents at a public OIDC issuer URL instead.
DISCOVERY_BINDING = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRoleBinding",
    "metadata": {"name": "graphcred-bed:service-account-issuer-discovery:unauthenticated"},
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                "name": "system:service-account-issuer-discovery"},
    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:unauthenticated"}],
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # If the test process is killed, its control plane must not outlive it.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Process:
    """A child process whose output goes to a log file in the bed's directory."""

    def __init__(self, name: str, argv: list[str], logdir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.logfile = logdir / f"{name}.log"
        self._log: IO[bytes] | None = None
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._log = open(self.logfile, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
            preexec_fn=_die_with_parent, start_new_session=True,
        )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self._log:
            self._log.close()
            self._log = None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager, started in a temporary directory."""

    def __init__(self, workdir: Path | None = None, *, node: bool = False) -> None:
        self.node = node
        self._own_dir = workdir is None
        self.apiserver_restarts = 0  # by `restart_apiserver`: watchers reconnect after it, with their backoff
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="graphcred-bed-"))
        self.ca = CertificateAuthority("graphcred-testbed-kube-ca")
        self.etcd_port, self.etcd_peer_port = free_port(), free_port()
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        # ServiceAccount tokens name the apiserver itself as issuer; it serves {issuer}/.well-known/openid-configuration
        self.sa_issuer = self.server
        self.sa_jwks_uri = f"{self.sa_issuer}/openid/v1/jwks"
        self.kubeconfig = self.dir / "kubeconfig"
        self.processes: dict[str, Process] = {}
        self._write_pki()

    # --- files ----------------------------------------------------------------------------------------------
    def _write_pki(self) -> None:
        pki = self.dir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        (pki / "ca.crt").write_bytes(self.ca.cert_pem)
        (pki / "ca.key").write_bytes(self.ca.pair.key_pem)
        serving = self.ca.issue("kube-apiserver", server=True,
                                hosts=("127.0.0.1", "localhost", "kubernetes", "kubernetes.default",
                                       "kubernetes.default.svc", "10.0.0.1"))
        serving.write(pki, "apiserver")
        self.admin: KeyPair = self.ca.issue("graphcred-admin", organization="system:masters", client=True)
        self.admin.write(pki, "admin")
        sa = new_key()
        (pki / "sa.key").write_bytes(key_pem(sa))
        (pki / "sa.pub").write_bytes(public_key_pem(sa))
        self.write_kubeconfig(self.kubeconfig, self.admin)

    def write_kubeconfig(self, path: Path, client: KeyPair, user: str = "admin", server: str | None = None) -> Path:
        pki = self.dir / "pki"
        crt, key = client.write(pki, f"client-{user}")
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: graphcred-bed\n  cluster:\n    server: {server or self.server}\n"
            f"    certificate-authority: {pki / 'ca.crt'}\n"
            f"users:\n- name: {user}\n  user:\n    client-certificate: {crt}\n    client-key: {key}\n"
            f"contexts:\n- name: graphcred-bed\n  context:\n    cluster: graphcred-bed\n    user: {user}\n"
            "current-context: graphcred-bed\n"
        )
        path.chmod(0o600)
        return path

    # --- lifecycle -------------------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> ControlPlane:
        t0 = time.monotonic()
        pki = self.dir / "pki"
        logs = self.dir / "logs"
        logs.mkdir(exist_ok=True)
        etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{self.etcd_peer_port}"
        self.processes["etcd"] = Process("etcd", [
            binary("etcd"), "--name=bed", f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=bed={peer_url}", "--unsafe-no-fsync", "--log-level=warn",
            "--listen-metrics-urls=", "--quota-backend-bytes=4294967296",
        ], logs)
        self.processes["kube-apiserver"] = Process("kube-apiserver", [
            binary("kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.port}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-issuer={self.sa_issuer}",
            f"--service-account-jwks-uri={self.sa_jwks_uri}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            # in-cluster tokens are for the API (the issuer URL); TokenRequest still issues tokens for any audience
            f"--api-audiences={self.sa_issuer}",
            # the default, made explicit: with RBAC, anonymous requests get only what is bound to
            # system:unauthenticated (the built-in public-info-viewer: healthz/livez/readyz/version; and discovery)
            "--anonymous-auth=true",
            "--service-cluster-ip-range=10.0.0.0/24",
            # a node's kubelet is authorized as on any cluster: the Node authorizer, NodeRestriction
            "--authorization-mode=" + ("Node,RBAC" if self.node else "RBAC"),
            # as on OpenShift: setting blockOwnerDeletion needs `update` on the owner's finalizers subresource
            "--enable-admission-plugins=OwnerReferencesPermissionEnforcement"
            + (",NodeRestriction" if self.node else ""),
            # no kubernetes Service endpoints: 1.37 refuses a loopback endpoint. The Service keeps its ClusterIP
            # 10.0.0.1 (a node's pods get it as KUBERNETES_SERVICE_HOST; graphcred_testbed.node forwards it)
            "--endpoint-reconciler-type=none",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            "--v=1",
        ], logs)
        self.processes["kube-controller-manager"] = Process("kube-controller-manager", [
            binary("kube-controller-manager"),
            f"--kubeconfig={self.kubeconfig}",
            # clusterrole-aggregation: fills view/edit/admin from roles labelled aggregate-to-* (the chart's)
            "--controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,"
            "clusterrole-aggregation-controller"
            # node-lifecycle: lifts the not-ready taint kubelet registers the node with
            + (",deployment-controller,replicaset-controller,root-ca-certificate-publisher-controller,"
               "node-lifecycle-controller"
               if self.node else ""),
            "--leader-elect=false", "--secure-port=0", "--use-service-account-credentials=false",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--concurrent-gc-syncs=10",
            "--v=1",
        ], logs)
        if self.node:
            self.processes["kube-scheduler"] = Process("kube-scheduler", [
                node_binary("kube-scheduler"), f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false", "--secure-port=0", "--v=1",
            ], logs)
        try:
            self.processes["etcd"].start()
            self._wait_http(f"{etcd_url}/health", "etcd", t0 + timeout, tls=False)
            self.processes["kube-apiserver"].start()
            self._wait_http(f"{self.server}/readyz", "kube-apiserver", t0 + timeout, tls=True)
            self._grant_anonymous_discovery()
            self.processes["kube-controller-manager"].start()
            if self.node:
                self.processes["kube-scheduler"].start()
            self._wait_default_serviceaccount(t0 + timeout)
        except Exception:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        log.info("control plane up at %s in %.1f s", self.server, self.startup_seconds)
        return self

    def _ssl_context(self) -> ssl.SSLContext:
        pki = self.dir / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(pki / "admin.crt", pki / "admin.key")
        return ctx

    def _wait_http(self, url: str, name: str, deadline: float, *, tls: bool) -> None:
        ctx = self._ssl_context() if tls else None
        last = ""
        while time.monotonic() < deadline:
            proc = self.processes[name]
            if not proc.alive():
                raise RuntimeError(f"{name} exited during start-up:\n{proc.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
                    if resp.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise TimeoutError(f"{name} not ready at {url}: {last}\n{self.processes[name].tail()}")

    def _grant_anonymous_discovery(self) -> None:
        url = f"{self.server}/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
        req = urllib.request.Request(url, data=json.dumps(DISCOVERY_BINDING).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10, context=self._ssl_context()):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # already there: a restarted bed on the same etcd
                raise

    def _wait_default_serviceaccount(self, deadline: float) -> None:
        # The service-account controller creating `default` in `default` shows the controller manager is live.
        url = f"{self.server}/api/v1/namespaces/default/serviceaccounts/default"
        ctx = self._ssl_context()
        while time.monotonic() < deadline:
            if not self.processes["kube-controller-manager"].alive():
                raise RuntimeError("kube-controller-manager exited during start-up:\n"
                                   + self.processes["kube-controller-manager"].tail())
            try:
                with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError("kube-controller-manager did not create the default ServiceAccount:\n"
                           + self.processes["kube-controller-manager"].tail())

    def restart_apiserver(self, downtime: float = 0.0) -> None:
        """Stop and start kube-apiserver on the same port (for reconnect tests)."""
        api = self.processes["kube-apiserver"]
        api.stop()
        time.sleep(downtime)
        api.start()
        self._wait_http(f"{self.server}/readyz", "kube-apiserver", time.monotonic() + 60, tls=True)
        self.apiserver_restarts += 1

    def stop(self) -> None:
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            proc = self.processes.get(name)
            if proc is not None:
                proc.stop()
        if self._own_dir and not os.environ.get("GRAPHCRED_KEEP_BED"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,  # noqa: A002
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, check=check, timeout=timeout,
        )
