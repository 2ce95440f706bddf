"""What a transfer sends: the file's bytes cut into ready-to-send DATA packets.

A file is read once into memory (never mmapped: a file truncated under a mapping would
SIGBUS the whole server) and its packets are built lazily, once, then shared by every
transfer of the same file version, mode and block size. Sending a block is then one
sendto() of a prebuilt bytes object: no per-packet allocation or header packing, which is
what lets one Python thread outrun a forking C server under load.

Prebuilt packets cost the file's size again plus ~50 bytes a block (8-byte blocks make that
7 times the file), and every block size a client picks is another copy: the cache has a byte
budget, and a payload that does not fit builds each packet as it sends it instead.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from .packets import data_header

_HEADERS = [data_header(n) for n in range(65536)]
_PACKET_OVERHEAD = 4 + 33 + 8  # DATA header, a bytes object's own size, its slot in the list


class NotServable(Exception):
    """The resolved path is not a regular file (a directory, FIFO, device...)."""


def netascii(data: bytes) -> bytes:
    """RFC 764 line endings: LF -> CR LF, bare CR -> CR NUL."""
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


def prebuilt_cost(size: int, blksize: int) -> int:
    """The bytes a payload's prebuilt packets take at most."""
    return size + (size // blksize + 2) * _PACKET_OVERHEAD


class Payload:
    """The DATA packets of one content at one block size; `users` counts live transfers.
    `packets` is None when they are built per send (not within the cache's budget)."""

    __slots__ = ("key", "data", "blksize", "blocks", "packets", "users", "cost")

    def __init__(self, key: tuple | None, data: bytes, blksize: int, prebuild: bool = True):
        self.key = key
        self.data = data
        self.blksize = blksize
        # Always a final short block, possibly empty: that is how the client sees the end.
        self.blocks = len(data) // blksize + 1
        self.packets: list[bytes | None] | None = [None] * (self.blocks + 1) if prebuild else None
        self.cost = prebuilt_cost(len(data), blksize) if prebuild else 0
        self.users = 0

    def packet(self, n: int) -> bytes:
        packets = self.packets
        p = packets[n] if packets is not None else None
        if p is None:
            off = (n - 1) * self.blksize
            p = _HEADERS[n & 0xFFFF] + self.data[off : off + self.blksize]
            if packets is not None:
                packets[n] = p
        return p


def _open_regular(path: Path) -> tuple[int, tuple]:
    """An fd and identity of a regular file (O_NONBLOCK: a FIFO must never block the loop);
    the identity changes when the file is replaced or modified."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotServable(f"{path} is not a regular file")
    return fd, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 22):
        chunks.append(chunk)
    return b"".join(chunks)


class PayloadCache:
    """Payloads in use, shared by (file identity, mode, block size), and file contents
    shared by (identity, mode); both dropped when the last transfer using them ends, so
    memory follows what is being served right now. Prebuilt packets take at most
    `budget` bytes (prebuilt_cost() reserved per payload)."""

    def __init__(self, budget: int = 64 << 20) -> None:
        self.budget = budget
        self.prebuilt = 0  # bytes reserved by the payloads that prebuild
        self._payloads: dict[tuple, Payload] = {}
        self._contents: dict[tuple, list] = {}  # (identity, mode) -> [bytes, users]

    def _content(self, source: Path | bytes, mode: str) -> tuple[tuple | None, bytes]:
        """The bytes to send and their sharing key (None for dynamic bytes: never shared)."""
        if not isinstance(source, Path):
            data = bytes(source)
            return None, netascii(data) if mode == "netascii" else data
        fd, ident = _open_regular(source)
        try:
            key = (ident, mode)
            entry = self._contents.get(key)
            if entry is None:
                data = _read_all(fd)
                entry = self._contents[key] = [netascii(data) if mode == "netascii" else data, 0]
            entry[1] += 1
            return key, entry[0]
        finally:
            os.close(fd)

    def get(self, source: Path | bytes, mode: str, blksize_for: Callable[[int], int]) -> Payload:
        """A payload for `source`; `blksize_for(size)` picks the block size once the size
        (which tsize reports) is known. Pair every get() with a release()."""
        key, data = self._content(source, mode)
        blksize = blksize_for(len(data))
        full = (key, blksize) if key is not None else None
        payload = self._payloads.get(full) if full is not None else None
        if payload is None:
            prebuild = self.prebuilt + prebuilt_cost(len(data), blksize) <= self.budget
            payload = Payload(full, data, blksize, prebuild)
            self.prebuilt += payload.cost
            if full is not None:
                self._payloads[full] = payload
        payload.users += 1
        return payload

    def release(self, payload: Payload) -> None:
        payload.users -= 1
        if payload.users <= 0:
            self.prebuilt -= payload.cost
            payload.cost = 0
        if payload.key is None:
            return
        if payload.users <= 0:
            self._payloads.pop(payload.key, None)
        content_key = payload.key[0]
        entry = self._contents.get(content_key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del self._contents[content_key]
