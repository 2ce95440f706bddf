"""A deterministic newc (SVR4, no CRC) cpio writer, as the Linux kernel unpacks initramfs.

Shared by overlay archives and the native initramfs builder. Same entries in, same bytes out:
timestamps are fixed, inode numbers count up in entry order.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import BinaryIO, Iterable

TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member. `path` is relative (no leading slash); `data` is the file body or,
    for a symlink, its target."""

    path: str
    mode: int  # full st_mode: type bits | permission bits
    data: bytes = b""
    uid: int = 0
    gid: int = 0
    mtime: int = 0

    @staticmethod
    def dir(path: str, perm: int = 0o755, uid: int = 0, gid: int = 0) -> "Entry":
        return Entry(path, stat.S_IFDIR | perm, b"", uid, gid)

    @staticmethod
    def file(path: str, data: bytes, perm: int = 0o644, uid: int = 0, gid: int = 0) -> "Entry":
        return Entry(path, stat.S_IFREG | perm, data, uid, gid)

    @staticmethod
    def symlink(path: str, target: str, uid: int = 0, gid: int = 0) -> "Entry":
        return Entry(path, stat.S_IFLNK | 0o777, target.encode(), uid, gid)

    @staticmethod
    def chardev(path: str, major: int, minor: int, perm: int = 0o600) -> "Entry":
        return Entry(path, stat.S_IFCHR | perm, f"{major}:{minor}".encode())


def _pad(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)


def _header(ino: int, e: Entry, size: int, name: bytes, rdev: tuple[int, int] = (0, 0)) -> bytes:
    fields = [ino, e.mode, e.uid, e.gid, 1 if not stat.S_ISDIR(e.mode) else 2, e.mtime, size,
              0, 0, rdev[0], rdev[1], len(name) + 1, 0]
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def write(out: BinaryIO, entries: Iterable[Entry]) -> None:
    """Write `entries` in the order given (parents before children is the caller's job)."""
    ino = 0
    for e in entries:
        ino += 1
        name = e.path.lstrip("/").encode()
        body, rdev = e.data, (0, 0)
        if stat.S_ISCHR(e.mode) or stat.S_ISBLK(e.mode):
            major, minor = (int(x) for x in e.data.decode().split(":"))
            body, rdev = b"", (major, minor)
        hdr = _header(ino, e, len(body), name, rdev)
        out.write(hdr + name + b"\0" + _pad(len(hdr) + len(name) + 1))
        out.write(body + _pad(len(body)))
    name = TRAILER.encode()
    hdr = _header(0, Entry(TRAILER, 0), 0, name)
    out.write(hdr + name + b"\0" + _pad(len(hdr) + len(name) + 1))
