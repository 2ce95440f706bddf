"""The node-state SQLite database: one connection per thread, short transactions."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..inventory.model import Retention

# Rows of a retained table are trimmed oldest first by this column (each has an index on it).
RETAINED = {"events": "at", "transfers": "at", "discovered": "last_seen"}
# Rows one trimming transaction deletes: the servers' writer threads wait at most that long.
PRUNE_BATCH = 2000
UPSERT_SEEN = (
    "INSERT INTO discovered(mac, first_seen, last_seen, arch, uuid, ip) VALUES (?1,?5,?5,?2,?3,?4) "
    "ON CONFLICT(mac) DO UPDATE SET last_seen=MAX(last_seen, excluded.last_seen), "
    "arch=COALESCE(excluded.arch, arch), uuid=COALESCE(excluded.uuid, uuid), ip=COALESCE(excluded.ip, ip)"
)

# Boot stages in the order a node passes them.
STAGES = ("dhcp", "bootloader", "ipxe", "kernel", "initramfs", "overlay", "registered", "idle")

SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    mac TEXT PRIMARY KEY, ip TEXT NOT NULL UNIQUE, hostname TEXT,
    expires REAL NOT NULL, updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS discovered (
    mac TEXT PRIMARY KEY, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    arch INTEGER, uuid TEXT, ip TEXT, adopted_as TEXT
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, node TEXT NOT NULL, stage TEXT NOT NULL,
    at REAL NOT NULL, detail TEXT
);
CREATE INDEX IF NOT EXISTS events_node ON events(node, at);
CREATE INDEX IF NOT EXISTS events_at ON events(at);
CREATE INDEX IF NOT EXISTS discovered_seen ON discovered(last_seen);
CREATE TABLE IF NOT EXISTS facts (
    node TEXT PRIMARY KEY, facts TEXT NOT NULL, updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS transfers (
    id INTEGER PRIMARY KEY AUTOINCREMENT, protocol TEXT NOT NULL, client TEXT NOT NULL,
    node TEXT, path TEXT NOT NULL, bytes INTEGER NOT NULL, duration REAL NOT NULL,
    retransmits INTEGER NOT NULL DEFAULT 0, outcome TEXT NOT NULL, at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS transfers_at ON transfers(at);
CREATE TABLE IF NOT EXISTS runtime (
    node TEXT PRIMARY KEY, sha256 TEXT NOT NULL, files TEXT NOT NULL, at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS builds (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, name TEXT NOT NULL,
    duration REAL NOT NULL, at REAL NOT NULL
);
"""


