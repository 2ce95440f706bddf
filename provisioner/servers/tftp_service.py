"""TFTP as a service: serve's boot tree (noting boot stages, following reloads) or a plain
directory (`provisioner tftp`), in this process and, if asked, worker processes on the same
port (tftp/workers.py). `python -m provisioner.servers.tftp_service` is such a worker.

A worker that dies fails the service, as any failed service fails serve (systemd restarts
the unit); serve's reload reaches every worker before serve says "reloaded".
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ..inventory import Inventory, InventoryInvalid, load_inventory
from ..inventory.model import Limits
from ..logs import kv, setup_logging
from ..nodestate import NodeStateDB
from ..paths import Site, State
from .boottree import BootTree, StaticTree
from .limits import fit, share
from .service import Service
from .stages import StageWriter, stage_of
from .tftp import TftpServer, check_port_free
from .tftp.server import Resolver
from .tftp.workers import Workers, run_worker

log = logging.getLogger("provisioner.tftp")


class StagedTree:
    """serve's TFTP resolver: the shared BootTree, noting the boot stage a found file marks."""

    def __init__(self, state: State, inventory: Inventory, db: NodeStateDB):
        self.tree, self.stages = BootTree(state, inventory), StageWriter(db)

    def __call__(self, client_ip: str, path: str) -> Path | None:
        found = self.tree(client_ip, path)
        stage = stage_of(path)
        if found is not None and stage is not None:
            node = self.tree.node_for(client_ip)
            if node is not None:
                self.stages.note(node, stage, f"tftp {path}")
        return found

    def node_for(self, client_ip: str) -> str | None:
        return self.tree.node_for(client_ip)


class TftpService(Service):
    """A TftpServer and its workers. With a StagedTree, reload swaps the inventory the tree
    resolves with (transfers in flight keep their open files) and reaches every worker."""

    name = "tftp"

    def __init__(self, server: TftpServer, staged: StagedTree | None = None, workers: Workers | None = None):
        super().__init__()
        self.server, self.staged, self.workers = server, staged, workers
        self._death: str | None = None

    def serve_forever(self) -> None:
        try:
            if self.workers is not None:
                self.workers.start(self._worker_died)
            self.ready.set()
            self.server.serve_forever()
        finally:
            if self.workers is not None:
                self.workers.stop()
            if self.staged is not None:
                self.staged.stages.close()
        if self._death is not None:
            raise RuntimeError(self._death)

    def _worker_died(self, reason: str) -> None:
        self._death = reason
        self.server.shutdown()

    def shutdown(self) -> None:
        self.server.shutdown()

    def reload(self, inventory: Inventory) -> None:
        if self.staged is not None:
            self.staged.tree.reload(inventory)
        if self.workers is not None:
            self.workers.reload()


def boot_service(
    site: Site,
    state: State,
    inventory: Inventory,
    db: NodeStateDB,
    listen: str,
    port: int,
    processes: int = 1,
    *,
    shared: bool = False,
    limits: Limits | None = None,
    share_of: int = 1,
) -> TftpService:
    """serve's TFTP service over the boot tree, in `processes` processes (this one included);
    `shared` binds with SO_REUSEPORT also when alone (a worker, one of `share_of`). `limits`:
    the inventory's, fitted to this process's descriptors when not given; each process
    takes its share of the TFTP caps (limits.share)."""
    staged = StagedTree(state, inventory, db)
    return _service(
        listen,
        port,
        processes,
        shared,
        staged,
        db,
        staged,
        ["--site", str(site.root), "--state", str(state.root)],
        limits or fit(inventory.cluster.limits, ("tftp",)),
        share_of=share_of,
    )


def directory_service(
    root: Path,
    listen: str,
    port: int,
    processes: int = 1,
    state: State | None = None,
    timeout: float = 1.0,
    *,
    shared: bool = False,
    share_of: int = 1,
) -> TftpService:
    """A plain directory served read-only (`provisioner tftp`); transfers are recorded in
    the node database of `state` when one is given."""
    db = NodeStateDB(state.db) if state is not None else None
    mode = ["--root", str(root), "--timeout", str(timeout)] + (["--state", str(state.root)] if state else [])
    return _service(
        listen, port, processes, shared, StaticTree(root), db, None, mode, fit(Limits(), ("tftp",)), timeout, share_of
    )


def _service(
    listen: str,
    port: int,
    processes: int,
    shared: bool,
    resolver: Resolver,
    db: NodeStateDB | None,
    staged: StagedTree | None,
    mode: list[str],
    limits: Limits,
    timeout: float = 1.0,
    share_of: int = 1,
) -> TftpService:
    """The service, with `processes - 1` workers started with `mode` (how a worker builds
    the same service). The port is checked free first: sockets with SO_REUSEPORT would
    otherwise quietly share it with another server left running."""
    if processes > 1:
        check_port_free(listen, port)
    limits = share(limits, max(processes, share_of))
    server = TftpServer(listen, port, resolver, db, timeout=timeout, reuse_port=shared or processes > 1, limits=limits)
    workers = None
    if processes > 1:
        level = logging.getLevelName(log.getEffectiveLevel()).lower()
        workers = Workers(
            [
                sys.executable,
                "-m",
                __name__,
                "--listen",
                listen,
                "--port",
                str(server.port),
                "--log-level",
                level,
                "--processes",
                str(processes),
                *mode,
            ],
            processes - 1,
        )
    return TftpService(server, staged, workers)


def main(argv: Sequence[str] | None = None) -> int:
    """A worker: the service its parent runs, on the port the parent holds, until SIGTERM or
    the parent's end."""
    ap = argparse.ArgumentParser(prog="python -m provisioner.servers.tftp_service", description=main.__doc__)
    ap.add_argument("--listen", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--site", type=Path, help="serve's boot tree for this site (with --state)")
    ap.add_argument("--state", type=Path)
    ap.add_argument("--root", type=Path, help="a plain directory instead")
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--processes", type=int, default=1, help="TFTP processes on the port: this one takes its share")
    args = ap.parse_args(argv)
    setup_logging(args.log_level, worker=os.getpid())
    state = State(args.state) if args.state else None
    if args.root is not None:
        service = directory_service(
            args.root, args.listen, args.port, state=state, timeout=args.timeout, shared=True, share_of=args.processes
        )
        return run_worker(service, lambda: None)
    if args.site is None or state is None:
        ap.error("give --site and --state, or --root")
    site = Site(args.site)
    service = boot_service(
        site,
        state,
        load_inventory(site.cluster_yaml),
        NodeStateDB(state.db),
        args.listen,
        args.port,
        shared=True,
        share_of=args.processes,
    )

    def reload() -> None:
        try:
            service.reload(load_inventory(site.cluster_yaml))
        except InventoryInvalid as e:
            log.error("reload refused: inventory invalid, keeping the previous one", extra=kv(problems=len(e.problems)))

    return run_worker(service, reload)


if __name__ == "__main__":
    sys.exit(main())
