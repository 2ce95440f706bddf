#!/usr/bin/env python3
"""How long an overlay edit takes to reach 1,000 running nodes (goal: under 10 s).

A real `provisioner serve --services http` on loopback; each simulated node is an asyncio
client bound to its own address (127.1.x.y: the whole of 127/8 is loopback) that does what
the node agent does: long-poll /api/v1/runtime with its credential, and on a new archive
fetch it and check its SHA-256 and size. After every node runs the first generation, one
runtime file every node shares is edited and `overlay build` run. Prints how long the build
took to publish, the time from the publication (the `current` rename) until the last node has
the new archive verified, and the master's CPU time per refreshed node (the serve process,
user + system, over the round).

    .venv/bin/python bench/runtime.py [--nodes 1000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from labs.net import terminate
from provisioner.artifacts.overlay_build import runtime_digest
from provisioner.paths import State

HOST = "127.1.0.1"
PORT = 8327  # rt-
OFFER_HEADER = "x-provisioner-offer:"


def address(i: int) -> str:
    return f"127.1.{1 + i // 250}.{1 + i % 250}"


def write_site(site: Path, nodes: int) -> None:
    entries = [
        {"name": f"n{i:04d}", "ip": address(i), "mac": f"52:54:01:00:{i >> 8:02x}:{i & 255:02x}"} for i in range(nodes)
    ]
    doc = {
        "cluster": {
            "name": "bench",
            "domain": "bench.cluster",
            "network": {"subnet": "127.1.0.0/16", "master": HOST},
            "secure": False,  # unprivileged source ports: the bench runs no root-only clients
            "limits": {"http_connections": 4 * nodes, "http_per_client": 8},
        },
        "profiles": {"default": {"overlays": ["app"]}},
        "nodes": entries,
    }
    site.mkdir(parents=True)
    (site / "cluster.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    app = site / "overlays" / "app"
    (app / "etc").mkdir(parents=True)
    (app / "_overlay.yaml").write_text("runtime: true\n")
    (app / "etc" / "app.conf").write_text("round=0\n")


async def request(ip: str, path: str, cred: str) -> tuple[int, bytes, bytes]:
    """One HTTP/1.1 GET from `ip` (connection closed after it): status, head, body."""
    reader, writer = await asyncio.open_connection(HOST, PORT, local_addr=(ip, 0))
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {cred}\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


class Node:
    def __init__(self, i: int, cred: str):
        self.ip, self.cred = address(i), cred
        self.have = "none"
        self.got_at: dict[str, float] = {}  # sha -> when verified

    async def run(self) -> None:
        while True:
            try:
                path = f"/api/v1/runtime?have={self.have}&wait=50&archive=1"
                status, head, body = await request(self.ip, path, self.cred)
                if status != 200:
                    await asyncio.sleep(1)
                    continue
                carried = [h for h in head.decode().splitlines() if h.lower().startswith(OFFER_HEADER)]
                if carried:  # the answer is the archive, the offer in a header (as the agent asks)
                    words = carried[0].split(":", 1)[1].split()
                    offer, archive = dict(zip(words[::2], words[1::2], strict=False)), body
                else:
                    offer = dict(line.split(" ", 1) for line in body.decode().splitlines())
                    if offer.get("retry"):
                        await asyncio.sleep(float(offer["retry"]))
                    if offer["sha256"] == self.have:
                        continue
                    status, _, archive = await request(self.ip, "/api/v1/runtime/archive", self.cred)
                if (
                    status == 200
                    and len(archive) == int(offer["size"])
                    and hashlib.sha256(archive).hexdigest() == offer["sha256"]
                ):
                    self.have = offer["sha256"]
                    self.got_at[self.have] = time.monotonic()
            except (OSError, ValueError, KeyError, IndexError):
                await asyncio.sleep(1)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def expected(state: Path, nodes: list[str]) -> dict[str, str]:
    """Each node's published runtime archive hash, as the server offers it."""
    return {n: runtime_digest(State(state), n) or "" for n in nodes}


async def bench(t: Path, exe: str, nodes: int, rounds: int) -> None:
    env = {**os.environ, "PROVISIONER_SITE": str(t / "site"), "PROVISIONER_STATE": str(t / "state")}
    names = [f"n{i:04d}" for i in range(nodes)]
    started = time.monotonic()
    subprocess.run([exe, "overlay", "build"], env=env, check=True, capture_output=True)
    print(f"first build of {nodes} nodes: {time.monotonic() - started:.1f} s")
    creds = {n: (t / "state" / "secrets" / "credentials" / n).read_text().strip() for n in names}
    log = open(t / "serve.log", "w")  # noqa: SIM115 (closed below)
    serve = subprocess.Popen(
        [exe, "serve", "--services", "http", "--listen", HOST, "--http-port", str(PORT), "--log-level", "warning"],
        env=env,
        stderr=log,
    )
    clients = [Node(i, creds[n]) for i, n in enumerate(names)]
    tasks: list[asyncio.Task[None]] = []
    try:
        await asyncio.sleep(2)
        tasks = [asyncio.create_task(c.run()) for c in clients]
        want = expected(t / "state", names)
        while not all(want[n] in c.got_at for n, c in zip(names, clients, strict=True)):
            await asyncio.sleep(0.2)
        print(f"{nodes} nodes run the first generation")
        for r in range(1, rounds + 1):
            await asyncio.sleep(3)  # every client back in its long-poll
            (t / "site" / "overlays" / "app" / "etc" / "app.conf").write_text(f"round={r}\n")
            cpu0, t0 = cpu_seconds(serve.pid), time.monotonic()
            current = t / "state" / "overlays" / "current"
            before = os.readlink(current)
            build = await asyncio.create_subprocess_exec(exe, "overlay", "build", env=env, stdout=subprocess.DEVNULL)
            while os.readlink(current) == before:  # the build publishes with one rename
                await asyncio.sleep(0.01)
            t1 = time.monotonic()
            await build.wait()
            want = expected(t / "state", names)
            while not all(want[n] in c.got_at for n, c in zip(names, clients, strict=True)):
                if time.monotonic() - t1 > 120:
                    missing = sum(want[n] not in c.got_at for n, c in zip(names, clients, strict=True))
                    raise SystemExit(f"round {r}: {missing} nodes never got the new archive")
                await asyncio.sleep(0.05)
            last = max(c.got_at[want[n]] for n, c in zip(names, clients, strict=True))
            cpu = cpu_seconds(serve.pid) - cpu0
            print(
                f"round {r}: published {t1 - t0:.2f} s after the edit, last node {last - t1:.2f} s after that "
                f"({last - t0:.2f} s after the edit); master CPU {cpu:.2f} s = {1000 * cpu / nodes:.2f} ms per node"
            )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        terminate(serve, 30)
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    exe = shutil.which("provisioner") or str(Path(sys.executable).parent / "provisioner")
    with tempfile.TemporaryDirectory(prefix="rt-bench-") as tmp:
        write_site(Path(tmp) / "site", a.nodes)
        asyncio.run(bench(Path(tmp), exe, a.nodes, a.rounds))


if __name__ == "__main__":
    main()
