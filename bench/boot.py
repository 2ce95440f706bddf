#!/usr/bin/env python3
"""Boot time of a virtual node, from qemu start to `idle` in sinfo, split by boot stage, and
the share of it spent inside provisioner's own servers (goal: under 5%).

Runs the demo (`provisioner demo`, one node, qemu TCG) and reads what the servers recorded in
the node-state database: each boot stage with its timestamp, and each TFTP and HTTP transfer
with the time the server spent on it. DHCP answers take well under a millisecond each
(bench/dhcp.py); each DHCP exchange is counted as 1 ms, so that part is an upper bound.

    .venv/bin/python bench/boot.py [--work DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from provisioner.demo.run import Demo  # noqa: E402
from provisioner.nodestate import NodeStateDB  # noqa: E402

DHCP_EXCHANGE_S = 0.001  # an upper bound per DISCOVER/REQUEST pair


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="demo work dir (default: a temporary one)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="pv-bench-boot-"))
    demo = Demo(work.resolve(), nodes=1, echo=lambda line: None)
    demo.run()
    db = NodeStateDB(demo.state.db)
    t0, t1 = demo.booted_at, demo.idle_at
    events = [e for e in db.timeline("node01") if e["at"] >= t0]
    transfers = [t for t in db.transfers("node01") if t["at"] >= t0]
    total = t1 - t0
    print(f"qemu start -> idle: {total:.1f} s")
    print("stage                 at (s)   took (s)")
    for i, e in enumerate(events):
        took = (events[i + 1]["at"] if i + 1 < len(events) else t1) - e["at"]
        print(f"{e['stage']:<20} {e['at'] - t0:7.1f}  {took:8.1f}")
    by_proto: dict[str, float] = {}
    for t in transfers:
        by_proto[t["protocol"]] = by_proto.get(t["protocol"], 0.0) + t["duration"]
    dhcp = sum(1 for e in events if e["stage"] == "dhcp") * DHCP_EXCHANGE_S
    server = sum(by_proto.values()) + dhcp
    for proto, secs in sorted(by_proto.items()):
        print(
            f"server time {proto:<5} {secs:8.3f} s ({len([t for t in transfers if t['protocol'] == proto])} transfers)"
        )
    print(f"server time dhcp  {dhcp:8.3f} s (upper bound)")
    print(f"server share: {100 * server / total:.2f}% of the boot (goal < 5%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
