"""Overload from one attacker host against a real `provisioner serve` (issue 17.2): thousands
of TFTP requests with hostile options, TFTP transfers with odd block sizes, an HTTP
connection flood with slowloris and idle connections. Each is refused cleanly beyond the
caps of cluster.limits (small here, so the tests are quick), memory and descriptors stay
bounded, the log says a repeated refusal once per interval with a count, and the other
services and the real node are served throughout."""

from __future__ import annotations

import logging
import os
import re
import socket
import time

import pytest

from labs.flood import Sampler, drive, fds, rrq_burst, rss_mb
from labs.serve import (
    NODES,
    SERVER_IP,
    Serve,
    curl,
    set_limits,
    write_site,
    write_state,
)
from labs.tftp import in_ns, sha
from provisioner.logs import FIELDS, Collapse, repeated

pytestmark = pytest.mark.netns

TFTP = (SERVER_IP, 6969)
HTTP = (SERVER_IP, 8080)
BIG = "images/img1/initramfs.img"  # 3 MB, served to any address
KERNEL = "images/img1/vmlinuz"  # 1 MB


def start(lab, cli, workers: int | None = None, **limits: int) -> Serve:
    """serve (TFTP and HTTP) with these cluster.limits (and TFTP `workers`: one per CPU)."""
    write_site(cli.site)
    set_limits(cli.site, **limits)
    extra = ("--tftp-port", str(TFTP[1])) + (("--tftp-workers", str(workers)) if workers else ())
    return Serve(lab, cli, services="tftp,http", port=HTTP[1], extra=extra)


def node(lab, name: str = "node01"):
    return lab.host(ip=NODES[name][0], mac=NODES[name][1])


def lines(srv: Serve, *needles: str) -> list[str]:
    return [ln for ln in srv.lines if all(n in ln for n in needles)]


