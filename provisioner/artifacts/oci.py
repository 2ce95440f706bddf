"""OCI container images in and out of the image store, through skopeo and umoci.

skopeo copies any source an admin has (an oci-archive or docker-archive file, an OCI layout
directory, a local container engine's storage) into a private OCI layout; every layer is then
read here before anything is unpacked, and refused whole if one entry climbs out of the root,
writes through a link the same layer planted, is a device node outside /dev, is larger than
the limit or does not fit the disk, so a hostile image never reaches umoci. umoci flattens the
layers (whiteouts: a `.wh.NAME` deletes NAME below, `.wh..wh..opq` hides a directory's lower
contents) into the new version's root, resolving every path inside it. Export goes the other
way: one layer of the version's root, in an OCI image skopeo writes to the destination.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO, cast

from ..errors import UserError
from .commands import Progress, run_logged

# `image import` transports; podman:NAME is the engine's own storage, as containers-storage:NAME.
TRANSPORTS = ("oci-archive", "docker-archive", "oci", "containers-storage", "podman")
EXPORTS = ("oci-archive", "docker-archive")
_TAG = "image"
_GZIP, _ZSTD = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class Limits:
    """What one imported image may hold: a larger file is refused (no node file comes near;
    a layer that claims one is a bomb), and the whole must fit the disk with `spare` left."""

    max_file: int = 16 * 2**30
    spare: int = 2**30


LIMITS = Limits()


@dataclass(frozen=True)
class OciRef:
    """An image reference as the admin wrote it (`oci-archive:FILE`), and as skopeo reads it."""

    transport: str
    ref: str

    def __str__(self) -> str:
        return f"{self.transport}:{self.ref}"

    @property
    def skopeo(self) -> str:
        if self.transport == "podman":
            return f"containers-storage:{self.ref}"
        return str(self)

    @property
    def file(self) -> Path | None:
        """The file or directory the reference names (none for an engine's storage)."""
        if self.transport in ("containers-storage", "podman"):
            return None
        path = self.ref.split(":", 1)[0] if self.transport == "oci" else self.ref
        return Path(path)


def parse_ref(text: str, allowed: tuple[str, ...] = TRANSPORTS) -> OciRef | None:
    """The OCI reference `text` is, or None when it names no transport (a plain path)."""
    transport, sep, ref = text.partition(":")
    if not sep or transport not in TRANSPORTS:
        return None
    if transport not in allowed:
        raise UserError(f"{transport}: is not one of {', '.join(t + ':' for t in allowed)}")
    if not ref:
        raise UserError(f"{text!r} names no {'image' if transport in ('containers-storage', 'podman') else 'file'}")
    found = OciRef(transport, ref)
    if allowed == TRANSPORTS and found.file is not None and not found.file.exists():
        raise UserError(f"no such file or directory: {found.file} (from {text})")
    return found


# --- import ---------------------------------------------------------------------------------


def fetch(source: OciRef, layout: Path, progress: Progress) -> None:
    """Copy `source` into a new OCI layout at `layout` (skopeo checks every blob's digest)."""
    run_logged(
        ["skopeo", "--insecure-policy", "copy", "--quiet", source.skopeo, f"oci:{layout}:{_TAG}"],
        progress,
        f"reading {source}",
    )


def _blob(layout: Path, digest: str) -> Path:
    algo, _, hexa = digest.partition(":")
    if algo != "sha256" or not hexa.isalnum():
        raise UserError(f"bad blob digest {digest!r} in the image")
    return layout / "blobs" / algo / hexa


def manifest(layout: Path) -> tuple[str, dict[str, Any]]:
    """The digest and content of the image's manifest in the layout skopeo wrote."""
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    return digest, json.loads(_blob(layout, digest).read_text())


def _check_entry(member: tarfile.TarInfo, links: set[str], limits: Limits) -> str | None:
    """Why `member` is refused, or None."""
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        return f"{member.name!r} climbs out of the root"
    for parent in list(path.parents)[:-1]:
        if str(parent) in links:
            return f"{member.name!r} is written through the link {str(parent)!r} the same layer made"
    if member.issym():
        links.add(str(path))
    if member.islnk():
        target = PurePosixPath(member.linkname.removeprefix("./"))
        if target.is_absolute() or ".." in target.parts:
            return f"{member.name!r} is a hard link to {member.linkname!r}, outside the root"
    if (member.ischr() or member.isblk()) and path.parts[:1] != ("dev",):
        return f"{member.name!r} is a device node outside /dev"
    if member.size > limits.max_file:
        return f"{member.name!r} is {member.size} bytes, more than {limits.max_file}"
    return None


def _layer_stream(blob: Path) -> tuple[IO[bytes], subprocess.Popen[bytes] | None]:
    raw = blob.open("rb")
    magic = raw.read(4)
    raw.seek(0)
    if magic.startswith(_GZIP):
        return cast(BinaryIO, gzip.GzipFile(fileobj=raw)), None  # multi-member too, as pigz writes
    if magic == _ZSTD:
        proc = subprocess.Popen(["zstd", "-dcq"], stdin=raw, stdout=subprocess.PIPE)
        raw.close()
        assert proc.stdout is not None
        return proc.stdout, proc
    return raw, None


def check_layers(layout: Path, what: str, free_at: Path, limits: Limits = LIMITS) -> int:
    """Read every layer of the image in `layout`; raise a UserError naming the first entry
    refused (see the module's docstring). Returns the bytes the layers unpack to."""
    _, man = manifest(layout)
    total = 0
    for n, layer in enumerate(man.get("layers") or [], 1):
        where = f"{what}: layer {n} ({layer['digest'][:19]})"
        stream, proc = _layer_stream(_blob(layout, layer["digest"]))
        links: set[str] = set()
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    why = _check_entry(member, links, limits)
                    if why:
                        raise UserError(f"{where} refused: {why}")
                    total += member.size
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise UserError(f"{where} is not a readable tar archive: {e}") from None
        finally:
            stream.close()
            if proc is not None:
                proc.kill()
                proc.wait()
    free = shutil.disk_usage(free_at).free
    if total + limits.spare > free:
        raise UserError(f"{what} unpacks to {total >> 20} MiB; {free_at} has {free >> 20} MiB free")
    return total


def unpack(layout: Path, rootfs: Path, progress: Progress) -> None:
    """Flatten the image's layers into `rootfs` (which must not exist yet). Directory links of
    lower layers are kept (a layer's usr/lib/x lands in usr/lib even with lib -> usr/lib)."""
    run_logged(
        ["umoci", "raw", "unpack", "--keep-dirlinks", "--image", f"{layout}:{_TAG}", str(rootfs)],
        progress,
        "unpacking the layers",
    )


def import_root(source: OciRef, work: Path, rootfs: Path, progress: Progress, limits: Limits = LIMITS) -> str:
    """Fetch, check and flatten `source` into `rootfs` (made here), using `work` for the
    layout; returns the manifest digest."""
    layout = work / "oci-layout"
    progress(f"reading {source}")
    fetch(source, layout, progress)
    digest, _ = manifest(layout)
    size = check_layers(layout, str(source), work, limits)
    progress(f"{source}: {digest[:19]}, {size >> 20} MiB in its layers")
    unpack(layout, rootfs, progress)
    shutil.rmtree(layout)
    return digest


# --- export ---------------------------------------------------------------------------------


def export_root(rootfs: Path, dest: OciRef, work: Path, progress: Progress, config: dict[str, str]) -> None:
    """Write `rootfs` as a one-layer OCI image to `dest` (an archive file, replaced only once
    whole); `config` becomes the image's labels (where it came from)."""
    target = dest.file
    assert target is not None
    layout, layer = work / "layout", work / "layer.tar"
    run_logged(["umoci", "init", "--layout", str(layout)], progress, "making an OCI layout")
    run_logged(["umoci", "new", "--image", f"{layout}:{_TAG}"], progress, "making an OCI image")
    progress(f"archiving {rootfs}")
    run_logged(["tar", "-cpf", str(layer), "--numeric-owner", "--xattrs", "-C", str(rootfs), "."], progress, "tar")
    run_logged(
        ["umoci", "raw", "add-layer", "--image", f"{layout}:{_TAG}", str(layer)], progress, "adding the root layer"
    )
    labels = [a for k, v in sorted(config.items()) for a in ("--config.label", f"{k}={v}")]
    run_logged(["umoci", "config", "--image", f"{layout}:{_TAG}", *labels], progress, "labelling the image")
    layer.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        run_logged(
            ["skopeo", "--insecure-policy", "copy", "--quiet", f"oci:{layout}:{_TAG}", f"{dest.transport}:{tmp}"],
            progress,
            f"writing {dest}",
        )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
