"""TFTP inside `provisioner serve`: the boot tree as resolver (noting boot stages), reload
in place, and worker processes that share the port.

One Python process is one CPU, and serve's process also runs DHCP and HTTP. With more than
one worker, serve starts fresh processes of this module (never a fork: serve has threads by
then) that bind the same port with SO_REUSEPORT; the kernel hashes each client to one
socket, so a client's retries and its whole transfer stay in one process. A worker reloads
the inventory on SIGHUP, which serve sends on each reload of its own, and ends on SIGTERM or
as soon as serve is gone. A worker that dies fails serve (systemd restarts the unit), as any
failed service does.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..inventory import Inventory, InventoryInvalid, load_inventory
from ..nodestate import NodeStateDB
from ..paths import Site, State
from .boottree import BootTree
from .stages import StageWriter, stage_of
from .tftp import TftpServer, check_port_free

log = logging.getLogger("provisioner.serve")
ACK_TIMEOUT = 30.0  # for a worker to bind or reload: a Python start-up and a YAML parse


class StagedTree:
    """The TFTP resolver: the shared BootTree, noting the boot stage a found file marks."""

    def __init__(self, tree: BootTree, stages: StageWriter):
        self.tree, self.stages = tree, stages

    def __call__(self, client_ip: str, path: str) -> Any:
        found = self.tree(client_ip, path)
        stage = stage_of(path)
        if found is not None and stage is not None:
            node = self.tree.node_for(client_ip)
            if node is not None:
                self.stages.note(node, stage, f"tftp {path}")
        return found

    def node_for(self, client_ip: str) -> str | None:
        return self.tree.node_for(client_ip)


class Workers:
    """The extra TFTP processes of one serve, on the port its own TFTP server holds. Each
    says "ready" once bound and "reloaded N" after a reload, N the SIGHUPs it had received
    when that reload began, on its stdout: serve's own "ready" and "reloaded" then hold for
    every process. The count keeps a late answer to a reload that timed out from passing for
    the answer to the next one."""

    ack_timeout = ACK_TIMEOUT

    def __init__(self, count: int, site: Site, state: State, listen: str, port: int):
        self.argv = [sys.executable, "-m", __name__, "--site", str(site.root), "--state", str(state.root),
                     "--listen", listen, "--port", str(port),
                     "--log-level", logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()]
        self.count = count
        self.procs: list[subprocess.Popen] = []
        self.hups = 0  # SIGHUPs sent to each worker
        self._unread: dict[int, bytes] = {}
        self._stopping = threading.Event()

    def start(self, on_death: Callable[[str], None]) -> None:
        """Start the workers and wait until each is bound; `on_death(reason)` is called (from
        a watcher thread) if one ends before stop()."""
        self.procs = [subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
                      for _ in range(self.count)]
        self._expect("ready")
        log.info("tftp workers", extra={"kv": {"pids": ",".join(str(p.pid) for p in self.procs)}})
        threading.Thread(target=self._watch, args=(on_death,), name="tftp-workers", daemon=True).start()

    def _expect(self, word: str, count: int = 0) -> None:
        """Wait for every worker to say `word` (with a count of at least `count`), passing
        over older answers."""
        deadline = time.monotonic() + self.ack_timeout
        for p in self.procs:
            while True:
                line = self._line(p, deadline)
                if line is None:
                    code = p.poll()
                    raise RuntimeError(f"TFTP worker {p.pid} did not say {word!r} within {self.ack_timeout:g} s"
                                       + (f" (exited with code {code})" if code is not None else ""))
                said, _, n = line.partition(" ")
                if said == word and (int(n) if n.isdigit() else 0) >= count:
                    break

    def _line(self, p: subprocess.Popen, deadline: float) -> str | None:
        """The worker's next line, or None at the deadline or its end. Read straight from the
        pipe: a buffered reader would hide a second line from select()."""
        fd = p.stdout.fileno()  # type: ignore[union-attr]
        unread = self._unread.get(p.pid, b"")
        while b"\n" not in unread:
            left = deadline - time.monotonic()
            chunk = os.read(fd, 4096) if left > 0 and select.select([fd], [], [], left)[0] else b""
            if not chunk:  # the deadline, or the worker's end
                self._unread[p.pid] = unread
                return None
            unread += chunk
        line, _, self._unread[p.pid] = unread.partition(b"\n")
        return line.decode("ascii", "replace").strip()

    def _watch(self, on_death: Callable[[str], None]) -> None:
        while not self._stopping.wait(0.5):
            for p in self.procs:
                code = p.poll()
                if code is not None and not self._stopping.is_set():
                    on_death(f"TFTP worker {p.pid} exited with code {code}")
                    return

    def reload(self) -> None:
        """SIGHUP every worker and wait for each to have reloaded."""
        self.hups += 1
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGHUP)
        try:
            self._expect("reloaded", self.hups)
        except RuntimeError as e:
            log.error("tftp worker reload", extra={"kv": {"error": str(e)}})

    def stop(self) -> None:
        self._stopping.set()
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()


class TftpService:
    """The TFTP server with a reload: its resolver is a BootTree, which holds nothing but the
    inventory, so swapping that reloads it while transfers in flight keep their open files."""

    def __init__(self, server: TftpServer, tree: BootTree, stages: StageWriter, workers: Workers | None = None):
        self.server, self.tree, self.stages, self.workers = server, tree, stages, workers
        self.ready = threading.Event()  # set once every worker is bound
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
            self.stages.close()
        if self._death is not None:
            raise RuntimeError(self._death)

    def _worker_died(self, reason: str) -> None:
        self._death = reason
        self.server.shutdown()

    def shutdown(self) -> None:
        self.server.shutdown()

    def reload(self, inventory: Inventory) -> None:
        self.tree.inventory = inventory
        if self.workers is not None:
            self.workers.reload()


def tftp_service(state: State, inventory: Inventory, db: NodeStateDB, listen: str, port: int,
                 *, shared: bool = False) -> TftpService:
    """serve's TFTP service; `shared` binds with SO_REUSEPORT, for workers to join."""
    tree, stages = BootTree(state, inventory), StageWriter(db)
    server = TftpServer(listen, port, StagedTree(tree, stages), db, reuse_port=shared)
    return TftpService(server, tree, stages)


