"""Helpers for the TFTP tests: run our server (or a raw client) in a thread inside a lab
namespace, and a minimal raw TFTP client for protocol corners no real client reaches."""

from __future__ import annotations

import ctypes
import hashlib
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provisioner.servers.tftp import TftpServer

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(path: str) -> None:
    """Move the calling thread (only it) into a network namespace."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def in_ns(ns, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """fn(*args) in a thread inside namespace `ns`; its result or its exception."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            enter_netns(ns.path)
            box["result"] = fn(*args, **kw)
        except BaseException as e:  # handed to the caller
            box["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("result")


class ServerThread:
    """Our TftpServer serving in a lab namespace from a background thread."""

    def __init__(self, ns, resolver, db=None, listen: str = "0.0.0.0", port: int = 69, **kw: Any):
        ready = threading.Event()
        self.error: BaseException | None = None

        def run() -> None:
            try:
                enter_netns(ns.path)
                self.server = TftpServer(listen, port, resolver, db, **kw)
            except BaseException as e:
                self.error = e
                ready.set()
                return
            ready.set()
            self.server.serve_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)
        if self.error:
            raise self.error
        self.server._running.wait(10)

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(10)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path: Path) -> str:
    return sha(Path(path).read_bytes())


def rrq(name: str, mode: str = "octet", **options: Any) -> bytes:
    out = b"\0\x01" + name.encode() + b"\0" + mode.encode() + b"\0"
    for k, v in options.items():
        out += k.encode() + b"\0" + str(v).encode() + b"\0"
    return out


def ack(block: int) -> bytes:
    return struct.pack("!HH", 4, block & 0xFFFF)


def parse_oack(data: bytes) -> dict[str, str]:
    assert data[:2] == b"\0\x06", data[:40]
    parts = data[2:].split(b"\0")[:-1]
    return {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts), 2)}


def fetch(
    server: tuple[str, int], name: str, *, wait: float = 3.0, sock: socket.socket | None = None, **options: Any
) -> tuple[bytes, dict[str, str], tuple[str, int]]:
    """Download with a plain RFC 1350/7440 client; (data, oack options, server TID)."""
    s = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(wait)
    try:
        s.sendto(rrq(name, **options), server)
        pkt, tid = s.recvfrom(70000)
        if pkt[:2] != b"\0\x06":
            return receive(s, tid, pkt, int(options.get("blksize", 512)), 1), {}, tid
        oack = parse_oack(pkt)
        s.sendto(ack(0), tid)
        blksize, window = int(oack.get("blksize", 512)), int(oack.get("windowsize", 1))
        return receive(s, tid, s.recvfrom(70000)[0], blksize, window), oack, tid
    finally:
        if sock is None:
            s.close()


def receive(s: socket.socket, tid: tuple[str, int], pkt: bytes, blksize: int, window: int) -> bytes:
    """The rest of a download whose first DATA packet is `pkt`: ACK each window (or at a
    gap, the last block in order, as RFC 7440 says) until the short last block."""
    chunks, expect, in_window = [], 1, 0
    while True:
        assert pkt[:2] == b"\0\x03", pkt[:60]
        blk = struct.unpack("!H", pkt[2:4])[0]
        if blk == expect & 0xFFFF:
            chunks.append(pkt[4:])
            expect += 1
            in_window += 1
            last = len(pkt) - 4 < blksize
            if last or in_window == window:
                s.sendto(ack(expect - 1), tid)
                in_window = 0
            if last:
                return b"".join(chunks)
        pkt = s.recvfrom(70000)[0]
