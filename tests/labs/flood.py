"""Hostile load for `provisioner serve` from one attacker namespace (issue 17.2), shared by
tests/test_serve_flood*.py and bench/flood.py: a burst of TFTP requests, steady TFTP and HTTP
floods in background threads, and a sampler of the server's memory and descriptors."""

from __future__ import annotations

import os
import selectors
import socket
import struct
import threading
import time
from collections import Counter
from typing import Any, Self, cast

from .tftp import ack, enter_netns, rrq


def fds(pid: int, kind: str = "") -> int:
    """Open descriptors of `pid`; with `kind` ("socket"), those of that kind only."""
    base = f"/proc/{pid}/fd"
    names = os.listdir(base)
    if not kind:
        return len(names)
    count = 0
    for name in names:
        try:
            count += os.readlink(f"{base}/{name}").startswith(kind + ":")
        except OSError:
            pass
    return count


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def rrq_burst(
    server: tuple[str, int], n: int, name: str, wait: float = 5.0, **options: Any
) -> tuple[Counter, list[tuple[socket.socket, tuple[str, int], bytes]]]:
    """n read requests at once, each from a socket (a client port) of its own; what came
    back ("served", "error N", "silent") and the served ones' (socket, server TID, first
    packet), left open and unacknowledged: each holds a transfer until the server gives up."""
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.bind(("0.0.0.0", 0))
        s.sendto(rrq(name, **options), server)
        socks.append(s)
    got: Counter = Counter()
    served = []
    pending = set(socks)
    deadline = time.time() + wait
    while pending and time.time() < deadline:
        for s in list(pending):
            try:
                pkt, tid = s.recvfrom(70000)
            except BlockingIOError:
                continue
            pending.discard(s)
            if pkt[:2] == b"\0\x05":
                got[f"error {pkt[3]}"] += 1
                s.close()
            else:
                got["served"] += 1
                served.append((s, tid, pkt))
        time.sleep(0.01)
    got["silent"] = len(pending)
    for s in pending:
        s.close()
    return got, served


def drive(server: tuple[str, int], name: str, blksizes: list[int]) -> list[bytes]:
    """One transfer per block size at once, windowsize 16, each read to the end (block
    sizes within the MTU): the files as received."""
    sel = selectors.DefaultSelector()
    state: dict[socket.socket, list[Any]] = {}
    for b in blksizes:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 4 << 20)
        s.setblocking(False)
        s.sendto(rrq(name, blksize=b, windowsize=16), server)
        sel.register(s, selectors.EVENT_READ)
        state[s] = [b, None, 1, [], 0]  # blksize, server TID, next block, chunks, last ACK
    done, deadline = 0, time.time() + 120
    while done < len(blksizes):
        assert time.time() < deadline, f"{done} of {len(blksizes)} transfers finished"
        for key, _ in sel.select(1):
            s = cast(socket.socket, key.fileobj)
            try:
                pkt, tid = s.recvfrom(70000)
            except BlockingIOError:
                continue
            st = state[s]
            st[1] = tid
            if pkt[:2] == b"\0\x06":
                s.sendto(ack(0), tid)
                continue
            assert pkt[:2] == b"\0\x03", pkt[:40]
            blk = struct.unpack("!H", pkt[2:4])[0]
            if blk != st[2] & 0xFFFF:
                if st[4] != st[2] - 1:  # a gap: ACK what came in order, once (RFC 7440)
                    st[4] = st[2] - 1
                    s.sendto(ack(st[4]), tid)
                continue
            st[3].append(pkt[4:])
            st[2] += 1
            last = len(pkt) - 4 < st[0]
            if last or blk % 16 == 0:
                st[4] = blk
                s.sendto(ack(blk), tid)
            if last:
                sel.unregister(s)
                done += 1
    out = [b"".join(state[s][3]) for s in state]
    for s in state:
        s.close()
    return out