def with_workers(site: Site, state: State, inventory: Inventory, db: NodeStateDB, listen: str, port: int,
                 workers: int) -> TftpService:
    """serve's TFTP service in `workers` processes: this one and `workers - 1` more.
    The port is checked free first: sockets with SO_REUSEPORT would otherwise quietly share
    it with another serve left running."""
    if workers <= 1:
        return tftp_service(state, inventory, db, listen, port)
    check_port_free(listen, port)
    service = tftp_service(state, inventory, db, listen, port, shared=True)
    service.workers = Workers(workers - 1, site, state, listen, service.server.port)
    return service


def main(argv: list[str] | None = None) -> int:
    """A worker: serve's TFTP service on a port serve already holds, until SIGTERM or serve ends."""
    from .serve import setup_logging  # serve imports this module

    ap = argparse.ArgumentParser(prog=f"python -m {__name__}", description=main.__doc__)
    ap.add_argument("--site", type=Path, required=True)
    ap.add_argument("--state", type=Path, required=True)
    ap.add_argument("--listen", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log-level", default="info")
    args = ap.parse_args(argv)
    setup_logging(args.log_level, worker=os.getpid())
    parent = os.getppid()
    site, state = Site(args.site), State(args.state)
    service = tftp_service(state, load_inventory(site.cluster_yaml), NodeStateDB(state.db), args.listen, args.port,
                           shared=True)
    wake = threading.Event()
    hups, stop = [0], threading.Event()

    def hup(*_: object) -> None:
        hups[0] += 1
        wake.set()

    def term(*_: object) -> None:
        stop.set()
        wake.set()

    signal.signal(signal.SIGHUP, hup)
    signal.signal(signal.SIGTERM, term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches serve, which stops us
    thread = threading.Thread(target=service.serve_forever, name="serve-tftp", daemon=True)
    thread.start()
    _tell("ready")
    reloaded = 0
    while not stop.is_set() and thread.is_alive() and os.getppid() == parent:
        wake.wait(0.5)
        wake.clear()
        if hups[0] > reloaded:
            reloaded = hups[0]  # SIGHUPs that came during a reload are answered by the next
            try:
                service.reload(load_inventory(site.cluster_yaml))
            except InventoryInvalid as e:
                log.error("reload refused: inventory invalid, keeping the previous one",
                          extra={"kv": {"problems": len(e.problems)}})
            _tell(f"reloaded {reloaded}")
    failed = not thread.is_alive()  # the server ended by itself, not asked to
    service.shutdown()
    thread.join(timeout=15)
    return 1 if failed else 0


def _tell(word: str) -> None:
    """A line to serve on our stdout (a pipe serve reads)."""
    try:
        sys.stdout.write(word + "\n")
        sys.stdout.flush()
    except OSError:
        pass  # serve is gone: the loop sees it


if __name__ == "__main__":
    sys.exit(main())
