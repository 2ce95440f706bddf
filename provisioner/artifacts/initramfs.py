"""The native initramfs builder (Debian has no mkinitcpio): busybox-static, the image's own
NIC/NFS/overlay modules with their dependencies, and the initcpio/ runtime script, as a
newc cpio. Same inputs give the same bytes, so a rebuild that changes nothing changes no file.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..atomic import atomic_write
from ..errors import UserError
from ..inroot import Root
from ..paths import State
from ..resources import INITCPIO
from . import cpio, layout
from .kmod import MissingModules, load_index, read_module

BUSYBOX = Path("/bin/busybox")

# What a diskless boot cannot do without: the NFS client and overlayfs.
REQUIRED_MODULES = ["nfsv4", "nfsv3", "overlay"]
# Common server and virtual NICs; those this kernel lacks are left out.
NIC_MODULES = [
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "ice",
    "bnxt_en",
    "tg3",
    "r8169",
    "virtio_net",
    "virtio_pci",
    "vmxnet3",
]

COMPRESSIONS = ("gzip", "zstd")
_KVER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}")


@dataclass(frozen=True)
class InitramfsSpec:
    rootfs: Path
    kver: str
    compression: str = "gzip"
    extra_modules: tuple[str, ...] = ()
    nic_modules: tuple[str, ...] = field(default=tuple(NIC_MODULES))
    busybox: Path = BUSYBOX


def kernel_versions(rootfs: Path) -> list[str]:
    """Kernel versions with a /boot/vmlinuz-VERSION in the image, oldest first. A VERSION is a
    path component in the image and in the initramfs, so only plain ones count (not `..`)."""
    image = Root(rootfs)
    names = image.listdir("boot") if image.is_dir("boot") else []
    found = (n[len("vmlinuz-") :] for n in names if n.startswith("vmlinuz-"))
    return sorted((v for v in found if _KVER.fullmatch(v)), key=_version_key)


def _version_key(v: str) -> list[tuple[int, int, str]]:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in v.replace("-", ".").split(".")]


def _busybox_entries(busybox: Path) -> list[cpio.Entry]:
    if not busybox.is_file():
        raise UserError(f"no static busybox at {busybox} (install busybox-static)")
    applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    entries = [cpio.Entry.file("bin/busybox", busybox.read_bytes(), 0o755)]
    for a in sorted(set(applets) | {"bin/sh"}):
        if a != "bin/busybox":
            entries.append(cpio.Entry.symlink(a, "/bin/busybox"))
    return entries


def _with_parents(entries: list[cpio.Entry]) -> list[cpio.Entry]:
    """Every parent directory once, before its children; entries sorted by path."""
    dirs = {e.path for e in entries if stat.S_ISDIR(e.mode)}
    out = {e.path: e for e in entries}
    for e in entries:
        parts = e.path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                out[d] = cpio.Entry.dir(d)
    return [out[p] for p in sorted(out)]


def entries(spec: InitramfsSpec) -> list[cpio.Entry]:
    index = load_index(spec.rootfs, spec.kver)
    try:
        mods = index.resolve(REQUIRED_MODULES + list(spec.extra_modules), list(spec.nic_modules))
    except MissingModules as e:
        raise MissingModules(e.names, f"kernel {spec.kver}") from None
    files = [cpio.Entry.dir(d) for d in ("dev", "proc", "sys", "run", "new_root", "etc", "tmp")]
    files.append(cpio.Entry.chardev("dev/console", 5, 1))
    files.append(cpio.Entry.chardev("dev/null", 1, 3, 0o666))
    files.append(cpio.Entry.file("init", (INITCPIO / "init").read_bytes(), 0o755))
    files.append(cpio.Entry.file("lib/provisioner/provisioner.sh", (INITCPIO / "provisioner.sh").read_bytes()))
    files.append(cpio.Entry.file("lib/provisioner/udhcpc.script", (INITCPIO / "udhcpc.script").read_bytes(), 0o755))
    files += _busybox_entries(spec.busybox)
    dest = f"lib/modules/{spec.kver}"
    packed = []
    for m in mods:
        name, data = read_module(spec.rootfs, spec.kver, m)
        packed.append(str(PurePosixPath(dest, m).with_name(name)))
        files.append(cpio.Entry.file(packed[-1], data))
    listing = "".join(f"/{p}\n" for p in packed)
    files.append(cpio.Entry.file("lib/provisioner/modules", listing.encode()))
    return _with_parents(files)


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)  # -9 costs 10x the time for <1%
    if compression == "zstd":
        return subprocess.run(["zstd", "-q", "-9", "-T1", "-c"], input=data, capture_output=True, check=True).stdout
    raise UserError(f"unknown compression {compression!r} (choose from {', '.join(COMPRESSIONS)})")


def render(spec: InitramfsSpec) -> bytes:
    """The compressed archive for `spec`; a pure function of the files it reads."""
    buf = io.BytesIO()
    cpio.write(buf, entries(spec))
    return compress(buf.getvalue(), spec.compression)


def write_initramfs(
    version_dir: Path, kver: str, compression: str = "gzip", extra_modules: tuple[str, ...] = ()
) -> Path:
    """Build the initramfs of one image version (its rootfs and kernel) into that version."""
    spec = InitramfsSpec(version_dir / "rootfs", kver, compression, tuple(extra_modules))
    out = version_dir / "initramfs.img"
    atomic_write(out, render(spec))
    return out


def build_initramfs(
    state: State, image: str, kernel: str | None = None, compression: str = "gzip", extra_modules: tuple[str, ...] = ()
) -> Path:
    """(Re)build the initramfs of the image's current version for its kernel (or `kernel`)."""
    link = layout.image_dir(state, image)
    if not link.exists():
        raise UserError(f"no image {image!r} (see `provisioner image list`)")
    version_dir = Path(os.path.realpath(link))
    kver = kernel or _current_kernel(version_dir)
    return write_initramfs(version_dir, kver, compression, extra_modules)


def _current_kernel(version_dir: Path) -> str:
    meta = version_dir / layout.IMAGE_META
    kernel = json.loads(meta.read_text()).get("kernel") if meta.exists() else None
    if kernel:
        return str(kernel)
    found = kernel_versions(version_dir / "rootfs")
    if not found:
        raise UserError(f"no /boot/vmlinuz-* in {version_dir / 'rootfs'}")
    return found[-1]
