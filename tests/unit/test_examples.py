"""examples/ as a user applies them: to one namespace, one after another, and (in the demo) pointed at another
authority host."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from graphcred_testbed.demo import EXAMPLES, with_authority_host


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


def test_the_demo_copies_point_every_credential_at_its_issuer_and_keep_the_comments() -> None:
    host = "https://127.0.0.1:4443"
    for path in sorted(EXAMPLES.glob("*.yaml")):
        text = path.read_text()
        copy = with_authority_host(text, host)
        before, after = _docs(path), _docs_of(copy)
        assert len(before) == len(after)
        for old, new in zip(before, after, strict=True):
            if old["kind"] == "GraphAppCredential":
                assert new["spec"] == {**old["spec"], "authorityHost": host}
            else:
                assert new == old
        kept = [line for line in text.splitlines() if line.lstrip().startswith("#")]
        assert all(line in copy.splitlines() for line in kept), path.name


def _docs_of(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]
