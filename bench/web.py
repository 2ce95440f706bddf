#!/usr/bin/env python3
"""The web console's cluster view from a 10,000-node state: serve's HTTP service in this
process on loopback, a node-state database with every node's boot (8 stages each), three
transfers and facts per node, some failed boots and discovered MACs; a logged-in client asks
for `/` (first page of 100 rows), a filtered page and a late page.

Prints the first view after serve starts (which waits for serve's one full read of the node
table), then for each kind of page the median and worst render with the rows reused (within
STATUS_TTL: only filtered and paged), with the rows made again (after a change: the table
brought up to date from new rows, every row rebuilt), and with the whole table read from
the database again (what serve does once, at start). Goal: the cluster view under 200 ms.

    .venv/bin/python bench/web.py [--nodes 10000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from ipaddress import IPv4Network
from pathlib import Path

# bench/http.py beside this script would stand in for the standard library's http package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import requests  # noqa: E402
import yaml  # noqa: E402

from provisioner.artifacts import layout  # noqa: E402
from provisioner.inventory import load_inventory  # noqa: E402
from provisioner.nodestate import NodeStateDB  # noqa: E402
from provisioner.paths import State  # noqa: E402
from provisioner.servers.http import HttpServer  # noqa: E402
from provisioner.servers.http.web import NodeTable  # noqa: E402

GOAL_MS = 200.0
TOKEN = "bench-web-token"
STAGES = ("dhcp", "bootloader", "ipxe", "kernel", "initramfs", "overlay", "registered", "idle")


def site(path: Path, count: int) -> None:
    hosts = IPv4Network("10.250.0.0/16")
    nodes = [
        {
            "name": f"n{i:05d}",
            "ip": str(hosts[i + 10]),
            "mac": f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
        }
        for i in range(count)
    ]
    doc = {
        "cluster": {"name": "bench", "network": {"subnet": str(hosts), "master": str(hosts[1])}},
        "profiles": {"default": {"image": "img"}},
        "nodes": nodes,
    }
    path.mkdir(parents=True)
    (path / "cluster.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def fill(db: NodeStateDB, count: int) -> None:
    now = time.time() - 3600
    events, transfers = [], []
    for i in range(count):
        name = f"n{i:05d}"
        stages = STAGES if i % 500 else (*STAGES[:5], "initramfs-failed")
        events += [
            (name, s, now + i * 0.01 + k, "root mount timed out" if "failed" in s else None)
            for k, s in enumerate(stages)
        ]
        transfers += [
            ("http", "10.250.0.1:1", name, f"/images/img/versions/3/{f}", 1 << 20, 0.1, 0, "ok", now + i * 0.01)
            for f in ("vmlinuz", "initramfs.img", "overlay")
        ]
    db.record_stages(events)
    db.record_transfers(transfers)
    for i in range(0, count, 10):
        db.set_facts(f"n{i:05d}", {"cpus": 64, "memory_mb": 256000})
    db.record_discoveries([(f"52:54:00:ff:00:{i:02x}", 7, None, None, now) for i in range(20)], [])


def timed(s: requests.Session, url: str) -> float:
    start = time.perf_counter()
    r = s.get(url)
    took = (time.perf_counter() - start) * 1000
    if r.status_code != 200 or "n0" not in r.text:
        sys.exit(f"{url}: {r.status_code}")
    return took


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples):6.1f} ms median, {max(samples):6.1f} worst"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        root = Path(tmp)
        site(root / "site", args.nodes)
        state = State(root / "state")
        layout.api_token(state).parent.mkdir(parents=True, mode=0o700)
        layout.api_token(state).write_text(TOKEN)
        db = NodeStateDB(state.db)
        t = time.perf_counter()
        fill(db, args.nodes)
        print(
            f"state: {args.nodes} nodes, {len(STAGES) * args.nodes} events, {3 * args.nodes} transfers "
            f"({time.perf_counter() - t:.1f} s to write)"
        )
        inventory = load_inventory(root / "site" / "cluster.yaml")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = HttpServer(inventory, state, "127.0.0.1", port, db)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            server.ready.wait(60)
            base = f"http://127.0.0.1:{port}"
            s = requests.Session()
            s.post(f"{base}/login", data={"token": TOKEN, "next": "/"}, allow_redirects=False).raise_for_status()
            urls = {"first page": "/", "filtered": "/?q=n0999", "page 90": "/?page=90"}
            first = timed(s, base + "/")
            print(f"first view after serve started (waits for its read of the node table): {first:.0f} ms")
            console = server.boot.web
            changed = []
            for what, path in urls.items():
                reused = [timed(s, base + path) for _ in range(args.rounds)]
                rebuilt, reread = [], []
                for i in range(max(3, args.rounds // 4)):
                    db.record_stage(f"n{i:05d}", "idle")
                    console._state = None  # as after STATUS_TTL
                    rebuilt.append(timed(s, base + path))
                    console._state, console.table = None, NodeTable()
                    reread.append(timed(s, base + path))
                changed += rebuilt
                print(f"{what:>10}: {ms(reused)} rows reused; {ms(rebuilt)} rows made again; {ms(reread)} table reread")
            worst = max(changed)
            verdict = "meets" if worst < GOAL_MS else "misses"
            print(
                f"goal: cluster view < {GOAL_MS:.0f} ms from a {args.nodes}-node state after a change: "
                f"{verdict} it (worst {worst:.0f} ms)"
            )
        finally:
            server.shutdown()
            thread.join(30)
            db.close()


if __name__ == "__main__":
    main()
