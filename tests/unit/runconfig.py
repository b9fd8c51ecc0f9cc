"""The RunConfig `graphcred run ARGV` would start the operator with, parsed by the real CLI (the runner stubbed)."""

from __future__ import annotations

import pytest

from graphcred.app.cli import main
from graphcred.app.config import RunConfig


def run_config(monkeypatch: pytest.MonkeyPatch, *argv: str) -> RunConfig:
    seen: list[RunConfig] = []

    def run(cfg: RunConfig) -> int:
        seen.append(cfg)
        return 0

    monkeypatch.setattr("graphcred.app.runner.run", run)
    assert main(["run", *argv]) == 0
    return seen[0]
