"""Kernel module dependencies from an image's own modules.dep, so an initramfs carries
exactly the drivers it asks for and everything they need, in a loadable order."""

from __future__ import annotations

import lzma
import os
import re
import signal
import subprocess
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import UserError
from ..inroot import MAX_READ, Root

MAX_MODULE = MAX_READ  # unpacked; the largest real modules are tens of MB
_SUFFIX = re.compile(r"\.ko(\.(xz|gz|zst))?$")


def module_name(path: str) -> str:
    """`kernel/fs/nfs/nfsv4.ko.xz` -> `nfsv4` (dashes and underscores are the same to the kernel)."""
    return _SUFFIX.sub("", path.rsplit("/", 1)[-1]).replace("-", "_")


def plain_module(name: str, data: bytes) -> tuple[str, bytes]:
    """A module file's name and bytes as busybox insmod loads them: uncompressed. Images ship
    .ko.xz, .ko.gz or .ko.zst (trixie, Void...) and busybox has no zstd; the initramfs is
    compressed as a whole anyway. An image is untrusted: what a module unpacks to is capped."""
    try:
        if name.endswith(".ko.xz"):
            return name[:-3], _inflate(name, lzma.LZMADecompressor(), data)
        if name.endswith(".ko.gz"):
            return name[:-3], _inflate(name, zlib.decompressobj(wbits=31), data)
    except (lzma.LZMAError, zlib.error) as e:
        raise UserError(f"cannot decompress {name}: {e}") from None
    if name.endswith(".ko.zst"):
        return name[:-4], _unzstd(name, data)
    return name, data


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...

    def decompress(self, data: bytes, max_length: int, /) -> bytes: ...


def _inflate(name: str, d: _Decompressor, data: bytes) -> bytes:
    out = d.decompress(data, MAX_MODULE + 1)
    if len(out) > MAX_MODULE:
        raise UserError(f"{name} unpacks to more than {MAX_MODULE >> 20} MiB: not a kernel module, refused")
    if not d.eof:
        raise UserError(f"cannot decompress {name}: it is cut short")
    return out


