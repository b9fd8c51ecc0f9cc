"""The RunConfig `graphcred run ARGV` would start the operator with, parsed by the real CLI (the runner stubbed)."""

from __future__ import annotations

import pytest

from graphcred.cli import main
from graphcred.config import RunConfig


def run_config(monkeypatch: pytest.MonkeyPatch, *argv: str) -> RunConfig:
    seen: list[RunConfig] = []

    def run(cfg: RunConfig) -> int:
        seen.append(cfg)
        return 0

    monkeypatch.setattr("graphcred.runner.run", run)
    assert main(["run", *argv]) == 0
    return seen[0]
