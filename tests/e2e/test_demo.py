"""The README's first command, `python -m graphcred_testbed demo`, run as a user runs it: its own bed, the operator,
the example credential Ready, and the example daemon's Graph call listing users through the token Secret. The demo
is the first contact, so it must also teach: where the tools and the bed are, lines that run as printed, a refresh,
the next commands, and a clean stop on Ctrl-C whenever it comes."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.bed

DEMO = [sys.executable, "-m", "graphcred_testbed", "demo"]
CLIENT_SECRET = "example-client-secret-value"  # examples/client-secret.yaml's: the demo names its Secret, not it


def test_the_demo_ends_with_a_graph_call_through_a_fresh_token_and_says_where_everything_is() -> None:
    run = subprocess.run(DEMO, capture_output=True, text=True, timeout=240, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "Ready after" in out
    daemon = [line for line in out.splitlines() if "GET /users ->" in line]
    assert len(daemon) == 1 and "Adele Vance" in daemon[0], out[-3000:]
    assert out.rstrip().endswith("nothing left running"), out[-3000:]
    path = _export(out, "PATH")
    assert any((Path(d) / "kubectl").exists() and (Path(d) / "helm").exists() for d in path.split(":")), path
    assert any((Path(d) / "graphcred").exists() for d in path.split(":")), path
    assert _export(out, "KUBECONFIG").endswith("/kubeconfig")
    issuer = re.search(r"authorityHost (https://127\.0\.0\.1:\d+)", out)
    assert issuer, out[:3000]
    assert re.search(r"CA certificate: /\S+\.crt", out)
    assert "tenant 8a3f1c2e-5b7d-4e9f-a1c3-2d4e6f8a0b1c" in out and "3c9e7a5b-1d2f-4a6b-8c0e-9f1a3b5d7e2c" in out
    assert "Secret demo/mail-reader-app" in out and CLIENT_SECRET not in out + run.stderr
    assert re.search(r"^\$ kubectl apply -n demo -f /\S+/client-secret\.yaml", out, re.M), out[:3000]
    assert re.search(r"renewed.*expires", out), out[-3000:]  # a refresh on demand, with its new expiry
    for step in ("graphcred status mail-reader -n demo", "graphcred renew mail-reader -n demo",
                 "graphcred inspect secret mail-reader-token -n demo", "kubectl get gac -n demo -o wide -w"):
        assert step in out, step


def test_held_demo_runs_its_lines_as_printed_shows_refreshes_and_stops_cleanly_on_ctrl_c() -> None:
    with _demo("--hold", "--token-lifetime", "20") as demo:
        demo.wait_for(lambda line: "Ctrl-C" in line, timeout=240)
        path, kubeconfig = _export(demo.text, "PATH"), _export(demo.text, "KUBECONFIG")
        exports = f"export PATH={path}:$PATH; export KUBECONFIG={kubeconfig}"
        apply = re.search(r"^\$ (kubectl apply -n demo -f \S+)", demo.text, re.M)
        assert apply, demo.text[:3000]
        certificate = re.search(r"^\s+(kubectl create secret tls .+?)\s+# the certificate example", demo.text, re.M)
        assert certificate, demo.text[-3000:]
        for line in (apply.group(1), "graphcred status mail-reader -n demo",
                     "graphcred inspect secret mail-reader-token -n demo", certificate.group(1)):
            run = subprocess.run(["bash", "-c", f"{exports}; {line}"], capture_output=True, text=True, timeout=60,
                                 check=False)
            assert run.returncode == 0, f"{line}: {run.stdout}{run.stderr}"
        # examples/certificate.yaml, with the certificate the demo registered for the app: Ready, as printed
        demo.wait_for(lambda line: "mail-reader-cert:" in line and "Ready=True" in line, timeout=60)
        # tokens of 20 s are refreshed at about 10 s: the demo prints it with the old and the new expiry
        refreshed = demo.wait_for(lambda line: "mail-reader: token refreshed" in line, timeout=60)
        old, new = re.findall(r"(\d\d:\d\d:\d\d)", refreshed.split("expires", 1)[1])[:2]
        assert new != old, refreshed
        bed_dir = Path(_export(demo.text, "KUBECONFIG")).parent
        started = _children(demo.popen.pid)
        assert len(started) >= 4, started  # etcd, kube-apiserver, kube-controller-manager, graphcred run
        demo.popen.send_signal(signal.SIGINT)
        rc = demo.popen.wait(60)
        demo.drain()
        assert rc == 0, demo.text[-3000:]
        assert "Traceback" not in demo.text, demo.text[-3000:]
        assert demo.text.rstrip().endswith("nothing left running"), demo.text[-3000:]
        assert _alive(started) == set(), demo.text[-3000:]
        assert not bed_dir.exists()
        kept = re.search(r"operator log kept: (\S+)", demo.text)
        assert kept and "graphcred started" in Path(kept.group(1)).read_text()
        Path(kept.group(1)).unlink()


def test_ctrl_c_while_the_demo_starts_stops_everything_without_a_traceback() -> None:
    with _demo() as demo:
        demo.wait_for(lambda line: line.startswith("operator: graphcred run"), timeout=240)
        bed_dir = Path(_export(demo.text, "KUBECONFIG")).parent
        started = _children(demo.popen.pid)
        assert len(started) >= 4, started
        demo.popen.send_signal(signal.SIGINT)
        rc = demo.popen.wait(60)
        demo.drain()
        assert rc == 130, demo.text[-3000:]
        assert "Traceback" not in demo.text, demo.text[-3000:]
        assert "demo interrupted (Ctrl-C); stopped everything it started" in demo.text
        assert _alive(started) == set()
        assert not bed_dir.exists()


# --- helpers ----------------------------------------------------------------------------------------------------
def _export(out: str, name: str) -> str:
    found = re.search(rf"^\s*export {name}=(\S+?)(?::\$PATH)?$", out, re.M)
    assert found, f"no `export {name}=` line in:\n{out[:3000]}"
    return found.group(1)


class _Demo:
    """A demo process whose merged output is read line by line as it comes."""

    def __init__(self, popen: subprocess.Popen[str]) -> None:
        self.popen = popen
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, wanted: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"timed out; output so far:\n{self.text[-3000:]}") from None
            if line is None:
                raise AssertionError(f"the demo ended (rc {self.popen.wait()}):\n{self.text[-3000:]}")
            self.lines.append(line)
            if wanted(line):
                return line

    def drain(self) -> None:
        self._reader.join(30)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.lines.append(line)


@contextmanager
def _demo(*args: str) -> Iterator[_Demo]:
    popen = subprocess.Popen([*DEMO, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        yield _Demo(popen)
    finally:
        if popen.poll() is None:  # a failed assertion: stop it as a user would, then for sure
            popen.send_signal(signal.SIGINT)
            try:
                popen.wait(60)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, state, start time) of a process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name, in parentheses, may hold spaces
    return int(fields[1]), fields[0], fields[19]


def _children(parent: int) -> set[tuple[int, str]]:
    """The processes `parent` started and that are running now: (pid, start time) each."""
    kids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat[0] == parent and stat[1] != "Z":
            kids.add((int(entry.name), stat[2]))
    return kids


def _alive(processes: set[tuple[int, str]]) -> set[tuple[int, str]]:
    """Those of `processes` still running (the same pid and start time: a reused pid is another process)."""
    return {(pid, start) for pid, start in processes
            if (stat := _stat(pid)) is not None and stat[2] == start and stat[1] != "Z"}


def test_helpers_tell_a_running_child_from_a_finished_one() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        kids = _children(os.getpid())
        assert any(pid == child.pid for pid, _ in kids)
        assert _alive(kids) != set()
    finally:
        child.kill()
        child.wait()
    assert not any(pid == child.pid for pid, _ in _alive(kids))
