"""A Secret volume as the kubelet writes it, for tests and the demo (there is no kubelet on the bed).

The layout and the order of steps follow the kubelet's AtomicWriter (kubernetes pkg/volume/util/atomic_writer.go,
`Write`): the data goes into a new hidden directory `..<UTC time 2006_01_02_15_04_05>.<random>`; a symlink
`..data_tmp` to it is renamed over `..data` (the atomic swap); then each key gets a user-visible symlink
`key -> ..data/key` if it has none, symlinks of keys no longer in the data are removed, and the previous
timestamped directory is removed. Writing the same data again changes nothing, as with the kubelet.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubernetes.client import V1Secret

DATA_DIR = "..data"
NEW_DATA_DIR = "..data_tmp"


class SecretVolume:
    """Writes a Secret's data into `directory` the way the kubelet updates a mounted Secret volume."""

    def __init__(self, directory: Path, *, mode: int = 0o644) -> None:
        self.directory = Path(directory)
        self.mode = mode  # a Secret volume's defaultMode
        self._random = random.Random()  # for directory names, not secrets

    def write(self, data: Mapping[str, bytes]) -> None:
        """Project `data` (key -> bytes) into the directory atomically: readers see the old set or the new one."""
        for key in data:
            _validate(key)
        self.directory.mkdir(parents=True, exist_ok=True)
        data_dir = self.directory / DATA_DIR
        old = os.readlink(data_dir) if data_dir.is_symlink() else None
        old_keys = set(os.listdir(self.directory / old)) if old else set()
        if old and old_keys == set(data) and all((self.directory / old / k).read_bytes() == v for k, v in data.items()):
            return  # the kubelet skips a write that changes nothing
        new = self._timestamped_dir()
        for key, value in data.items():
            path = new / key
            path.write_bytes(value)
            path.chmod(self.mode)  # regardless of the umask, as the kubelet does
        (self.directory / NEW_DATA_DIR).symlink_to(new.name)
        os.replace(self.directory / NEW_DATA_DIR, data_dir)  # rename(2): the atomic swap
        for key in data:
            visible = self.directory / key
            if not visible.is_symlink():
                visible.symlink_to(f"{DATA_DIR}/{key}")
        for key in old_keys - set(data):
            (self.directory / key).unlink(missing_ok=True)
        if old:
            shutil.rmtree(self.directory / old)

    def write_secret(self, secret: V1Secret | Mapping[str, Any]) -> None:
        """Project a Secret as read from the API (its `data`, base64-encoded), a V1Secret or its JSON as a dict."""
        encoded = secret.get("data") if isinstance(secret, Mapping) else secret.data
        self.write({key: base64.b64decode(value) for key, value in (encoded or {}).items()})

    def cleanup(self) -> None:
        """Remove the volume's directory, as the kubelet does when the pod goes."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> SecretVolume:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.cleanup()

    def _timestamped_dir(self) -> Path:
        # os.MkdirTemp(dir, "..2006_01_02_15_04_05.") in Go: the prefix, then a random decimal number.
        prefix = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
        while True:
            path = self.directory / f"{prefix}{self._random.randrange(1 << 32)}"
            try:
                path.mkdir()
            except FileExistsError:
                continue
            path.chmod(0o755)
            return path


def _validate(key: str) -> None:
    # A Secret's keys are [-._a-zA-Z0-9]+; the writer reserves names starting with "..".
    if not key or "/" in key or key.startswith("..") or key == ".":
        raise ValueError(f"invalid key for a Secret volume: {key!r}")
