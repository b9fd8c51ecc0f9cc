"""No Docker engine here: run the Dockerfile's own install steps into a fresh directory, then start its
entrypoint from there (configured by environment, as the chart does) against the bed."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from graphcred_testbed.cluster import Process

from ..helpers import Env
from ..locks import canonical, runtime_pins

pytestmark = pytest.mark.bed

ROOT = Path(__file__).resolve().parents[2]


def _dockerfile() -> tuple[list[str], list[str], list[str]]:
    """The build stage's COPY sources and RUN commands, and the final ENTRYPOINT + CMD."""
    text = (ROOT / "Dockerfile").read_text()
    build = text.split("FROM ")[1]  # the first stage
    final = text.split("FROM ")[-1]
    copies = [src for line in build.splitlines() if line.startswith("COPY ")
              for src in line.split()[1:-1]]
    runs = [line[4:] for line in build.splitlines() if line.startswith("RUN ")]
    entry = eval(re.search(r"^ENTRYPOINT (.*)$", final, re.M).group(1))  # type: ignore[union-attr]
    cmd = eval(re.search(r"^CMD (.*)$", final, re.M).group(1))  # type: ignore[union-attr]
    assert "USER 65532:65532" in final and "pip" not in final.replace("# ", ""), "final stage: non-root, no pip"
    return copies, runs, entry + cmd


def test_dockerfile_install_steps_give_a_working_operator(env: Env, tmp_path: Path) -> None:
    copies, runs, argv = _dockerfile()
    src, prefix = tmp_path / "src", tmp_path / "install"
    src.mkdir()
    for item in copies:
        path = ROOT / item
        if path.is_dir():
            shutil.copytree(path, src / item, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            (src / item).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, src / item)
    # a clean builder Python, like the image's build stage (pip must not see this test run's environment)
    builder = tmp_path / "builder"
    subprocess.run([sys.executable, "-m", "venv", str(builder)], check=True, timeout=120)
    for run in runs:
        command = run.replace("/install", str(prefix)).replace("/src", str(src))
        words = shlex.split(command)
        if words[0] == "pip":
            words = [str(builder / "bin" / "python"), "-m", "pip", *words[1:], "--quiet"]
        subprocess.run(words, cwd=src, check=True, timeout=600)
    site = next(prefix.glob("lib/python3*/site-packages"))
    installed = {"PYTHONPATH": str(site), "PATH": f"{prefix / 'bin'}:{os.environ['PATH']}"}
    where = subprocess.run([sys.executable, "-c", "import graphcred, os; print(os.path.dirname(graphcred.__file__))"],
                           env={**os.environ, **installed}, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(site)), where.stdout
    assert not list(site.glob("graphcred_testbed*")), "the test bed is not shipped"
    # the image holds exactly the locked runtime versions (and graphcred itself)
    shipped = {canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions(path=[str(site)])}
    assert shipped == {**runtime_pins(), "graphcred": "0.1.0"}
    # the entrypoint, configured as the chart configures it: by environment variables
    env.operator.stop()
    process = Process("graphcred-image", [str(prefix / "bin" / argv[0]), *argv[1:]], tmp_path)
    chart_env = {"GRAPHCRED_KUBECONFIG": str(env.bed.kubeconfig), "GRAPHCRED_CA_BUNDLE": str(env.bed.issuer_ca_file),
                 "GRAPHCRED_LOG_FORMAT": "json", "GRAPHCRED_METRICS_PORT": "0", "GRAPHCRED_LEADER_ELECTION": "true",
                 "GRAPHCRED_AUTHORITY_HOSTS": env.bed.authority_host,  # a private authority: the chart's authorityHosts
                 "POD_NAMESPACE": env.namespace, "POD_NAME": "graphcred-image-0"}
    saved = dict(os.environ)
    os.environ.update({**installed, **chart_env})
    try:
        process.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        app = env.secret_app("image", secret_name="cred")
        env.create("image", app, {"clientSecret": {"name": "cred"}})
        env.wait_ready("image", timeout=60)
        assert '"became leader' in process.logfile.read_text()
    finally:
        process.stop()
        env.operator.start()
