"""examples/ as the demo applies them: pointed at the bed's issuer (graphcred_testbed.demo.with_authority_host)."""

from __future__ import annotations

from typing import Any

import yaml

from graphcred_testbed.demo import EXAMPLES, with_authority_host


def test_the_demo_copies_point_every_credential_at_its_issuer_and_keep_the_comments() -> None:
    host = "https://127.0.0.1:4443"
    for path in sorted(EXAMPLES.glob("*.yaml")):
        text = path.read_text()
        copy = with_authority_host(text, host)
        before, after = _docs_of(text), _docs_of(copy)
        assert len(before) == len(after)
        for old, new in zip(before, after, strict=True):
            if old["kind"] == "ClusterGraphApp" or (old["kind"] == "GraphAppCredential"
                                                    and "appRef" not in old["spec"]):
                assert new["spec"] == {**old["spec"], "authorityHost": host}
            else:
                assert new == old
        kept = [line for line in text.splitlines() if line.lstrip().startswith("#")]
        assert all(line in copy.splitlines() for line in kept), path.name


def _docs_of(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]
