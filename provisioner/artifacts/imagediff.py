"""What changed between two versions of an image: the packages dpkg has installed in each
(added, removed, upgraded, downgraded) and the files (added, removed, changed), so a recipe
change or an `image exec` can be reviewed before nodes boot it."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..inroot import Root, RootPathError

DPKG_STATUS = "var/lib/dpkg/status"


@dataclass(frozen=True)
class PackageChange:
    name: str
    old: str | None  # version in the first image (None: not installed)
    new: str | None

    @property
    def kind(self) -> str:
        if self.old is None:
            return "added"
        if self.new is None:
            return "removed"
        return "upgraded" if _older(self.old, self.new) else "downgraded"


@dataclass(frozen=True)
class FileChange:
    path: str  # absolute, as the node sees it
    kind: str  # added, removed, changed


@dataclass(frozen=True)
class ImageDiff:
    packages: tuple[PackageChange, ...]
    files: tuple[FileChange, ...]

    def lines(self) -> list[str]:
        out = [f"{p.kind} {p.name} {' -> '.join(v for v in (p.old, p.new) if v)}" for p in self.packages]
        return out + [f"file {f.kind} {f.path}" for f in self.files]


def _older(a: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, "lt", b], check=False).returncode == 0


def installed_packages(rootfs: Path) -> dict[str, str]:
    """Package (name, or name:arch where one is installed for two) to version, read from the
    image's own dpkg status (inside the image: never through a link out of it)."""
    try:
        text = Root(rootfs).read_text(DPKG_STATUS)
    except RootPathError:
        return {}
    found: list[tuple[str, str, str]] = []
    for para in text.split("\n\n"):
        fields = dict(
            line.split(":", 1) for line in para.splitlines() if ":" in line and not line.startswith((" ", "\t"))
        )
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            found.append((fields["Package"], fields.get("Architecture", ""), fields.get("Version", "")))
    names = [n for n, _, _ in found]
    return {(f"{n}:{a}" if names.count(n) > 1 else n): v for n, a, v in found}


def _entries(rootfs: Path) -> dict[str, os.stat_result]:
    out: dict[str, os.stat_result] = {}
    for top, dirs, files in os.walk(rootfs):
        for name in dirs + files:
            p = os.path.join(top, name)
            out["/" + os.path.relpath(p, rootfs)] = os.lstat(p)
    return out


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**20):
            h.update(chunk)
    return h.hexdigest()


def _same(a: Path, b: Path, rel: str, sa: os.stat_result, sb: os.stat_result) -> bool:
    if (sa.st_mode, sa.st_uid, sa.st_gid) != (sb.st_mode, sb.st_uid, sb.st_gid):
        return False
    pa, pb = f"{a}{rel}", f"{b}{rel}"
    if stat.S_ISLNK(sa.st_mode):
        return os.readlink(pa) == os.readlink(pb)
    if stat.S_ISREG(sa.st_mode):
        if sa.st_size != sb.st_size:
            return False
        return _digest(pa) == _digest(pb)  # never by mtime: reproducible builds share theirs
    if stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode):
        return sa.st_rdev == sb.st_rdev
    return True


def diff(a: Path, b: Path) -> ImageDiff:
    """The changes from root `a` to root `b`."""
    pa, pb = installed_packages(a), installed_packages(b)
    names = sorted(n for n in pa.keys() | pb.keys() if pa.get(n) != pb.get(n))
    packages = tuple(PackageChange(n, pa.get(n), pb.get(n)) for n in names)
    ea, eb = _entries(a), _entries(b)
    files = [FileChange(p, "added") for p in eb.keys() - ea.keys()]
    files += [FileChange(p, "removed") for p in ea.keys() - eb.keys()]
    files += [FileChange(p, "changed") for p in ea.keys() & eb.keys() if not _same(a, b, p, ea[p], eb[p])]
    return ImageDiff(packages, tuple(sorted(files, key=lambda f: f.path)))
