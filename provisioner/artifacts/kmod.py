"""Kernel module dependencies from an image's own modules.dep, so an initramfs carries
exactly the drivers it asks for and everything they need, in a loadable order."""

from __future__ import annotations

import gzip
import lzma
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

_SUFFIX = re.compile(r"\.ko(\.(xz|gz|zst))?$")


def module_name(path: str) -> str:
    """`kernel/fs/nfs/nfsv4.ko.xz` -> `nfsv4` (dashes and underscores are the same to the kernel)."""
    return _SUFFIX.sub("", path.rsplit("/", 1)[-1]).replace("-", "_")


def plain_module(path: Path) -> tuple[str, bytes]:
    """A module file's name and bytes as busybox insmod loads them: uncompressed. Images ship
    .ko.xz, .ko.gz or .ko.zst (trixie, Void...) and busybox has no zstd; the initramfs is
    compressed as a whole anyway."""
    name, data = path.name, path.read_bytes()
    if name.endswith(".ko.xz"):
        return name[:-3], lzma.decompress(data)
    if name.endswith(".ko.gz"):
        return name[:-3], gzip.decompress(data)
    if name.endswith(".ko.zst"):
        try:
            out = subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            raise UserError(f"cannot decompress {path} (zstd-compressed modules need the zstd command): {e}") from None
        return name[:-4], out
    return name, data


def modules_dir(root: Path, kver: str) -> Path:
    """The module tree of kernel `kver` inside a root filesystem (merged-/usr or not)."""
    for base in ("usr/lib/modules", "lib/modules"):
        d = root / base / kver
        if d.is_dir() and not d.is_symlink():
            return d
    return root / "lib" / "modules" / kver


@dataclass(frozen=True)
class ModuleIndex:
    """modules.dep (name -> path, direct-or-transitive deps) and modules.builtin."""

    paths: dict[str, str]
    deps: dict[str, tuple[str, ...]]
    builtin: frozenset[str]

    @staticmethod
    def parse(dep_text: str, builtin_text: str = "") -> "ModuleIndex":
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

    def resolve(self, wanted: list[str], optional: list[str] = ()) -> list[str]:
        """Relative module paths for `wanted` + available `optional` names, each after its
        dependencies. A wanted module that is neither a module nor built in is an error."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if name in seen or name in self.builtin:
                return
            if name in chain:
                raise UserError(f"module dependency cycle: {' -> '.join(chain + (name,))}")
            for dep in self.deps[name]:
                visit(dep, chain + (name,))
            seen.add(name)
            order.append(self.paths[name])

        missing = [m for m in (n.replace("-", "_") for n in wanted) if m not in self.paths and m not in self.builtin]
        if missing:
            raise UserError(f"kernel module(s) not in this kernel's modules.dep: {', '.join(missing)}")
        for name in [n.replace("-", "_") for n in wanted] + [n.replace("-", "_") for n in optional]:
            if name in self.paths or name in self.builtin:
                visit(name, ())
        return order


def load_index(root: Path, kver: str) -> ModuleIndex:
    """The module index of kernel `kver` in `root`, running depmod first if it has none."""
    mdir = modules_dir(root, kver)
    if not mdir.is_dir():
        raise UserError(f"no modules for kernel {kver} in {root} (looked for {mdir})")
    dep = mdir / "modules.dep"
    if not dep.exists():
        res = subprocess.run(["depmod", "-b", str(root), kver], capture_output=True, text=True)
        if res.returncode != 0 or not dep.exists():
            raise UserError(f"depmod failed for {kver} in {root}: {res.stderr.strip()}")
    builtin = mdir / "modules.builtin"
    return ModuleIndex.parse(dep.read_text(), builtin.read_text() if builtin.exists() else "")
