"""No datagram stops the server: thousands of malformed, truncated, oversized, unknown-opcode
and bad-option packets to the request port and into a live transfer, then normal downloads."""

from __future__ import annotations

import logging
import os
import random
import socket
import struct

import pytest

from labs.tftp import ServerThread, ack, fetch, in_ns, receive, rrq, sha
from provisioner.servers.boottree import StaticTree

pytestmark = pytest.mark.netns

SRV = ("10.99.0.1", 69)


def garbage(rng: random.Random) -> bytes:
    """One hostile datagram: each kind a real bug in some TFTP server has choked on."""
    kind = rng.randrange(12)
    name = rng.choice([b"f", b"../f", b"", b"\xff\xfe", b"a" * 600, b"f\0x", b"%s%n"])
    if kind == 0:
        return os.urandom(rng.randrange(0, 600))
    if kind == 1:
        return struct.pack("!H", rng.choice([0, 7, 8, 99, 0xFFFF])) + os.urandom(rng.randrange(0, 40))
    if kind == 2:  # truncated requests
        full = rrq("f", blksize=1468, tsize=0)
        return full[: rng.randrange(0, len(full))]
    if kind == 3:  # bad option values and shapes
        opts = rng.choice(
            [
                b"blksize\0abc\0",
                b"blksize\0-1\0",
                b"blksize\x0099999999999999999999\0",
                b"windowsize\0\0",
                b"timeout\x000\0",
                b"tsize\0-5\0",
                b"blksize\0",
                b"\0\0",
                b"tsize\x00" + b"9" * 500 + b"\0",
                b"windowsize\x0065536\0",
            ]
        )
        return b"\0\x01" + name + b"\0octet\0" + opts
    if kind == 4:
        return b"\0\x01" + name + b"\0" + rng.choice([b"mail", b"OCTET", b"", b"\xff", b"netascii"]) + b"\0"
    if kind == 5:
        return b"\0\x02" + name + b"\0octet\0"
    if kind == 6:  # stray DATA/ACK/ERROR/OACK to the request port
        return struct.pack("!HH", rng.choice([3, 4, 5, 6]), rng.randrange(65536)) + os.urandom(rng.randrange(8))
    if kind == 7:
        return b"\0\x01" + b"f" * rng.randrange(1000, 4000) + b"\0octet\0"
    if kind == 8:
        return b"\0\x01f\0octet\0" + b"blksize\x001468\0" * rng.randrange(1, 80)
    if kind == 9:
        return b"\0\x05\0\x01oops\0"
    if kind == 10:
        return b"\0\x01" + name + b"\0octet"  # no final NUL
    return os.urandom(rng.randrange(1, 65000))


def test_garbage_never_stops_the_server(lab, tmp_path, caplog):
    content = os.urandom(50_000)
    (tmp_path / "f").write_bytes(content)
    client = lab.host(ip="10.99.0.2")
    rng = random.Random(1350)
    packets = [garbage(rng) for _ in range(3000)]

    def throw():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        for p in packets:
            try:
                s.sendto(p, SRV)
            except OSError:
                pass  # datagram too long for the kernel: fine, it is the next one's turn
        # And into a live transfer, from its own peer.
        s2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s2.settimeout(3)
        s2.sendto(rrq("f", blksize=1000), SRV)
        _, tid = s2.recvfrom(2000)
        hostile = [p for p in packets[:500] if p[:2] != b"\0\x05"]  # an ERROR ends it, rightly
        for p in [
            *hostile,
            b"",
            b"\0",
            b"\0\x04",
            ack(60000),
            ack(0xFFFF),
            b"\0\x03\0\x01xx",
            b"\0\x06blksize\0" + b"9" * 20 + b"\0",
            rrq("f"),
        ]:
            s2.sendto(p[:60000], tid)
        # The burst (up to 60 KB a datagram) can overflow the transfer socket's receive buffer
        # and take ACK 0 with it: resend it on timeout, as every client does.
        for _ in range(5):
            s2.sendto(ack(0), tid)
            try:
                first = s2.recvfrom(2000)[0]
                while first[:2] != b"\0\x03":  # answers to the garbage (ERRORs) may come first
                    first = s2.recvfrom(2000)[0]
                return receive(s2, tid, first, 1000, 1)
            except TimeoutError:
                continue
        raise AssertionError("no DATA 1 after five ACK 0s")

    with ServerThread(lab.server, StaticTree(tmp_path)) as st:
        assert sha(in_ns(client, throw)) == sha(content)
        for opts in ({}, {"blksize": 1468, "tsize": 0}, {"windowsize": 8, "blksize": 512}):
            data, _, _ = in_ns(client, fetch, SRV, "f", **opts)
            assert sha(data) == sha(content)
        assert st.thread.is_alive()
    crashes = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not crashes, crashes[0].getMessage()
