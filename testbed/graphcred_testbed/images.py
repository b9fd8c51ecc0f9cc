"""OCI image archives written from local files, with no registry: the node's pause (sandbox) image and a tiny
busybox image for test pods. `ctr images import` reads the result (an OCI image layout in a tar)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: one static binary, every applet by name
BUSYBOX_APPLETS = ("sh", "cat", "echo", "printf", "grep", "sleep", "date", "ls", "httpd", "nc", "tail", "test")


@dataclass
class ImageSpec:
    """An image of one layer: `files` maps a path inside the image to a file on this machine (kept executable),
    `links` maps a path to a symlink target."""

    name: str  # e.g. graphcred.local/pause:1
    files: dict[str, Path]
    entrypoint: list[str]
    cmd: list[str] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)
    env: list[str] = field(default_factory=lambda: ["PATH=/bin"])


def _layer(spec: ImageSpec) -> bytes:
    buf = io.BytesIO()
    # fixed mtimes and owners: the same inputs give the same digest, so re-imports are no-ops
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(p).parent) for p in (*spec.files, *spec.links)} - {"/", "."})
        for directory in dirs:
            info = tarfile.TarInfo(directory.lstrip("/"))
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path, source in sorted(spec.files.items()):
            data = source.read_bytes()
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        for path, target in sorted(spec.links.items()):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            tar.addfile(info)
    return buf.getvalue()


def _blob(tar: tarfile.TarFile, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))
    return f"sha256:{digest}"


def write_oci_archive(spec: ImageSpec, out: Path) -> Path:
    """Write `spec` as an OCI image layout tar at `out` (linux/amd64, one uncompressed layer)."""
    layer = _layer(spec)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": spec.entrypoint, "Cmd": spec.cmd or None, "Env": spec.env},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]},
    }).encode()
    with tarfile.open(out, "w") as tar:
        config_digest = _blob(tar, config)
        layer_digest = _blob(tar, layer)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                       "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                        "size": len(layer)}],
        }).encode()
        manifest_digest = _blob(tar, manifest)
        index = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
                "size": len(manifest), "platform": {"architecture": "amd64", "os": "linux"},
                # containerd names an imported image by this annotation (the full reference)
                "annotations": {"io.containerd.image.name": spec.name,
                                "org.opencontainers.image.ref.name": spec.name.rsplit(":", 1)[-1]},
            }],
        }).encode()
        for name, data in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out


def pause_image(pause_binary: Path, name: str = "graphcred.local/pause:1") -> ImageSpec:
    return ImageSpec(name=name, files={"/pause": pause_binary}, entrypoint=["/pause"])


def busybox_image(name: str = "graphcred.local/busybox:1") -> ImageSpec:
    if not BUSYBOX.exists():
        raise RuntimeError(f"{BUSYBOX} not found: install Debian's busybox-static")
    return ImageSpec(name=name, files={"/bin/busybox": BUSYBOX}, entrypoint=["/bin/sh"],
                     links={f"/bin/{applet}": "busybox" for applet in BUSYBOX_APPLETS})
