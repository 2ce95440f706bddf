"""1,100 transfers open at the same time (tftpy's select() loop stops below 1,024), all served
to the last byte. The client is a raw UDP client: 1,100 curl processes would measure the
machine, not the server."""

from __future__ import annotations

import os
import resource
import selectors
import socket
import struct
import time
from typing import Any, cast

import pytest

from labs.tftp import ServerThread, ack, in_ns, rrq, sha
from provisioner.inventory.model import Limits
from provisioner.servers.boottree import StaticTree

pytestmark = pytest.mark.netns

SESSIONS = 1100
SRV = ("10.99.0.1", 69)


def open_all(n: int, name: str, blksize: int) -> tuple[list[socket.socket], dict]:
    """n transfers, each held at its OACK (not acknowledged yet): all open at once."""
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.bind(("0.0.0.0", 0))
        socks.append(s)
    tids: dict[socket.socket, tuple[str, int]] = {}
    deadline = time.time() + 30
    while len(tids) < n:  # RRQs until every one has its OACK (a burst may overflow a queue)
        assert time.time() < deadline, f"only {len(tids)} of {n} transfers opened"
        for s in socks:
            if s not in tids:
                s.sendto(rrq(name, blksize=blksize, timeout=10), SRV)
        end = time.time() + 1
        while time.time() < end and len(tids) < n:
            for s in socks:
                if s in tids:
                    continue
                try:
                    pkt, tid = s.recvfrom(2000)
                except BlockingIOError:
                    continue
                if pkt[:2] == b"\0\x06":
                    tids[s] = tid
            time.sleep(0.01)
    return socks, tids


def finish_all(socks: list[socket.socket], tids: dict, blksize: int) -> list[bytes]:
    n = len(socks)
    sel = selectors.DefaultSelector()
    state: dict[socket.socket, list[Any]] = {}
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
        state[s] = [1, []]
        s.sendto(ack(0), tids[s])
    done = 0
    deadline = time.time() + 120
    while done < n:
        assert time.time() < deadline, f"{done} of {n} transfers finished"
        for key, _ in sel.select(1):
            s = cast(socket.socket, key.fileobj)
            try:
                pkt = s.recv(70000)
            except BlockingIOError:
                continue
            if pkt[:2] != b"\0\x03":
                continue
            expect, chunks = state[s]
            blk = struct.unpack("!H", pkt[2:4])[0]
            if blk == expect & 0xFFFF:
                chunks.append(pkt[4:])
                state[s][0] = expect + 1
                s.sendto(ack(blk), tids[s])
                if len(pkt) - 4 < blksize:
                    sel.unregister(s)
                    done += 1
            elif blk == (expect - 1) & 0xFFFF:
                s.sendto(ack(blk), tids[s])
    for s in socks:
        s.close()
    return [b"".join(state[s][1]) for s in socks]


def test_more_than_1024_concurrent_transfers(lab, tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    content = os.urandom(20_000)
    (tmp_path / "f").write_bytes(content)
    client = lab.host(ip="10.99.0.2")
    try:
        # The caps are cluster.limits' to lift: here one address opens them all.
        caps = Limits(tftp_transfers=SESSIONS, tftp_per_client=SESSIONS)
        with ServerThread(lab.server, StaticTree(tmp_path), limits=caps) as st:
            socks, tids = in_ns(client, open_all, SESSIONS, "f", 1468)
            assert len(st.server.transfers) == SESSIONS
            results = in_ns(client, finish_all, socks, tids, 1468)
            assert len(results) == SESSIONS
            assert all(sha(r) == sha(content) for r in results)
            deadline = time.time() + 10
            while st.server.transfers and time.time() < deadline:
                time.sleep(0.05)
            assert not st.server.transfers
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