class Flood:
    """A background attacker in namespace `ns` until stop(); `sent` counts its packets or
    connections, and rate() is what it held per second."""

    def __init__(self, ns: Any):
        self.ns = ns
        self.sent = 0
        self.answers: Counter = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = self.ended = 0.0

    def _run(self) -> None:
        if self.ns is not None:
            enter_netns(self.ns.path)
        self.started = time.monotonic()
        try:
            self.attack()
        finally:
            self.ended = time.monotonic()

    def attack(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def rate(self) -> float:
        return self.sent / max(1e-3, (self.ended or time.monotonic()) - self.started)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TftpFlood(Flood):
    """Read requests at `rate` per second, each from a fresh client port, never acknowledged
    (hostile options by default: the longest timeout, an odd block size); replies are read
    from a ring of open sockets so refusals can be counted."""

    def __init__(self, ns: Any, server: tuple[str, int], name: str, rate: int = 2000, ring: int = 256, **options: Any):
        super().__init__(ns)
        self.server, self.name, self.per_second, self.ring = server, name, rate, ring
        self.options = options or {"timeout": 255, "blksize": 1001, "windowsize": 64}

    def attack(self) -> None:
        ring: list[socket.socket] = []
        packet = rrq(self.name, **self.options)
        step = 1.0 / self.per_second
        due = time.monotonic()
        try:
            while not self._stop.is_set():
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setblocking(False)
                try:
                    s.sendto(packet, self.server)
                    self.sent += 1
                except OSError:
                    pass
                ring.append(s)
                if len(ring) > self.ring:
                    old = ring.pop(0)
                    try:
                        pkt = old.recv(70000)
                        self.answers["error" if pkt[:2] == b"\0\x05" else "served"] += 1
                    except OSError:
                        self.answers["silent"] += 1
                    old.close()
                due += step
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        finally:
            for s in ring:
                s.close()


class HttpFlood(Flood):
    """`conns` connections held open to the HTTP server: the first third send nothing, the
    rest send a request's headers a byte at a time (slowloris); each closed one is counted
    by what it got ("503", "closed") and opened again."""

    def __init__(self, ns: Any, server: tuple[str, int], conns: int = 200, drip: float = 0.5):
        super().__init__(ns)
        self.server, self.conns, self.drip = server, conns, drip

    def attack(self) -> None:
        live: dict[socket.socket, int] = {}
        head = b"GET /boot/ipxe HTTP/1.1\r\nHost: x\r\n" + b"X-a: b\r\n" * 1000
        try:
            while not self._stop.is_set():
                while len(live) < self.conns and not self._stop.is_set():
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    s.settimeout(2)
                    try:
                        s.connect(self.server)
                    except OSError:
                        s.close()
                        self.answers["connect failed"] += 1
                        break
                    s.setblocking(False)
                    self.sent += 1
                    live[s] = 0 if len(live) % 3 == 0 else 1
                for s, pos in list(live.items()):
                    try:
                        data = s.recv(4096)
                    except BlockingIOError:
                        data = None
                    except OSError:
                        data = b""
                    if data is not None:
                        self.answers["503" if data.startswith(b"HTTP/1.1 503") else "closed"] += 1
                        del live[s]
                        s.close()
                        continue
                    if pos:  # one more byte of the headers, never the blank line
                        try:
                            s.send(head[pos - 1 : pos])
                            live[s] = pos + 1 if pos < len(head) else 1
                        except OSError:
                            pass
                self._stop.wait(self.drip)
        finally:
            for s in live:
                s.close()


class Sampler(Flood):
    """Peak RSS (MB) and descriptors of process `pid`, every `every` seconds."""

    def __init__(self, pid: int, every: float = 0.1):
        super().__init__(None)
        self.pid, self.every = pid, every
        self.peak_rss = self.peak_fds = 0.0

    def attack(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_rss = max(self.peak_rss, rss_mb(self.pid))
                self.peak_fds = max(self.peak_fds, fds(self.pid))
            except (OSError, AssertionError):
                return
            self._stop.wait(self.every)
