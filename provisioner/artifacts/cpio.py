"""A deterministic newc (SVR4, no CRC) cpio writer, as the Linux kernel unpacks initramfs.

Shared by overlay archives and the native initramfs builder. Same entries in, same bytes out:
timestamps are fixed, inode numbers count up in entry order.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

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
    def dir(path: str, perm: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
        return Entry(path, stat.S_IFDIR | perm, b"", uid, gid)

    @staticmethod
    def file(path: str, data: bytes, perm: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
        return Entry(path, stat.S_IFREG | perm, data, uid, gid)

    @staticmethod
    def symlink(path: str, target: str, uid: int = 0, gid: int = 0) -> Entry:
        return Entry(path, stat.S_IFLNK | 0o777, target.encode(), uid, gid)

    @staticmethod
    def chardev(path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
        return Entry(path, stat.S_IFCHR | perm, f"{major}:{minor}".encode())


def _pad(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)


def _header(ino: int, e: Entry, size: int, name: bytes, rdev: tuple[int, int] = (0, 0)) -> bytes:
    fields = [
        ino,
        e.mode,
        e.uid,
        e.gid,
        1 if not stat.S_ISDIR(e.mode) else 2,
        e.mtime,
        size,
        0,
        0,
        rdev[0],
        rdev[1],
        len(name) + 1,
        0,
    ]
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def encode(e: Entry, ino: int) -> bytes:
    """One member as bytes (header, name, body, padding): archives can be assembled from
    pieces, as overlay builds do to reuse the compressed form of members every node shares."""
    name = e.path.lstrip("/").encode()
    body, rdev = e.data, (0, 0)
    if stat.S_ISCHR(e.mode) or stat.S_ISBLK(e.mode):
        major, minor = (int(x) for x in e.data.decode().split(":"))
        body, rdev = b"", (major, minor)
    hdr = _header(ino, e, len(body), name, rdev)
    return hdr + name + b"\0" + _pad(len(hdr) + len(name) + 1) + body + _pad(len(body))


def trailer() -> bytes:
    name = TRAILER.encode()
    hdr = _header(0, Entry(TRAILER, 0), 0, name)
    return hdr + name + b"\0" + _pad(len(hdr) + len(name) + 1)


def write(out: BinaryIO, entries: Iterable[Entry]) -> None:
    """Write `entries` in the order given (parents before children is the caller's job)."""
    for ino, e in enumerate(entries, 1):
        out.write(encode(e, ino))
    out.write(trailer())


def read(data: bytes) -> list[Entry]:
    """Parse a newc archive (up to its trailer) back into entries; ValueError if malformed."""
    out: list[Entry] = []
    pos = 0
    while True:
        if data[pos : pos + 6] != b"070701" or len(data) < pos + 110:
            raise ValueError(f"not a newc cpio member at offset {pos}")
        f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, uid, gid, mtime, size, namesize = f[1], f[2], f[3], f[5], f[6], f[11]
        start = pos + 110
        name = data[start : start + namesize - 1].decode()
        pos = start + namesize
        pos += (4 - pos % 4) % 4
        if name == TRAILER:
            return out
        body = data[pos : pos + size]
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            body = f"{f[9]}:{f[10]}".encode()
        out.append(Entry(name, mode, body, uid, gid, mtime))
        pos += size + (4 - size % 4) % 4
