"""Reading the dependency locks (requirements/*.txt, written by `make lock` with pip-compile)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "requirements"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: str) -> dict[str, str]:
    """name → version of every requirement in requirements/<lock>.txt."""
    found = {}
    for line in (LOCKS / f"{lock}.txt").read_text().splitlines():
        match = _PIN.match(line)
        if match:
            found[canonical(match.group(1))] = match.group(2)
    return found


def hashed(lock: str) -> dict[str, int]:
    """name → how many `--hash=sha256:` lines its requirement carries."""
    counts: dict[str, int] = {}
    name = None
    for line in (LOCKS / f"{lock}.txt").read_text().splitlines():
        match = _PIN.match(line)
        if match:
            name = canonical(match.group(1))
            counts[name] = 0
        elif name is not None and line.strip().startswith("--hash=sha256:"):
            counts[name] += 1
        elif not line.startswith(" "):
            name = None
    return counts


def runtime_pins() -> dict[str, str]:
    return pins("runtime")
