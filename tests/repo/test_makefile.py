"""The Makefile's targets are where a newcomer starts: a bare `make` lists them, each on a line of its own."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_bare_make_lists_every_target() -> None:
    (phony,) = re.findall(r"^\.PHONY:(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    targets = set(phony.split()) - {"help"}
    listed = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(ROOT)], capture_output=True, text=True,
                            check=True, timeout=30).stdout
    named = {word.removesuffix(":") for line in listed.splitlines() for word in re.findall(r"[\w-]+:?", line)}
    assert targets <= named, sorted(targets - named)
    assert all(line.startswith("make ") for line in listed.splitlines()), listed
