"""OCI image layouts written by hand: the layers (whiteouts, hostile entries) no builder makes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any


def tar_layer(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for info, data in entries:
            info.size = len(data) if info.isreg() else 0
            t.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def entry(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, **kw: Any) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode = kind, 0o755 if kind == tarfile.DIRTYPE else 0o644
    for k, v in kw.items():
        setattr(info, k, v)
    return info, data


def _sha256(layer: bytes | Path) -> str:
    if isinstance(layer, bytes):
        return hashlib.sha256(layer).hexdigest()
    h = hashlib.sha256()
    with layer.open("rb") as f:
        while chunk := f.read(2**20):
            h.update(chunk)
    return h.hexdigest()


def oci_dir(dest: Path, layers: list[bytes | Path], tag: str = "t") -> Path:
    """An OCI image layout at `dest` holding one image (`tag`) of these uncompressed layers
    (bytes, or a tarball on this filesystem, linked in rather than copied)."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes | Path, media: str) -> dict[str, Any]:
        digest = _sha256(data)
        if isinstance(data, bytes):
            (blobs / digest).write_bytes(data)
        elif not (blobs / digest).exists():
            try:
                os.link(data, blobs / digest)
            except OSError:  # another filesystem
                shutil.copyfile(data, blobs / digest)
        size = len(data) if isinstance(data, bytes) else data.stat().st_size
        return {"mediaType": media, "digest": f"sha256:{digest}", "size": size}

    diff_ids = [f"sha256:{_sha256(b)}" for b in layers]
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    manifest = {
        "schemaVersion": 2,
        "config": blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"),
        "layers": [blob(b, "application/vnd.oci.image.layer.v1.tar") for b in layers],
    }
    desc = blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))
    return dest
