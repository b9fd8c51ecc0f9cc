"""Kubelet and Prometheus for the soak's two operator processes: started, supervised, probed, restarted."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import requests

from ..bed import Bed
from ..operator_process import OperatorProcess
from .config import SoakConfig


class _Replicas:
    def __init__(self, bed: Bed, logdir: Path, cfg: SoakConfig, lease_namespace: str, *extra: str) -> None:
        args = ("--leader-election", f"--leader-election-namespace={lease_namespace}",
                f"--lease-duration={cfg.lease_duration:g}", f"--token-timeout={cfg.token_timeout:g}", *extra)
        self.ops = [OperatorProcess(bed, logdir, *args, name=f"soak-replica-{i}", log_level=cfg.log_level)
                    for i in range(2)]
        self.lock = threading.RLock()
        self.restarts: Counter[str] = Counter()
        self.exits: list[str] = []
        self._urls: dict[int, str] = {}
        self._probe_failures: dict[int, int] = {}
        self.held: set[str] = set()  # killed by the plan, started again by it (not by the supervisor)
        self.on_restart: Callable[[str, str], None] | None = None  # (replica, cause) of a restart not planned

    def start(self) -> None:
        for op in self.ops:
            op.start()

    def stop(self) -> None:
        with self.lock:
            for op in self.ops:
                op.stop()

    @staticmethod
    def pid(op: OperatorProcess) -> int | None:
        popen = op.process.popen
        return popen.pid if popen is not None and popen.poll() is None else None

    def holder(self, identity: str | None) -> OperatorProcess | None:
        for op in self.ops:
            pid = self.pid(op)
            if identity and pid is not None and identity.endswith(f"-{pid}"):
                return op
        return None

    def restart(self, op: OperatorProcess, cause: str) -> None:
        with self.lock:
            op.kill()
            op.start()
            self.restarts[cause] += 1
        if self.on_restart is not None:
            self.on_restart(op.process.name, cause)

    def url(self, op: OperatorProcess) -> str | None:
        pid = self.pid(op)
        if pid is None:
            return None
        if pid not in self._urls:
            with contextlib.suppress(TimeoutError):
                self._urls[pid] = op.metrics_url(timeout=0.2)
        return self._urls.get(pid)

    def supervise(self) -> None:
        """As a Deployment would: a replica that exited is started again."""
        with self.lock:
            for op in self.ops:
                popen = op.process.popen
                if op.process.name not in self.held and popen is not None and popen.poll() is not None:
                    self.exits.append(f"{op.process.name} exited with {popen.returncode}")
                    op.stop()
                    op.start()
                    self.restarts["exited"] += 1
                    if self.on_restart is not None:
                        self.on_restart(op.process.name, f"exited with {popen.returncode}")

    def probe(self, op: OperatorProcess) -> bool | None:
        """One liveness probe (GET /healthz), stricter than the chart's (6 failures of 5 s); True after 3 failures
        in a row (the harness restarts the replica, as a kubelet would)."""
        pid, url = self.pid(op), self.url(op)
        if pid is None or url is None:
            return None
        try:
            ok = requests.get(f"{url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            ok = False
        self._probe_failures[pid] = 0 if ok else self._probe_failures.get(pid, 0) + 1
        return self._probe_failures[pid] >= 3
