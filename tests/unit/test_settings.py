"""`graphcred run`'s settings (settings.py, cli.py, runner.py): every flag and GRAPHCRED_* variable parsed and checked
once, before anything starts. A bad value is one line naming the flag or variable, the value and what is allowed,
and exit code 2; no traceback, and no other command is affected by a variable that belongs to `run`."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from graphcred.app import config, runner
from graphcred.app.cli import main
from graphcred.app.config import RunConfig
from graphcred.app.settings import RunSettings, SettingsError, load

from .runconfig import run_config

DURATION = "expected seconds or a duration such as 30s, 1m30s or 500ms"
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: not-a-real-token}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GRAPHCRED_") or name in ("KUBECONFIG", "POD_NAMESPACE"):
            monkeypatch.delenv(name)


def _refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """What `graphcred run ARGV` says before refusing to start (SystemExit 2): one line, nothing started."""
    monkeypatch.setattr("graphcred.app.runner.run", lambda cfg: pytest.fail("started despite a bad setting"))
    with pytest.raises(SystemExit) as exited:
        main(["run", *argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.endswith("\n")
    return err


# --- every bad value of the review, from the environment and from the flag ----------------------------------------
@pytest.mark.parametrize(("variable", "value", "line"), [
    ("GRAPHCRED_LEASE_DURATION", "15x", f"GRAPHCRED_LEASE_DURATION='15x': {DURATION}"),
    ("GRAPHCRED_LEASE_DURATION", "0", f"GRAPHCRED_LEASE_DURATION='0': {DURATION}, from 1s to 1h"),
    ("GRAPHCRED_TOKEN_CONCURRENCY", "abc",
     "GRAPHCRED_TOKEN_CONCURRENCY='abc': expected a whole number from 1 to 1024"),
    ("GRAPHCRED_TOKEN_CONCURRENCY", "0", "GRAPHCRED_TOKEN_CONCURRENCY='0': expected a whole number from 1 to 1024"),
    ("GRAPHCRED_TOKEN_TIMEOUT", "0", f"GRAPHCRED_TOKEN_TIMEOUT='0': {DURATION}, more than 0 and at most 1h"),
    ("GRAPHCRED_TOKEN_TIMEOUT", "-1s", f"GRAPHCRED_TOKEN_TIMEOUT='-1s': {DURATION}"),
    ("GRAPHCRED_API_TIMEOUT", "30x", f"GRAPHCRED_API_TIMEOUT='30x': {DURATION}"),
    ("GRAPHCRED_METRICS_PORT", "http",
     "GRAPHCRED_METRICS_PORT='http': expected a port number from 0 (any free port) to 65535, or -1 for none"),
    ("GRAPHCRED_METRICS_PORT", "99999",
     "GRAPHCRED_METRICS_PORT='99999': expected a port number from 0 (any free port) to 65535, or -1 for none"),
    ("GRAPHCRED_LOG_LEVEL", "trace", "GRAPHCRED_LOG_LEVEL='trace': expected DEBUG, INFO, WARNING or ERROR"),
    ("GRAPHCRED_LOG_FORMAT", "yaml", "GRAPHCRED_LOG_FORMAT='yaml': expected text or json"),
    ("GRAPHCRED_WORKLOAD_IDENTITY", "on",
     "GRAPHCRED_WORKLOAD_IDENTITY='on': expected true or false (also 1/0, t/f, yes/no)"),
    ("GRAPHCRED_LEADER_ELECTION", "enabled",
     "GRAPHCRED_LEADER_ELECTION='enabled': expected true or false (also 1/0, t/f, yes/no)"),
    ("GRAPHCRED_WATCH_CONSUMERS", "y",
     "GRAPHCRED_WATCH_CONSUMERS='y': expected true or false (also 1/0, t/f, yes/no)"),
    ("GRAPHCRED_NAMESPACES", "team-a,Team_B",
     "GRAPHCRED_NAMESPACES='team-a,Team_B': 'Team_B' is not a namespace name (lower-case letters, digits and '-', "
     "at most 63; several: comma-separated or the flag repeated)"),
    ("GRAPHCRED_LEADER_ELECTION_NAMESPACE", "Kube System",
     "GRAPHCRED_LEADER_ELECTION_NAMESPACE='Kube System': expected a namespace name (lower-case letters, digits and "
     "'-', at most 63)"),
    ("GRAPHCRED_WORKLOAD_IDENTITY_AUTHORITIES", "http://x",
     "GRAPHCRED_WORKLOAD_IDENTITY_AUTHORITIES='http://x': 'http://x' is not an authority host: expected "
     "https://host[:port]"),
    ("GRAPHCRED_AUTHORITY_HOSTS", "https://ok.example,login.example",
     "GRAPHCRED_AUTHORITY_HOSTS='https://ok.example,login.example': 'login.example' is not an authority host: "
     "expected https://host[:port]"),
    ("GRAPHCRED_CA_BUNDLE", "/nonexistent/ca.pem", "GRAPHCRED_CA_BUNDLE='/nonexistent/ca.pem': no such file"),
    ("GRAPHCRED_KUBECONFIG", "/nonexistent/kubeconfig",
     "GRAPHCRED_KUBECONFIG='/nonexistent/kubeconfig': no such file"),
    ("KUBECONFIG", "/nonexistent/kubeconfig", "KUBECONFIG='/nonexistent/kubeconfig': no such file"),
])
def test_a_bad_variable_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                              variable: str, value: str, line: str) -> None:
    monkeypatch.setenv(variable, value)
    assert _refused(monkeypatch, capsys) == f"graphcred run: error: {line}\n"


@pytest.mark.parametrize(("argv", "line"), [
    (["--token-concurrency", "0"], "--token-concurrency='0': expected a whole number from 1 to 1024"),
    (["--token-concurrency", "-3"], "--token-concurrency='-3': expected a whole number from 1 to 1024"),
    (["--token-timeout", "0"], f"--token-timeout='0': {DURATION}, more than 0 and at most 1h"),
    (["--api-timeout", "0s"], f"--api-timeout='0s': {DURATION}, more than 0 and at most 1h"),
    (["--lease-duration", "0"], f"--lease-duration='0': {DURATION}, from 1s to 1h"),
    (["--lease-duration", "15x"], f"--lease-duration='15x': {DURATION}"),
    (["--metrics-port", "99999"],
     "--metrics-port='99999': expected a port number from 0 (any free port) to 65535, or -1 for none"),
    (["-n", "team-a,team_b"], "--namespace='team-a,team_b': 'team_b' is not a namespace name (lower-case letters, "
     "digits and '-', at most 63; several: comma-separated or the flag repeated)"),
    (["--ca-bundle", "/nonexistent/ca.pem"], "--ca-bundle='/nonexistent/ca.pem': no such file"),
    (["--kubeconfig", "/nonexistent/kc"], "--kubeconfig='/nonexistent/kc': no such file"),
    (["--authority-host", "https://x.example/tenant"],
     "--authority-host='https://x.example/tenant': 'https://x.example/tenant' is not an authority host: expected "
     "https://host[:port]"),
])
def test_a_bad_flag_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                          argv: list[str], line: str) -> None:
    assert _refused(monkeypatch, capsys, *argv) == f"graphcred run: error: {line}\n"


def test_a_ca_bundle_without_a_certificate_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate\n")
    assert _refused(monkeypatch, capsys, f"--ca-bundle={bundle}") == (
        f"graphcred run: error: --ca-bundle='{bundle}': holds no PEM certificate (expected a PEM file of CA "
        "certificates)\n")


def test_each_bad_setting_gets_its_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GRAPHCRED_API_TIMEOUT", "30x")
    err = _refused(monkeypatch, capsys, "--metrics-port=http")
    assert err.splitlines() == [
        f"graphcred run: error: GRAPHCRED_API_TIMEOUT='30x': {DURATION}",
        "graphcred run: error: --metrics-port='http': expected a port number from 0 (any free port) to 65535, or "
        "-1 for none"]


# --- what is accepted ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "seconds"), [("15", 15.0), ("15s", 15.0), ("1.5", 1.5), ("1m30s", 90.0),
                                                 ("2m", 120.0), ("1500ms", 1.5)])
def test_every_time_setting_takes_seconds_or_a_duration(monkeypatch: pytest.MonkeyPatch, value: str,
                                                        seconds: float) -> None:
    monkeypatch.setenv("GRAPHCRED_LEASE_DURATION", value)
    monkeypatch.setenv("GRAPHCRED_TOKEN_TIMEOUT", value)
    cfg = run_config(monkeypatch, f"--api-timeout={value}")
    assert (cfg.lease_seconds, cfg.token_timeout, cfg.api_timeout) == (seconds, seconds, seconds)


@pytest.mark.parametrize(("value", "expected"), [
    *[(v, True) for v in ("1", "t", "T", "TRUE", "true", "True", "yes", "YES")],
    *[(v, False) for v in ("0", "f", "F", "FALSE", "false", "False", "no", "")],
])
def test_switches_read_as_kubernetes_tools_read_them(monkeypatch: pytest.MonkeyPatch, value: str,
                                                     expected: bool) -> None:
    for name in ("WORKLOAD_IDENTITY", "LEADER_ELECTION", "WATCH_CONSUMERS"):
        monkeypatch.setenv(f"GRAPHCRED_{name}", value)
    cfg = run_config(monkeypatch)
    assert (cfg.workload_identity, cfg.leader_election, cfg.watch_consumers) == (expected,) * 3


def test_namespaces_split_on_commas_from_flag_or_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_config(monkeypatch, "-n", "team-a,team-b").namespaces == ("team-a", "team-b")
    assert run_config(monkeypatch, "-n", "team-a", "--namespace", "team-b, team-c").namespaces == (
        "team-a", "team-b", "team-c")
    monkeypatch.setenv("GRAPHCRED_NAMESPACES", "x, y,,x")
    assert run_config(monkeypatch).namespaces == ("x", "y")
    assert run_config(monkeypatch, "-n", "z").namespaces == ("z",), "the flag wins over the variable"
    monkeypatch.setenv("GRAPHCRED_NAMESPACES", "")  # the chart's "all namespaces"
    assert run_config(monkeypatch).namespaces == ()


def test_the_chart_environment_reads_as_before(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The variables as charts/graphcred/templates/deployment.yaml renders them with its defaults."""
    for name, value in {"NAMESPACES": "", "LOG_FORMAT": "json", "LOG_LEVEL": "info", "TOKEN_CONCURRENCY": "16",
                        "TOKEN_TIMEOUT": "30", "API_TIMEOUT": "30", "METRICS_PORT": "8080", "LEADER_ELECTION": "true",
                        "LEASE_DURATION": "15", "WORKLOAD_IDENTITY": "false", "WATCH_CONSUMERS": "false"}.items():
        monkeypatch.setenv(f"GRAPHCRED_{name}", value)
    monkeypatch.setenv("POD_NAMESPACE", "graphcred-system")
    assert run_config(monkeypatch) == RunConfig(log_format="json", log_level="INFO", leader_election=True,
                                             leader_election_namespace="graphcred-system")