def _private(db: Path) -> None:
    """Root alone reads what nodes reported (the admin API is root's too): the database is
    made 0600 before SQLite opens it, and its WAL and shared-memory files take its mode.
    Files an older version left open are tightened."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        with contextlib.suppress(FileNotFoundError):
            if p.stat().st_mode & 0o077:
                os.chmod(p, 0o600)


class NodeStateDB:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _private(self.path)
        self._local = threading.local()
        # executescript commits on its own, so it cannot run inside _tx; every statement in
        # SCHEMA is idempotent.
        self._conn().executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    class _Tx:
        def __init__(self, conn: sqlite3.Connection):
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type: Any, *_: Any) -> None:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")

    def _tx(self) -> NodeStateDB._Tx:
        return self._Tx(self._conn())

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- boot stages ---------------------------------------------------------------------------
    def record_stage(self, node: str, stage: str, detail: str | None = None, at: float | None = None) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO events(node, stage, at, detail) VALUES (?,?,?,?)", (node, stage, at or time.time(), detail)
            )

    def record_stages(self, rows: Sequence[tuple[str, str, float, str | None]], within: float = 0.0) -> None:
        """Many (node, stage, at, detail) events in one transaction: a boot storm of 10,000
        nodes must not cost 10,000 commits. A row is dropped when its node already has that
        stage less than `within` seconds from it: each TFTP worker process sees only its own
        share of a node's retries."""
        with self._tx() as c:
            c.executemany(
                "INSERT INTO events(node, stage, at, detail) SELECT ?1, ?2, ?3, ?4 WHERE NOT EXISTS "
                "(SELECT 1 FROM events WHERE node = ?1 AND stage = ?2 AND at > ?3 - ?5 AND at < ?3 + ?5)",
                [(*row, within) for row in rows],
            )

    def timeline(self, node: str) -> list[sqlite3.Row]:
        return list(self._conn().execute("SELECT stage, at, detail FROM events WHERE node=? ORDER BY at, id", (node,)))

    def events_after(self, last_id: int, limit: int = 500) -> list[sqlite3.Row]:
        """Events recorded after event `last_id`, in the order written (the console's live feed)."""
        return list(
            self._conn().execute(
                "SELECT id, node, stage, at, detail FROM events WHERE id > ? ORDER BY id LIMIT ?", (last_id, limit)
            )
        )

    def last_event_id(self) -> int:
        return int(self._conn().execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])

    def node_transfers_after(self, last_id: int, limit: int = 5000) -> list[sqlite3.Row]:
        """(id, node, at) of nodes' transfers recorded after transfer `last_id`, in id order."""
        return list(
            self._conn().execute(
                "SELECT id, node, at FROM transfers WHERE id > ? AND node IS NOT NULL ORDER BY id LIMIT ?",
                (last_id, limit),
            )
        )

    def last_transfer_id(self) -> int:
        return int(self._conn().execute("SELECT COALESCE(MAX(id), 0) FROM transfers").fetchone()[0])

    def last_stages(self) -> dict[str, sqlite3.Row]:
        """Each node's latest event by time (not by id: servers write batched events late)."""
        rows = self._conn().execute(
            "SELECT node, stage, at, detail FROM (SELECT node, stage, at, detail, ROW_NUMBER() OVER "
            "(PARTITION BY node ORDER BY at DESC, id DESC) AS n FROM events) WHERE n = 1"
        )
        return {r["node"]: r for r in rows}

    def last_seen(self) -> dict[str, float]:
        """When each node was last heard from: a stage event, a transfer or a facts report."""
        rows = self._conn().execute(
            "SELECT node, MAX(at) AS at FROM (SELECT node, at FROM events "
            "UNION ALL SELECT node, at FROM transfers WHERE node IS NOT NULL "
            "UNION ALL SELECT node, updated AS at FROM facts) GROUP BY node"
        )
        return {r["node"]: r["at"] for r in rows}

    def boot_stage_durations(
        self, markers: Sequence[str], early: Sequence[str], slack: float, buckets: Sequence[float]
    ) -> list[sqlite3.Row]:
        """For /metrics, aggregated here rather than in Python (10,000 nodes' boots are 80,000
        events): for each stage of every node's latest boot, how many steps have a next one,
        their total seconds to it, and how many took at most each of `buckets` (columns b0,
        b1...). A boot starts at the node's latest `markers` event; `early` stages up to `slack`
        seconds before it belong to it (its DHCP, the bootloader that chained iPXE)."""
        marks, before = ",".join("?" * len(markers)), ",".join("?" * len(early))
        counts = "".join(f", SUM(took <= {float(b)!r}) AS b{i}" for i, b in enumerate(buckets))
        return (
            self._conn()
            .execute(
                f"WITH starts AS (SELECT node, MAX(at) AS t0 FROM events WHERE stage IN ({marks}) GROUP BY node), "
                "steps AS (SELECT e.stage, LEAD(e.at) OVER (PARTITION BY e.node ORDER BY e.at, e.id) - e.at AS took "
                "FROM starts s JOIN events e ON e.node = s.node AND e.at >= s.t0 - ? "
                f"WHERE e.at >= s.t0 OR e.stage IN ({before})) "
                f"SELECT stage, COUNT(*) AS n, SUM(took) AS total{counts} FROM steps WHERE took IS NOT NULL "
                "GROUP BY stage ORDER BY stage",
                (*markers, slack, *early),
            )
            .fetchall()
        )

    def failures_since_booted(
        self, booted: Sequence[str], failed: Sequence[str], ok: Sequence[str]
    ) -> list[sqlite3.Row]:
        """(node, kind, what, at) of each failure since the node last finished a boot (an event
        of a `booted` stage), ever if it never did: transfers ("transfer", path) that ended in
        another outcome than `ok`, and events of a `failed` stage ("event", stage). A node in a
        reboot loop keeps failing across its boots."""

        def q(items: Sequence[str]) -> str:
            return ",".join("?" * len(items))

        return (
            self._conn()
            .execute(
                f"WITH done AS (SELECT node, MAX(at) AS t1 FROM events WHERE stage IN ({q(booted)}) GROUP BY node) "
                "SELECT t.node, 'transfer' AS kind, t.path AS what, t.outcome, t.at FROM transfers t "
                "LEFT JOIN done d ON t.node = d.node "
                f"WHERE t.node IS NOT NULL AND t.outcome NOT IN ({q(ok)}) AND t.at > COALESCE(d.t1, 0) "
                "UNION ALL SELECT e.node, 'event', e.stage, e.detail, e.at FROM events e LEFT JOIN done d "
                f"ON e.node = d.node WHERE e.stage IN ({q(failed)}) AND e.at > COALESCE(d.t1, 0)",
                (*booted, *ok, *failed),
            )
            .fetchall()
        )

    # -- facts -----------------------------------------------------------------------------------
    def set_facts(self, node: str, facts: dict[str, Any]) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO facts(node, facts, updated) VALUES (?,?,?) "
                "ON CONFLICT(node) DO UPDATE SET facts=excluded.facts, updated=excluded.updated",
                (node, json.dumps(facts, sort_keys=True), time.time()),
            )

    def facts(self, node: str) -> dict[str, Any] | None:
        row = self.facts_row(node)
        return row[0] if row else None

    def facts_row(self, node: str) -> tuple[dict[str, Any], float] | None:
        """The node's facts and when the master stored them."""
        row = self._conn().execute("SELECT facts, updated FROM facts WHERE node=?", (node,)).fetchone()
        return (json.loads(row["facts"]), row["updated"]) if row else None

    def all_facts(self) -> dict[str, dict[str, Any]]:
        return {r["node"]: json.loads(r["facts"]) for r in self._conn().execute("SELECT node, facts FROM facts")}

    # -- runtime overlays ---------------------------------------------------------------------------
    def set_runtime(self, node: str, sha256: str, files: str) -> None:
        """What the node's agent last reported: the runtime archive it runs and its files'
        hashes as they are on the node (`kind hash path` lines)."""
        with self._tx() as c:
            c.execute(
                "INSERT INTO runtime(node, sha256, files, at) VALUES (?,?,?,?) ON CONFLICT(node) DO UPDATE "
                "SET sha256=excluded.sha256, files=excluded.files, at=excluded.at",
                (node, sha256, files, time.time()),
            )

    def runtime(self, node: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = (
            self._conn().execute("SELECT sha256, files, at FROM runtime WHERE node=?", (node,)).fetchone()
        )
        return row

    def runtime_shas(self) -> dict[str, str]:
        return {r["node"]: r["sha256"] for r in self._conn().execute("SELECT node, sha256 FROM runtime")}

    # -- dynamic leases and discovery ---------------------------------------------------------------
    def leases(self) -> Iterator[sqlite3.Row]:
        return iter(self._conn().execute("SELECT * FROM leases").fetchall())

    def put_lease(self, mac: str, ip: str, hostname: str | None, expires: float) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM leases WHERE ip=? AND mac<>?", (ip, mac))
            c.execute(
                "INSERT INTO leases(mac, ip, hostname, expires, updated) VALUES (?,?,?,?,?) "
                "ON CONFLICT(mac) DO UPDATE SET ip=excluded.ip, hostname=excluded.hostname, "
                "expires=excluded.expires, updated=excluded.updated",
                (mac, ip, hostname, expires, time.time()),
            )

    def drop_lease(self, mac: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM leases WHERE mac=?", (mac,))

    def saw_unknown(self, mac: str, arch: int | None, uuid: str | None, ip: str | None) -> None:
        """One sighting, now (servers batch theirs through record_discoveries)."""
        self.record_discoveries([(mac, arch, uuid, ip, time.time())], [])

    def record_discoveries(
        self,
        seen: Sequence[tuple[str, int | None, str | None, str | None, float]],
        adopted: Sequence[tuple[str, str]],
        keep: int | None = None,
    ) -> None:
        """(mac, arch, uuid, ip, at) sightings of unknown MACs, then (mac, name) adoptions, in
        one transaction; with `keep`, the least recently seen beyond that many are deleted
        there too, so a random-MAC flood never grows the table past it between trims. An
        adoption may land before the DHCP server's batched sighting of the MAC: it makes the
        row, and the sighting leaves its adopted_as alone."""
        now = time.time()
        with self._tx() as c:
            c.executemany(UPSERT_SEEN, seen)
            c.executemany(
                "INSERT INTO discovered(mac, first_seen, last_seen, adopted_as) VALUES (?1, ?3, ?3, ?2) "
                "ON CONFLICT(mac) DO UPDATE SET adopted_as=excluded.adopted_as",
                [(mac, name, now) for mac, name in adopted],
            )
            if keep is not None:
                c.execute(
                    "DELETE FROM discovered WHERE mac IN (SELECT mac FROM discovered ORDER BY last_seen "
                    "LIMIT MAX(0, (SELECT COUNT(*) FROM discovered) - ?))",
                    (keep,),
                )

    def discovered(self) -> list[sqlite3.Row]:
        return list(self._conn().execute("SELECT * FROM discovered ORDER BY first_seen"))

    def mark_adopted(self, mac: str, name: str) -> None:
        self.record_discoveries([], [(mac, name)])

    # -- transfers -----------------------------------------------------------------------------------
    def record_transfer(
        self,
        protocol: str,
        client: str,
        path: str,
        nbytes: int,
        duration: float,
        outcome: str,
        node: str | None = None,
        retransmits: int = 0,
    ) -> None:
        self.record_transfers([(protocol, client, node, path, nbytes, duration, retransmits, outcome, time.time())])

    def record_transfers(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """(protocol, client, node, path, bytes, duration, retransmits, outcome, at) rows in one
        transaction."""
        with self._tx() as c:
            c.executemany(
                "INSERT INTO transfers(protocol, client, node, path, bytes, duration, retransmits, outcome, at) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                rows,
            )

    def transfers(self, node: str | None = None) -> list[sqlite3.Row]:
        """Transfers in the order they finished, all or one node's."""
        if node is None:
            return list(self._conn().execute("SELECT * FROM transfers ORDER BY id"))
        return list(self._conn().execute("SELECT * FROM transfers WHERE node=? ORDER BY id", (node,)))

    def transfer_totals(self) -> list[sqlite3.Row]:
        """Transfers, bytes and per-outcome counts by protocol, for /metrics."""
        return list(
            self._conn().execute(
                "SELECT protocol, outcome, COUNT(*) AS n, COALESCE(SUM(bytes), 0) AS bytes "
                "FROM transfers GROUP BY protocol, outcome"
            )
        )

    # -- artifact builds -------------------------------------------------------------------------------
    def record_build(self, kind: str, name: str, duration: float) -> None:
        """A finished build (kind "overlay", "image", ...): builders run in other processes,
        so /metrics learns their durations from here."""
        with self._tx() as c:
            c.execute(
                "INSERT INTO builds(kind, name, duration, at) VALUES (?,?,?,?)", (kind, name, duration, time.time())
            )

    def build_totals(self) -> list[sqlite3.Row]:
        return list(
            self._conn().execute(
                "SELECT kind, COUNT(*) AS n, COALESCE(SUM(duration), 0) AS seconds FROM builds GROUP BY kind"
            )
        )

    # -- retention ---------------------------------------------------------------------------------
    def prune(self, limits: Retention, now: float | None = None) -> dict[str, int]:
        """Delete rows older than `limits.days` and the oldest beyond each table's count, in
        transactions of PRUNE_BATCH rows (indexed, oldest first) so that writers interleave.
        Each node's latest event survives: `status` shows a long-idle node's stage from it.
        Returns the rows deleted by table."""
        cutoff = (now if now is not None else time.time()) - limits.days * 86400
        c = self._conn()
        c.execute("CREATE TEMP TABLE IF NOT EXISTS spared(id INTEGER PRIMARY KEY)")
        deleted = {}
        for table, col in RETAINED.items():
            spared = "1"
            if table == "events":
                with self._tx():
                    c.execute("DELETE FROM temp.spared")
                    c.execute("INSERT INTO temp.spared SELECT MAX(id) FROM events GROUP BY node")
                spared = "id NOT IN temp.spared"
            old, total = c.execute(
                f"SELECT (SELECT COUNT(*) FROM {table} WHERE {col} < ? AND {spared}), (SELECT COUNT(*) FROM {table})",
                (cutoff,),
            ).fetchone()
            todo = max(old, total - getattr(limits, table))
            done = 0
            while done < todo:
                with self._tx():
                    n = c.execute(
                        f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {spared} "
                        f"ORDER BY {col} LIMIT ?)",
                        (min(PRUNE_BATCH, todo - done),),
                    ).rowcount
                if n == 0:
                    break
                done += n
            deleted[table] = done
        return deleted