def _unzstd(name: str, data: bytes) -> bytes:
    with tempfile.TemporaryFile() as src:
        src.write(data)
        src.seek(0)
        try:
            proc = subprocess.Popen(["zstd", "-dcq"], stdin=src, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError as e:
            raise UserError(f"cannot decompress {name} (zstd-compressed modules need the zstd command): {e}") from None
        assert proc.stdout is not None
        with proc:
            out = proc.stdout.read(MAX_MODULE + 1)
            proc.kill()
    if len(out) > MAX_MODULE:
        raise UserError(f"{name} unpacks to more than {MAX_MODULE >> 20} MiB: not a kernel module, refused")
    if proc.returncode not in (0, -signal.SIGKILL) or not out:
        raise UserError(f"cannot decompress {name}: zstd exited {proc.returncode}")
    return out


def modules_dir(root: Path, kver: str) -> Path | None:
    """The module tree of kernel `kver` inside a root filesystem (merged-/usr or not), as a
    real path inside the root (the image's links followed as the image sees them), or None."""
    image = Root(root)
    for base in ("usr/lib/modules", "lib/modules"):
        if image.is_dir(f"{base}/{kver}"):
            return image.resolve(f"{base}/{kver}")
    return None


def read_module(root: Path, kver: str, rel: str) -> tuple[str, bytes]:
    """A module that kernel `kver`'s modules.dep names (`kernel/fs/nfs/nfs.ko.xz`), read inside
    the image and made plain; a path that leaves the module tree, or no regular file there, is
    refused."""
    if rel.startswith("/") or ".." in rel.split("/") or not _SUFFIX.search(rel):
        raise UserError(f"modules.dep of {kver} names {rel!r}, not a module inside its module tree: refused")
    return plain_module(rel.rsplit("/", 1)[-1], Root(root).read_bytes(f"{_tree(root, kver)}/{rel}"))


def _tree(root: Path, kver: str) -> str:
    """Kernel `kver`'s module tree relative to the root, for reading inside it."""
    mdir = modules_dir(root, kver)
    if mdir is None:
        raise UserError(f"no modules for kernel {kver} in {root} (no usr/lib/modules/{kver} or lib/modules/{kver})")
    return str(mdir.relative_to(os.path.realpath(root)))


class MissingModules(UserError):
    """Modules asked for that the kernel has neither as modules nor built in."""

    def __init__(self, names: list[str], kernel: str = "this kernel"):
        self.names, self.kernel = names, kernel
        super().__init__(f"kernel module(s) not in the modules.dep of {kernel}: {', '.join(names)}")


@dataclass(frozen=True)
class ModuleIndex:
    """modules.dep (name -> path, direct-or-transitive deps) and modules.builtin."""

    paths: dict[str, str]
    deps: dict[str, tuple[str, ...]]
    builtin: frozenset[str]

    @staticmethod
    def parse(dep_text: str, builtin_text: str = "") -> ModuleIndex:
        paths: dict[str, str] = {}
        deps: dict[str, tuple[str, ...]] = {}
        for line in dep_text.splitlines():
            if ":" not in line:
                continue
            mod, rest = line.split(":", 1)
            name = module_name(mod)
            paths[name] = mod.strip()
            deps[name] = tuple(module_name(d) for d in rest.split())
        builtin = frozenset(module_name(b) for b in builtin_text.split())
        return ModuleIndex(paths, deps, builtin)

    def resolve(self, wanted: list[str], optional: Sequence[str] = ()) -> list[str]:
        """Relative module paths for `wanted` + available `optional` names, each after its
        dependencies. A wanted module that is neither a module nor built in is an error."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if name in seen or name in self.builtin:
                return
            if name in chain:
                raise UserError(f"module dependency cycle: {' -> '.join((*chain, name))}")
            for dep in self.deps[name]:
                visit(dep, (*chain, name))
            seen.add(name)
            order.append(self.paths[name])

        missing = [m for m in (n.replace("-", "_") for n in wanted) if m not in self.paths and m not in self.builtin]
        if missing:
            raise MissingModules(missing)
        for name in [n.replace("-", "_") for n in wanted] + [n.replace("-", "_") for n in optional]:
            if name in self.paths or name in self.builtin:
                visit(name, ())
        return order


def _depmod(mdir: Path, kver: str) -> None:
    """depmod on an image's module tree (real path `mdir`). It follows links on this host, so
    it runs only on a tree without any (Debian's build/source links it skips): one whose links
    could reach host files is refused instead."""
    if mdir.parts[-3:-1] != ("lib", "modules"):
        raise UserError(
            f"the module tree of {kver} is at {mdir}, outside a lib/modules directory: run depmod inside the image"
        )
    for top, dirs, files in os.walk(mdir):
        for name in dirs + files:
            path = Path(top) / name
            if path.is_symlink():
                if Path(top) == mdir and name in ("build", "source"):
                    continue
                raise UserError(
                    f"{path} is a link ({os.readlink(path)}) and the module tree of {kver} has no "
                    "modules.dep: depmod would follow it on this host; run depmod inside the image"
                )
            if not (path.is_dir() or path.is_file()):
                raise UserError(f"{path} is neither a file nor a directory: not running depmod on it")
    res = subprocess.run(["depmod", "-b", str(mdir.parents[2]), kver], capture_output=True, text=True, check=False)
    if res.returncode != 0 or not (mdir / "modules.dep").is_file():
        raise UserError(f"depmod failed for {kver} in {mdir}: {res.stderr.strip()}")


def load_index(root: Path, kver: str) -> ModuleIndex:
    """The module index of kernel `kver` in `root`, running depmod first if it has none."""
    image, tree = Root(root), _tree(root, kver)
    if not image.lexists(f"{tree}/modules.dep"):
        _depmod(image.resolve(tree), kver)
    builtin = f"{tree}/modules.builtin"
    return ModuleIndex.parse(
        image.read_text(f"{tree}/modules.dep"), image.read_text(builtin) if image.lexists(builtin) else ""
    )