def test_authority_hosts_from_flags_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAPHCRED_AUTHORITY_HOSTS", "https://Login.Example.net/, https://b.example:8443")
    assert run_config(monkeypatch).authority_hosts == ("https://login.example.net", "https://b.example:8443")
    assert run_config(monkeypatch, "--authority-host=https://c.example", "--authority-host",
                   "https://d.example").authority_hosts == ("https://c.example", "https://d.example")


def test_the_defaults_are_the_run_configs() -> None:
    assert load({}).to_config() == RunConfig()
    assert RunSettings.model_fields["lease_duration"].default == RunConfig().lease_seconds


def test_load_raises_one_line_per_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAPHCRED_TOKEN_CONCURRENCY", "many")
    with pytest.raises(SettingsError) as refused:
        load({"lease_duration": "soon"})
    assert refused.value.lines == ["GRAPHCRED_TOKEN_CONCURRENCY='many': expected a whole number from 1 to 1024",
                                   f"--lease-duration='soon': {DURATION}"]


# --- as a user runs it: a child process ---------------------------------------------------------------------------
def _graphcred(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GRAPHCRED_") and k != "KUBECONFIG"}
    return subprocess.run([sys.executable, "-m", "graphcred", *args], capture_output=True, text=True, timeout=60,
                          env={**environ, **(env or {})}, check=False)


@pytest.mark.parametrize("args", [["--version"], ["crd"], ["version", "--client"], ["completion", "bash"]])
def test_a_bad_run_variable_does_not_touch_other_commands(args: list[str]) -> None:
    """Before: GRAPHCRED_LEASE_DURATION=15s made every command a traceback, even --version."""
    done = _graphcred(*args, env={"GRAPHCRED_LEASE_DURATION": "15s x", "GRAPHCRED_TOKEN_CONCURRENCY": "abc",
                                  "GRAPHCRED_METRICS_PORT": "http", "GRAPHCRED_LOG_LEVEL": "trace"})
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize(("args", "env", "line"), [
    (["run"], {"GRAPHCRED_LEASE_DURATION": "15x"}, f"GRAPHCRED_LEASE_DURATION='15x': {DURATION}"),
    (["run"], {"GRAPHCRED_TOKEN_CONCURRENCY": "abc"},
     "GRAPHCRED_TOKEN_CONCURRENCY='abc': expected a whole number from 1 to 1024"),
    (["run", "--metrics-port", "99999"], {},
     "--metrics-port='99999': expected a port number from 0 (any free port) to 65535, or -1 for none"),
    (["run", "--ca-bundle", "/nonexistent/ca.pem"], {}, "--ca-bundle='/nonexistent/ca.pem': no such file"),
])
def test_a_bad_setting_ends_the_process_with_one_line(args: list[str], env: dict[str, str], line: str) -> None:
    done = _graphcred(*args, env=env)
    assert (done.returncode, done.stderr, done.stdout) == (2, f"graphcred run: error: {line}\n", "")


# --- start-up failures that only trying shows ---------------------------------------------------------------------
def test_a_malformed_kubeconfig_ends_the_start_naming_the_file(tmp_path: Path) -> None:
    """Before: kopf's start-up activity retried every 60 s with the parser's message and no path."""
    bad = tmp_path / "bad.kubeconfig"
    bad.write_text("garbage: [\n")
    done = _graphcred("run", f"--kubeconfig={bad}", "--metrics-port=-1")
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (f"graphcred run: error: kubeconfig {bad}: not valid YAML: expected the "
                                            "node content, but found '<stream end>' at line 2, column 1")


def test_a_kubeconfig_without_a_context_ends_the_start_naming_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.kubeconfig"
    empty.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    done = _graphcred("run", f"--kubeconfig={empty}", "--leader-election", "--metrics-port=-1")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (f"graphcred run: error: kubeconfig {empty}: Expected key current-context "
                                            f"in {empty}")


def test_a_metrics_port_in_use_ends_the_start_naming_it(tmp_path: Path) -> None:
    """Before: a traceback ending in OSError: [Errno 98] Address already in use."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _graphcred("run", f"--kubeconfig={kubeconfig}", f"--metrics-port={port}")
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (f"graphcred run: error: --metrics-port {port} (GRAPHCRED_METRICS_PORT): "
                                            "cannot listen there: address already in use (another port, 0 for any "
                                            "free one, or -1 for none)")


def test_the_cause_goes_to_the_termination_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """In a pod the kubelet shows /dev/termination-log as the container's last state."""
    log = tmp_path / "termination-log"
    log.touch()
    monkeypatch.setattr(config, "TERMINATION_LOG", log)
    bad = tmp_path / "bad.kubeconfig"
    bad.write_text("- not a mapping\n")
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # run() configures logging for this test's stderr: undone after it
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setenv("KUBECONFIG", "")  # run() exports --kubeconfig for kopf: undone after the test
    terminate = signal.getsignal(signal.SIGTERM)
    try:
        assert runner.run(RunConfig(kubeconfig=str(bad), metrics_port=-1)) == 2
    finally:
        signal.signal(signal.SIGTERM, terminate)
    said = capsys.readouterr().err
    assert said.startswith(f"graphcred run: error: kubeconfig {bad}: ") and log.read_text() == said


def test_a_bad_setting_goes_to_the_termination_log_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "termination-log"
    log.touch()
    monkeypatch.setattr(config, "TERMINATION_LOG", log)
    monkeypatch.setenv("GRAPHCRED_LEASE_DURATION", "15x")
    assert log.read_text() == ""
    said = _refused(monkeypatch, capsys)
    assert log.read_text() == said == f"graphcred run: error: GRAPHCRED_LEASE_DURATION='15x': {DURATION}\n"
