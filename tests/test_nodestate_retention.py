"""Node-state retention (issue 17.6): events, transfers and discovered MACs are trimmed by age
and by count, oldest first and in batches; recent records and each node's latest stage survive.
Then against a real `provisioner serve` whose history strangers grow with requests for missing
files: it trims at start and every cluster.retention.interval."""

from __future__ import annotations

import sys
import textwrap
import time

import pytest

from labs.serve import IMAGE, NODES, Serve, write_state
from labs.site import node, write_site
from provisioner.inventory.model import Retention
from provisioner.nodestate import NodeStateDB
from provisioner.nodestate.db import PRUNE_BATCH

DAY = 86400.0


def _fill(db: NodeStateDB, now: float, old: int, recent: int) -> None:
    """`old` rows 40 days old and `recent` rows of the last hour in each retained table; the
    old events belong to nodes old0..old9, whose latest event is among them."""
    db.record_stages(
        [(f"old{i % 10}", "kernel", now - 40 * DAY + i, None) for i in range(old)]
        + [(f"new{i % 10}", "dhcp", now - 3600 + i * 3600 / recent, None) for i in range(recent)]
    )
    db.record_transfers(
        [("tftp", "10.99.0.9:1000", None, f"old{i}", 0, 0.0, 0, "not found", now - 40 * DAY + i) for i in range(old)]
        + [("tftp", "10.99.0.9:1000", None, f"new{i}", 0, 0.0, 0, "not found", now - 3600 + i) for i in range(recent)]
    )
    db.record_discoveries(
        [(f"02:00:00:00:{i // 256:02x}:{i % 256:02x}", 7, None, None, now - 40 * DAY + i) for i in range(old)]
        + [(f"02:00:00:01:{i // 256:02x}:{i % 256:02x}", 7, None, None, now - 3600 + i) for i in range(recent)],
        [],
    )


def _count(db: NodeStateDB, table: str, where: str = "1") -> int:
    return db._conn().execute(f"SELECT COUNT(*) FROM {table} WHERE {where}").fetchone()[0]


def test_trimmed_by_age_and_count_keeping_recent_rows_and_each_nodes_latest_stage(tmp_path):
    db = NodeStateDB(tmp_path / "nodes.sqlite")
    now = time.time()
    _fill(db, now, old=PRUNE_BATCH * 2 + 500, recent=3000)  # several batches of each
    limits = Retention(days=30, events=1000, transfers=2000, discovered=100)
    deleted = db.prune(limits, now)
    # transfers and discovered MACs: the newest up to the count, nothing older than `days`
    assert _count(db, "transfers") == 2000 and _count(db, "transfers", f"at < {now - 3600 + 1000}") == 0
    assert _count(db, "discovered") == 100
    assert min(r["last_seen"] for r in db.discovered()) == now - 3600 + 2900
    # events: each node's latest survives even when old; the rest are the newest
    assert _count(db, "events") == 1000
    assert sorted(db.last_stages()) == sorted([f"old{i}" for i in range(10)] + [f"new{i}" for i in range(10)])
    assert _count(db, "events", "node LIKE 'old%'") == 10
    assert deleted == {"events": 4500 + 3000 - 1000, "transfers": 4500 + 1000, "discovered": 4500 + 2900}
    # a second pass finds nothing; by age alone with room to spare, only the old go
    assert db.prune(limits, now) == {"events": 0, "transfers": 0, "discovered": 0}
    _fill(db, now, old=300, recent=0)
    assert db.prune(Retention(days=30), now) == {"events": 300, "transfers": 300, "discovered": 300}


TFTP_FLOOD = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    n, got = int(sys.argv[1]), 0
    for i in range(n):
        s.sendto(b"\\x00\\x01" + f"missing-{i}".encode() + b"\\x00octet\\x00", ("10.99.0.1", 69))
        if i % 20 == 19:  # keep at most 20 unanswered, like a client in a hurry
            try:
                while got < i - 10:
                    s.recvfrom(600); got += 1
            except socket.timeout:
                pass
    print(n)
""")
LIMITS = {"events": 100, "transfers": 100, "discovered": 20}


@pytest.mark.netns
def test_serve_trims_a_history_flooded_with_missing_files(lab, cli, tmp_path):
    write_site(
        cli.site,
        nodes=[node(n, ip, mac) for n, (ip, mac) in NODES.items()],
        profiles={"default": {"image": IMAGE}},
        retention={"days": 30, **LIMITS, "interval": 1},
    )
    write_state(cli.state)
    db = NodeStateDB(cli.state / "nodes.sqlite")
    now = time.time()
    _fill(db, now, old=3000, recent=300)
    with Serve(lab, cli, services="tftp,http") as srv:
        srv.wait_log('msg="trimmed node-state history"')
        assert [_count(db, t) for t in LIMITS] == list(LIMITS.values())
        assert _count(db, "transfers", f"at < {now - DAY}") == 0  # the old are gone, the newest kept
        assert _count(db, "transfers", "path = 'new299'") == 1
        after = len(srv.lines)
        client = lab.host(ip="10.99.0.60")
        script = tmp_path / "flood.py"
        script.write_text(TFTP_FLOOD)
        client.run([sys.executable, str(script), "600"], timeout=120)
        deadline = time.time() + 30
        while _count(db, "transfers", "path = 'missing-599'") == 0 and time.time() < deadline:
            time.sleep(0.2)
        assert _count(db, "transfers", "path = 'missing-599'") == 1  # the newest request is recorded
        srv.wait_log("transfers=", after=after)  # the next trim after the flood
        deadline = time.time() + 10
        while _count(db, "transfers") > LIMITS["transfers"] and time.time() < deadline:
            time.sleep(0.2)
        assert _count(db, "transfers") <= LIMITS["transfers"]
        assert _count(db, "transfers", "path = 'missing-599'") == 1
        assert _count(db, "transfers", "path LIKE 'new%'") == 0
    assert not [ln for ln in srv.lines if "Traceback" in ln]
