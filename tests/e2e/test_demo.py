"""The README's first command, `python -m graphcred_testbed demo`, run as a user runs it: its own bed, the operator,
the example credential Ready, and the example daemon's Graph call listing users through the token Secret."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.bed


def test_the_demo_ends_with_a_graph_call_through_a_fresh_token() -> None:
    run = subprocess.run([sys.executable, "-m", "graphcred_testbed", "demo"], capture_output=True, text=True,
                         timeout=240, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "Ready after" in out
    daemon = [line for line in out.splitlines() if "GET /users ->" in line]
    assert len(daemon) == 1 and "Adele Vance" in daemon[0], out[-3000:]
    assert "nothing left running" in out
