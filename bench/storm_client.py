#!/usr/bin/env python3
"""The simulated nodes of bench/storm.py: each walks a network boot the way firmware, iPXE and
the initramfs do, with its own MAC and address, in one asyncio process.

Per node: DHCP as the UEFI PXE ROM (DISCOVER/OFFER/REQUEST/ACK, broadcast from the node's MAC
on a raw socket, or through its rack's relay agent: giaddr, port 67, unicast both ways) ->
the boot file over TFTP (blksize 1468, lock-step ACKs) -> DHCP again as iPXE -> the iPXE
script over HTTP, then the kernel and initramfs it names -> DHCP again as the initramfs ->
(full stack only) the node's secret overlay from its own address and a privileged port, and
its stage and facts reports with its credential. Each step retries as a client of
its kind does (DHCP 4 tries, TFTP 5 retransmits, HTTP 3 tries); a node that runs out of tries
fails there. Prints one JSON object: per-step latencies, per-node totals, failures by step.

    storm_client.py CONFIG.json   (written by bench/storm.py)
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import random
import re
import socket
import struct
import sys
import time
from collections import defaultdict
from ipaddress import IPv4Address

import aiohttp

ETH_P_IP = 0x0800
SO_RCVBUFFORCE = 33  # root may pass net.core.rmem_max; Python's socket module lacks the name
SO_ATTACH_FILTER = 26
# `tcpdump -dd 'ip and udp dst port 68'`: the raw socket must not see (and drop DHCP among) every
# TFTP and HTTP frame of the storm.
DHCP_ONLY = [
    (0x28, 0, 0, 0x0C),
    (0x15, 0, 8, 0x800),
    (0x30, 0, 0, 0x17),
    (0x15, 0, 6, 0x11),
    (0x28, 0, 0, 0x14),
    (0x45, 4, 0, 0x1FFF),
    (0xB1, 0, 0, 0x0E),
    (0x48, 0, 0, 0x10),
    (0x15, 0, 1, 0x44),
    (0x06, 0, 0, 0x40000),
    (0x06, 0, 0, 0),
]
COOKIE = b"\x63\x82\x53\x63"
DHCP_TRIES, DHCP_WAIT = 4, 4.0
TFTP_TRIES, TFTP_WAIT = 5, 1.0
HTTP_TRIES, HTTP_TIMEOUT = 3, 120.0
BLKSIZE = 1468


class Failed(Exception):
    def __init__(self, step: str, why: str):
        super().__init__(f"{step}: {why}")
        self.step = step


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def frame(mac: bytes, bootp: bytes) -> bytes:
    """Ethernet broadcast / IPv4 0.0.0.0 -> 255.255.255.255 / UDP 68 -> 67 around `bootp`."""
    udp = struct.pack("!HHHH", 68, 67, 8 + len(bootp), 0) + bootp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes(4), b"\xff" * 4)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return b"\xff" * 6 + mac + struct.pack("!H", ETH_P_IP) + ip + udp


def bootp(mac: bytes, xid: int, options: list[tuple[int, bytes]], giaddr: bytes = bytes(4)) -> bytes:
    head = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s",
        1,
        1,
        6,
        1 if giaddr != bytes(4) else 0,  # hops: a relay agent's
        xid,
        0,
        0x8000,
        bytes(4),
        bytes(4),
        bytes(4),
        giaddr,
        mac.ljust(16, b"\0"),
        b"",
        b"",
    )
    opts = b"".join(bytes([code, len(v)]) + v for code, v in options)
    return head + COOKIE + opts + b"\xff"


def parse_reply(data: bytes) -> tuple[int, dict] | None:
    """(xid, fields) of a BOOTP reply inside an Ethernet frame, or None."""
    if len(data) < 14 + 20 + 8 + 240 or data[12:14] != b"\x08\x00" or data[23] != 17:
        return None
    ihl = (data[14] & 0x0F) * 4
    udp = 14 + ihl
    if struct.unpack("!H", data[udp + 2 : udp + 4])[0] != 68:
        return None
    return parse_bootp(data[udp + 8 :])


def parse_bootp(b: bytes) -> tuple[int, dict] | None:
    """(xid, fields) of a BOOTP reply, or None."""
    if len(b) < 240 or b[0] != 2 or b[236:240] != COOKIE:
        return None
    xid = struct.unpack("!I", b[4:8])[0]
    opts, i = {}, 240
    while i < len(b) and b[i] != 255:
        if b[i] == 0:
            i += 1
            continue
        if i + 1 >= len(b):
            break
        code, n = b[i], b[i + 1]
        opts[code] = b[i + 2 : i + 2 + n]
        i += 2 + n
    fields = {
        "yiaddr": str(IPv4Address(b[16:20])),
        "siaddr": str(IPv4Address(b[20:24])),
        "file": b[108:236].split(b"\0", 1)[0].decode(errors="replace"),
        "type": opts.get(53, b"\0")[0],
        "server_id": opts.get(54),
    }
    if 67 in opts:
        fields["file"] = opts[67].rstrip(b"\0").decode(errors="replace")
    return xid, fields


class Dhcp:
    """One raw socket for every node; replies are matched to their DORA by xid."""

    def __init__(self, iface: str):
        self.relays: list[socket.socket] = []
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
        program = b"".join(struct.pack("HBBI", *insn) for insn in DHCP_ONLY)
        self._filter = ctypes.create_string_buffer(program)  # must outlive the setsockopt call
        fprog = struct.pack("HL", len(DHCP_ONLY), ctypes.addressof(self._filter))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        self.sock.bind((iface, 0))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)  # a burst of replies
        self.sock.setblocking(False)
        self.waiting: dict[int, asyncio.Future] = {}
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def relay(self, addresses: list[str], server: str) -> None:
        """Send through relay agents at `addresses` (a switch's DHCP relay per rack: port 67,
        giaddr set, the answer unicast back to it) instead of broadcasting; a node keeps one."""
        self.server = server
        for ip in addresses:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
            s.bind((ip, 67))
            s.setblocking(False)
            asyncio.get_running_loop().add_reader(s.fileno(), self._readable, s, parse_bootp)
            self.relays.append(s)

    def _readable(self, sock: socket.socket | None = None, parse=parse_reply) -> None:
        while True:
            try:
                data = (sock or self.sock).recv(2048)
            except BlockingIOError:
                return
            got = parse(data)
            if got is not None:
                fut = self.waiting.get(got[0])
                if fut is not None and not fut.done():
                    fut.set_result(got[1])

    async def _send(self, mac: bytes, xid: int, options: list[tuple[int, bytes]]) -> None:
        while True:
            try:
                if self.relays:
                    sock = self.relays[mac[-1] % len(self.relays)]
                    giaddr = socket.inet_aton(sock.getsockname()[0])
                    sock.sendto(bootp(mac, xid, options, giaddr), (self.server, 67))
                else:
                    self.sock.send(frame(mac, bootp(mac, xid, options)))
                return
            except BlockingIOError:
                await asyncio.sleep(0.001)

    async def _ask(self, mac: bytes, msg: bytes, want: int, extra: list[tuple[int, bytes]]) -> dict | None:
        xid = random.getrandbits(32)
        loop = asyncio.get_running_loop()
        for attempt in range(DHCP_TRIES):
            fut = loop.create_future()
            self.waiting[xid] = fut
            try:
                await self._send(mac, xid, [(53, msg), *extra])
                got = await asyncio.wait_for(fut, DHCP_WAIT * (attempt + 1))
            except TimeoutError:
                continue
            finally:
                self.waiting.pop(xid, None)
            if got["type"] == want:
                return got
            if got["type"] == 6:  # NAK
                return None
        return None

    async def dora(self, mac: bytes, extra: list[tuple[int, bytes]]) -> dict:
        offer = await self._ask(mac, b"\x01", 2, extra)
        if offer is None:
            raise Failed("dhcp", "no offer")
        ip = socket.inet_aton(offer["yiaddr"])
        ack = await self._ask(mac, b"\x03", 5, [*extra, (50, ip), (54, offer["server_id"] or bytes(4))])
        if ack is None:
            raise Failed("dhcp", "no ack")
        return ack


class TftpGet(asyncio.DatagramProtocol):
    """One RRQ with blksize, lock-step ACKs, retransmitting the last packet on silence."""

    def __init__(self, request: bytes):
        self.request, self.size, self.expected = request, 0, 1
        self.done = asyncio.get_running_loop().create_future()
        self.last: tuple[bytes, tuple[str, int]] | None = None
        self.blksize = 512
        self.progress = 0.0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.progress = time.monotonic()
        op = struct.unpack("!H", data[:2])[0]
        if op == 6:  # OACK
            opts = data[2:].split(b"\0")
            for k, v in zip(opts[::2], opts[1::2], strict=False):
                if k.lower() == b"blksize":
                    self.blksize = int(v)
            self._ack(0, addr)
        elif op == 3:
            block = struct.unpack("!H", data[2:4])[0]
            if block == self.expected & 0xFFFF:
                self.size += len(data) - 4
                self.expected += 1
                self._ack(block, addr)
                if len(data) - 4 < self.blksize and not self.done.done():
                    self.done.set_result(self.size)
            else:
                self._ack(block, addr)
        elif op == 5 and not self.done.done():
            self.done.set_exception(Failed("tftp", data[4:].split(b"\0")[0].decode(errors="replace")))

    def _ack(self, block: int, addr) -> None:
        pkt = struct.pack("!HH", 4, block)
        self.last = (pkt, addr)
        self.transport.sendto(pkt, addr)

    def error_received(self, exc: Exception) -> None:
        pass


async def tftp(local_ip: str, server: str, name: str) -> int:
    loop = asyncio.get_running_loop()
    req = struct.pack("!H", 1) + name.encode() + b"\0octet\0blksize\0" + str(BLKSIZE).encode() + b"\0tsize\0" + b"0\0"
    transport, proto = await loop.create_datagram_endpoint(lambda: TftpGet(req), local_addr=(local_ip, 0))
    try:
        transport.sendto(req, (server, 69))
        proto.progress = time.monotonic()
        tries = 0
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(proto.done), TFTP_WAIT)
            except TimeoutError:
                if time.monotonic() - proto.progress < TFTP_WAIT:
                    continue
                tries += 1
                if tries >= TFTP_TRIES:
                    raise Failed("tftp", f"timed out at block {proto.expected}") from None
                if proto.last is None:
                    transport.sendto(req, (server, 69))
                else:
                    transport.sendto(*proto.last)
    finally:
        transport.close()


async def http_get(session: aiohttp.ClientSession, url: str, step: str) -> bytes:
    why = ""
    for attempt in range(HTTP_TRIES):
        try:
            async with session.get(url) as r:
                body = await r.read()
                if r.status == 200:
                    return body
                why = f"HTTP {r.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            why = type(e).__name__
        await asyncio.sleep(1 + attempt)
    raise Failed(step, why)


async def http_post(session: aiohttp.ClientSession, url: str, body: dict, token: str, step: str) -> None:
    why = ""
    for attempt in range(HTTP_TRIES):
        try:
            async with session.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as r:
                await r.read()
                if r.status in (200, 201, 204):
                    return
                why = f"HTTP {r.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            why = type(e).__name__
        await asyncio.sleep(1 + attempt)
    raise Failed(step, why)


PXE = [(60, b"PXEClient:Arch:00007:UNDI:003016"), (93, b"\x00\x07"), (94, b"\x01\x03\x10")]
IPXE = [(60, b"PXEClient:Arch:00007:UNDI:003016"), (93, b"\x00\x07"), (77, b"iPXE")]
INITRAMFS = [(60, b"udhcp 1.35.0")]


class Node:
    def __init__(self, cfg: dict, name: str, ip: str, mac: str, token: str | None):
        self.cfg, self.name, self.ip, self.mac, self.token = cfg, name, ip, mac, token
        self.raw = bytes.fromhex(mac.replace(":", ""))
        self.times: dict[str, float] = {}

    async def step(self, name: str, coro):
        t = time.monotonic()
        out = await coro
        self.times[name] = time.monotonic() - t
        return out

    async def boot(self, dhcp: Dhcp) -> None:
        cfg = self.cfg
        ack = await self.step("dhcp-pxe", dhcp.dora(self.raw, PXE))
        if ack["yiaddr"] != self.ip:
            raise Failed("dhcp", f"got {ack['yiaddr']}, expected {self.ip}")
        await self.step(
            "tftp", tftp(self.ip, ack["siaddr"] if ack["siaddr"] != "0.0.0.0" else cfg["server"], ack["file"])
        )
        ack = await self.step("dhcp-ipxe", dhcp.dora(self.raw, IPXE))
        script_url = ack["file"].replace("${mac}", self.mac).replace("${net0/mac}", self.mac)
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(local_addr=(self.ip, 0), limit=1), timeout=timeout
        ) as s:
            script = (await self.step("script", http_get(s, script_url, "script"))).decode()
            base = re.search(r"^set base (\S+)", script, re.M)
            sub = (lambda u: u.replace("${base}", base.group(1))) if base else (lambda u: u)
            kernel = re.search(r"^kernel (\S+)", script, re.M)
            initrd = re.search(r"^initrd (?:--name \S+ )?(\S+)", script, re.M)
            if not kernel or not initrd:
                raise Failed("script", "no kernel or initrd line")
            await self.step("kernel", http_get(s, sub(kernel.group(1)), "kernel"))
            await self.step("initramfs", http_get(s, sub(initrd.group(1)), "initramfs"))
        await self.step("dhcp-initramfs", dhcp.dora(self.raw, INITRAMFS))
        port = cfg["port"]
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(local_addr=(self.ip, port), limit=1), timeout=timeout
        ) as s:
            url = f"http://{cfg['server']}:{cfg['http_port']}"
            await self.step("overlay", http_get(s, f"{url}/overlays/{self.name}.cpio.gz", "overlay"))
            if self.token is not None:
                await self.step(
                    "reports",
                    self._reports(s, url),
                )

    async def _reports(self, s: aiohttp.ClientSession, url: str) -> None:
        assert self.token is not None
        for stage, detail in (("overlay", "applied"), ("switch-root", "storm")):
            await http_post(s, f"{url}/api/v1/stage", {"stage": stage, "detail": detail}, self.token, "reports")
        facts = {"slurmd": f"NodeName={self.name} CPUs=2 RealMemory=1000", "cpus": 2}
        await http_post(s, f"{url}/api/v1/facts", facts, self.token, "reports")


async def main(path: str) -> None:
    with open(path) as f:
        cfg = json.load(f)
    dhcp = Dhcp(cfg["iface"])
    if cfg.get("relays"):
        dhcp.relay(cfg["relays"], cfg["server"])
    nodes = [Node(cfg, *row) for row in cfg["nodes"]]
    failures: dict[str, list[str]] = defaultdict(list)
    totals: list[float] = []
    start = time.monotonic()
    ramp = float(cfg.get("ramp", 0.0))

    async def one(i: int, node: Node) -> None:
        if ramp:
            await asyncio.sleep(ramp * i / len(nodes))
        t = time.monotonic()
        try:
            await node.boot(dhcp)
        except Failed as e:
            failures[e.step].append(f"{node.name}: {e}")
            return
        except Exception as e:  # a bench bug or an unexpected answer: count it, keep going
            failures["other"].append(f"{node.name}: {type(e).__name__}: {e}")
            return
        totals.append(time.monotonic() - t)

    await asyncio.gather(*(one(i, n) for i, n in enumerate(nodes)))
    steps: dict[str, list[float]] = defaultdict(list)
    for n in nodes:
        for k, v in n.times.items():
            steps[k].append(v)
    print(
        json.dumps(
            {
                "booted": len(totals),
                "failed": sum(len(v) for v in failures.values()),
                "failures": {k: v[:5] for k, v in failures.items()},
                "failures_by_step": {k: len(v) for k, v in failures.items()},
                "last": time.monotonic() - start,
                "totals": totals,
                "steps": steps,
                "client_cpu": sum(os.times()[:2]),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
