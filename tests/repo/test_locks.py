"""The locks are installed as written, resolving nothing (scripts/install-lock.sh, the Dockerfile): pip from its own
pin first, then each lock with --no-deps. That is only safe if every lock is complete, and it must work with the
oldest pip the README allows (22.3, bundled with Python 3.11.0): a pip before 23.3 resolving a locked dependency's
extra (`httpx[http2]`) took the newest httpx from the index and failed --require-hashes on a fresh machine."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from ..locks import LOCKS, ROOT, canonical, hashed, pins

OLDEST_PIP = "22.3"  # README: "Python 3.11+ with the pip it bundles"; 3.11.0 bundles 22.3


def _roots(pyproject: Path, *extras: str) -> list[Requirement]:
    project = tomllib.loads(pyproject.read_text())["project"]
    found = [Requirement(r) for r in project.get("dependencies", [])]
    for extra in extras:
        found += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return found


def _missing_from(lock: str, roots: list[Requirement]) -> set[str]:
    """What the roots need, transitively (extras and environment markers evaluated here), that the lock lacks.
    Read from the installed distributions' metadata: the dev venv holds every lock's pins (tested below)."""
    locked = pins(lock)
    missing: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(canonical(r.name), frozenset(r.extras)) for r in roots if r.marker is None or r.marker.evaluate()]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        if name not in locked:
            missing.add(name)
            continue
        for text in importlib.metadata.distribution(name).requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ({""} | extras)):
                todo.append((canonical(req.name), frozenset(req.extras)))
    return missing


def test_pip_is_pinned_with_hashes_as_the_dev_lock_pins_it() -> None:
    assert pins("pip") == {"pip": pins("dev")["pip"]}
    assert hashed("pip")["pip"] > 0


def test_every_lock_holds_everything_its_packages_need() -> None:
    assert _missing_from("runtime", _roots(ROOT / "pyproject.toml")) == set()
    assert _missing_from("build", [Requirement("setuptools")]) == set()
    dev_roots = (_roots(ROOT / "pyproject.toml", "dev") + _roots(ROOT / "testbed" / "pyproject.toml")
                 + _roots(ROOT / "clients" / "python" / "pyproject.toml") + [Requirement("setuptools")])
    assert _missing_from("dev", dev_roots) == set()
    # the check can fail: a lock without httpx's http2 extra's h2 (what msgraph-sdk's kiota asks for) is caught
    assert _missing_from("runtime", [Requirement("httpx[http2]")]) >= {"httpx"}


@pytest.mark.timeout(900)  # about 70 s on a quiet machine, from the pip cache; far longer on a loaded one
def test_a_fresh_venv_with_the_oldest_pip_installs_the_dev_lock_exactly(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    python = str(venv / "bin" / "python")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PIP_REQUIRE_VIRTUALENV", None)
    env.pop("PYTHONPATH", None)  # a source tree on it (operator/ with a wheel build's egg-info) is not in the lock
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([python, "-m", "pip", "install", "-q", f"pip=={OLDEST_PIP}"], check=True, timeout=300, env=env)
    before = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, text=True, check=True)
    assert before.stdout.startswith(f"pip {OLDEST_PIP} ")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "install-lock.sh"), python, str(LOCKS / "dev.txt")],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stdout
    listed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                            check=True, env=env).stdout
    installed = {canonical(n): v for n, v in (line.split("==") for line in listed.splitlines() if "==" in line)}
    assert installed == pins("dev")
