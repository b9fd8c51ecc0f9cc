"""Run `graphcred run` as a real child process against the bed (tests, demo, bench)."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

from .bed import Bed, wait_for
from .cluster import Process


class OperatorProcess:
    def __init__(self, bed: Bed, logdir: Path, *extra_args: str, name: str = "graphcred",
                 log_format: str = "text", log_level: str = "DEBUG") -> None:
        self.bed = bed
        # the bed's issuer is a private authority: the operator contacts it only when allowed, as an admin would
        issuers = [bed.authority_host, *([bed.node_authority_host] if bed.node_authority_host else [])]
        argv = [sys.executable, "-m", "graphcred", "run", f"--kubeconfig={bed.kubeconfig}",
                f"--ca-bundle={bed.issuer_ca_file}", f"--log-format={log_format}", f"--log-level={log_level}",
                "--metrics-port=0", *(f"--authority-host={h}" for h in issuers),
                # certificate rotation's addKey/removeKey go to the bed's Graph
                *([f"--graph-endpoint={bed.graph_api.url}"] if bed.graph_api is not None else []), *extra_args]
        self.process = Process(name, argv, logdir)
        self._log_offset = 0
        self.watching_after = 0  # tests: the apiserver restarts after which its watches were seen working again

    @property
    def logfile(self) -> Path:
        return self.process.logfile

    def start(self) -> OperatorProcess:
        # the log file is appended to across restarts: remember where this run's lines begin
        self._log_offset = self.logfile.stat().st_size if self.logfile.exists() else 0
        # The operator must not depend on the environment's CA settings to reach the issuer.
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        # ClusterGraphApps with a managed identity: msal asks the bed's IMDS (as it would the real one on a node).
        # The environment as it is now: tests set variables (POD_NAME) between runs.
        imds = self.bed.imds_host if self.bed.imds_server is not None else None
        self.process.env = {**os.environ, "AZURE_POD_IDENTITY_AUTHORITY_HOST": imds} if imds else None
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        """SIGKILL, as the kubelet does after the grace period or the OOM killer at any time."""
        popen = self.process.popen
        if popen is not None and popen.poll() is None:
            popen.send_signal(signal.SIGKILL)
            popen.wait()
        self.process.stop()

    def metrics_url(self, timeout: float = 15.0) -> str:
        """Base URL of the operator's /metrics, /healthz, /readyz server (it picked a free port)."""
        def port() -> str | None:
            found = re.findall(r"serving /metrics, /healthz, /readyz on port (\d+)", self.logs(this_run=True))
            return found[-1] if found else None

        return f"http://127.0.0.1:{wait_for(port, timeout=timeout, what='the metrics server to start')}"

    def logs(self, this_run: bool = False) -> str:
        if not self.logfile.exists():
            return ""
        text = self.logfile.read_bytes()
        return text[self._log_offset if this_run else 0:].decode(errors="replace")

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


CRDS = ("graphappcredentials", "clustergraphapps")


def install_crd(bed: Bed) -> None:
    """Apply crds/ (the committed, generated CRDs) and wait until they are established."""
    for plural in CRDS:
        crd = Path(__file__).resolve().parents[2] / "crds" / f"{plural}.yaml"
        bed.kubectl("apply", "--server-side", "-f", str(crd))
    bed.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                *(f"crd/{plural}.graphcred.io" for plural in CRDS))
