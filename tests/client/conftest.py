from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from graphcred_testbed.volume import SecretVolume

from .tokens import Mount


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mount]:
    directory = tmp_path / "graphcred"
    with SecretVolume(directory) as volume:
        yield Mount(directory, volume)