def wait_for(check, timeout: float, what: str) -> float:
    """Seconds until check() is true."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout, what
        time.sleep(0.1)
    return time.monotonic() - t0


def test_collapse_lets_one_line_per_interval_out_with_a_count():
    f = Collapse(interval=0.3)

    def rec(key: str | None) -> logging.LogRecord:
        r = logging.LogRecord("provisioner.tftp", logging.WARNING, __file__, 1, "refused", None, None)
        r.__dict__.update(repeated(key, client="10.0.0.9") if key else {})
        return r

    assert f.filter(rec("busy")) and f.filter(rec("other")) and f.filter(rec(None))
    assert not any(f.filter(rec("busy")) for _ in range(999))
    assert f.filter(rec(None))  # an ordinary event is never held back
    time.sleep(0.35)
    later = rec("busy")
    assert f.filter(later) and getattr(later, FIELDS) == {"client": "10.0.0.9", "count": 1000}


def test_tftp_request_flood_is_refused_beyond_the_caps_and_dead_transfers_end(lab, cli):
    write_state(cli.state)
    with start(lab, cli, tftp_per_client=8, tftp_transfers=64) as srv:
        pid = srv.pid_of("tftp")
        attacker, n1 = lab.host(ip="10.99.0.66"), node(lab)
        assert curl(n1, f"tftp://{SERVER_IP}:{TFTP[1]}/boot.ipxe").returncode == 0  # warm: sockets, caches
        base = fds(pid, "socket")
        got, held = in_ns(attacker, rrq_burst, TFTP, 3000, BIG, timeout=255, blksize=1001, windowsize=64)
        try:
            assert got["served"] == 8 and got["error 3"] >= 2900, got
            assert all(b"timeout" not in pkt for _, _, pkt in held)  # 255 s is not acknowledged
            assert fds(pid, "socket") <= base + 2 * 8
            # The node and the other service are served while the attacker holds its share.
            assert curl(n1, f"tftp://{SERVER_IP}:{TFTP[1]}/boot.ipxe").returncode == 0
            assert (
                curl(n1, "-o", "/dev/null", "-w", "%{http_code}", f"http://{SERVER_IP}:{HTTP[1]}/boot/ipxe").stdout
                == "200"
            )
            refused = lines(srv, "logger=tftp", "msg=refused")
            assert 1 <= len(refused) <= (os.cpu_count() or 1), refused
            # The held transfers were never acknowledged: gone within a few client timers,
            # not the 34 minutes timeout=255 used to buy.
            gone = wait_for(lambda: fds(pid, "socket") <= base, 45, "transfers still open")
            assert gone < 45
        finally:
            for s, _, _ in held:
                s.close()
        time.sleep(max(0.0, 10.5 - gone))  # past the log interval: the next refusal carries the count
        got, held = in_ns(attacker, rrq_burst, TFTP, 20, BIG)
        for s, _, _ in held:
            s.close()
        counted = [
            int(m.group(1)) for ln in lines(srv, "logger=tftp", "msg=refused") if (m := re.search(r" count=(\d+)", ln))
        ]
        # A line per TFTP process (serve runs one per CPU): their counts add up to the flood.
        assert sum(counted) >= 2900, lines(srv, "msg=refused")
        assert len(lines(srv, "logger=tftp")) < 60
        assert srv.proc.poll() is None


def test_odd_block_sizes_keep_memory_within_the_packet_budget(lab, cli):
    """48 transfers of a 1 MB file at 48 block sizes at once: prebuilt packets would copy the
    file per size (~53 MB); the budget (4 MB here) holds them and the rest are built as
    they go. Memory goes back down when they end. One TFTP process: the one measured."""
    files = write_state(cli.state)
    with start(lab, cli, workers=1, tftp_per_client=48, tftp_transfers=48, tftp_cache_mb=4) as srv:
        pid = srv.pid_of("tftp")
        attacker = lab.host(ip="10.99.0.66")
        in_ns(attacker, drive, TFTP, KERNEL, [1468])  # warm: one transfer's worth of allocations
        base = rss_mb(pid)
        with Sampler(pid) as sampler:
            got = in_ns(attacker, drive, TFTP, KERNEL, [509 + 19 * i for i in range(48)])
        assert all(sha(g) == sha(files["/" + KERNEL]) for g in got)
        assert sampler.peak_rss - base < 24, (base, sampler.peak_rss)
        time.sleep(1)
        assert rss_mb(pid) - base < 16, (base, rss_mb(pid))
        assert srv.proc.poll() is None


def read_until_closed(sock: socket.socket, timeout: float, t0: float | None = None) -> tuple[bytes, float]:
    """Everything the server sends until it closes; and when it closed (seconds after t0,
    by default now)."""
    t0 = time.monotonic() if t0 is None else t0
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return data, float("inf")
    except ConnectionResetError:
        pass
    return data, time.monotonic() - t0


def http_attack(server: tuple[str, int]) -> dict:
    """From one host: 60 silent connections (20 are the per-client cap), then on the
    admitted ones what the header and idle timeouts do."""
    t0 = time.monotonic()
    silent = [socket.create_connection(server, timeout=5) for _ in range(60)]
    answers = [read_until_closed(s, 6, t0) for s in silent]
    for s in silent:
        s.close()
    slow = [socket.create_connection(server, timeout=5) for _ in range(10)]
    t0 = time.monotonic()
    head = b"GET /boot/ipxe HTTP/1.1\r\nHost: x\r\n" + b"X-a: b\r\n" * 100
    closed: dict[int, float] = {}
    for i in range(len(head)):  # a byte every 0.2 s on each: never the blank line
        if len(closed) == len(slow) or time.monotonic() - t0 > 8:
            break
        for k, s in enumerate(slow):
            if k in closed:
                continue
            try:
                s.send(head[i : i + 1])
            except OSError:
                closed[k] = time.monotonic() - t0
        time.sleep(0.2)
    for s in slow:
        s.close()
    idle = socket.create_connection(server, timeout=5)
    idle.sendall(b"GET /boot/ipxe HTTP/1.1\r\nHost: x\r\n\r\n")
    first = idle.recv(65536)
    _, idle_closed = read_until_closed(idle, 10)
    idle.close()
    return {"silent": answers, "slow": closed, "idle_first": first, "idle_closed": idle_closed}


def test_http_connection_flood_slowloris_and_idle_are_refused_or_closed(lab, cli):
    write_state(cli.state)
    with start(
        lab, cli, http_connections=40, http_per_client=20, http_header_timeout=2, http_keepalive_timeout=3
    ) as srv:
        pid = srv.pid_of("http")
        attacker, n1 = lab.host(ip="10.99.0.66"), node(lab)
        base = fds(pid)
        with Sampler(pid) as sampler:
            got = in_ns(attacker, http_attack, HTTP)
            assert (
                curl(n1, "-o", "/dev/null", "-w", "%{http_code}", f"http://{SERVER_IP}:{HTTP[1]}/boot/ipxe").stdout
                == "200"
            )
        busy = [d for d, _ in got["silent"] if d.startswith(b"HTTP/1.1 503")]
        assert len(busy) == 40 and all(b"\r\nRetry-After: 5\r\n" in d for d in busy), got["silent"][:3]
        admitted = [t for d, t in got["silent"] if not d]
        assert len(admitted) == 20 and all(1.5 < t < 4 for t in admitted), admitted  # header timeout: 2 s
        assert len(got["slow"]) == 10 and all(t < 4.5 for t in got["slow"].values()), got["slow"]
        assert got["idle_first"].startswith(
            b"HTTP/1.1 404"
        )  # not a node: answered, kept alive and got["idle_closed"] < 5, got["idle_closed"]
        assert sampler.peak_fds <= base + 2 * (40 + 64) + 4
        refused = lines(srv, "logger=http", "msg=refused")
        assert 1 <= len(refused) <= 2, refused
        assert srv.proc.poll() is None and os.path.exists(f"/proc/{pid}")
