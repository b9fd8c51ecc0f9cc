"""SecretVolume: the layout the kubelet's AtomicWriter produces."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pytest
from kubernetes import client

from graphcred_testbed.volume import SecretVolume

TIMESTAMPED = re.compile(r"^\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.\d+$")


def _hidden(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if TIMESTAMPED.match(n))


def test_layout_swap_and_cleanup(tmp_path: Path) -> None:
    directory = tmp_path / "vol"
    volume = SecretVolume(directory)
    volume.write({"a": b"1", "b": b"2"})
    (first,) = _hidden(directory)
    assert os.readlink(directory / "..data") == first
    assert os.readlink(directory / "a") == "../data/a".replace("../", "..")  # a -> ..data/a
    assert (directory / "a").read_bytes() == b"1" and (directory / first / "b").stat().st_mode & 0o777 == 0o644
    assert not (directory / "..data_tmp").exists()

    volume.write({"a": b"1", "b": b"2"})  # the same data: nothing happens
    assert _hidden(directory) == [first]

    volume.write({"a": b"3"})  # a key dropped, a value changed
    (second,) = _hidden(directory)
    assert second != first and os.readlink(directory / "..data") == second
    assert (directory / "a").read_bytes() == b"3"
    assert not (directory / "b").is_symlink()  # the dropped key's link is gone
    assert sorted(os.listdir(directory)) == sorted(["..data", "a", second])

    volume.cleanup()
    assert not directory.exists()


def test_write_secret_decodes_api_data(tmp_path: Path) -> None:
    encoded = {"access_token": base64.b64encode(b"t0k").decode(), "expires_on": base64.b64encode(b"x").decode()}
    volume = SecretVolume(tmp_path / "v")
    volume.write_secret(client.V1Secret(data=encoded))
    assert (tmp_path / "v" / "access_token").read_bytes() == b"t0k"
    changed = {**encoded, "access_token": base64.b64encode(b"new").decode()}
    volume.write_secret({"metadata": {"name": "n"}, "data": changed})
    assert (tmp_path / "v" / "access_token").read_bytes() == b"new"


@pytest.mark.parametrize("key", ["..data", "a/b", ""])
def test_reserved_and_nested_keys_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="invalid key"):
        SecretVolume(tmp_path).write({key: b"x"})
