"""examples/ as a user applies them: to one namespace, one after another."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from graphcred_testbed.demo import EXAMPLES


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_no_two_examples_declare_the_same_object() -> None:
    """Applied to one namespace, a second example with a taken name would silently replace the first (two files
    once both declared GraphAppCredential mail-reader: workload identity quietly replaced the client secret)."""
    seen = Counter((d["kind"], d["metadata"]["name"])
                   for path in sorted(EXAMPLES.glob("*.yaml")) for d in _docs(path))
    assert [key for key, n in seen.items() if n > 1] == []


def test_no_two_example_credentials_write_the_same_token_secret() -> None:
    """Two credentials naming one token Secret: the second gets SecretConflict in the namespace of the first."""
    names = [d["spec"].get("secretName") or f"{d['metadata']['name']}-token"
             for path in sorted(EXAMPLES.glob("*.yaml")) for d in _docs(path) if d["kind"] == "GraphAppCredential"]
    assert len(names) == len(set(names)), names
