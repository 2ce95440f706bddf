"""The `provisioner serve` daemon: the DHCP, TFTP and HTTP services, each in a process of its
own (supervise.py) so each has a CPU of its own in a boot storm (TFTP may add worker processes
on its port: tftp/workers.py), each driven through the Service interface (service.py) alone.

The parent owns the signals: SIGHUP (or an inventory change, or POST /api/v1/reload) reloads
the inventory and hands it to every service, which takes it in place, so transfers in flight
carry on; SIGTERM or SIGINT stops every service cleanly. A service that ends by itself is
started again after a pause; one that cannot start at all stops serve with its reason.
Artifacts need no reload: the servers open them per request, and builders replace them
atomically. The parent also polls Slurm (recording each node's `idle` stage, and handing the
states to HTTP for the admin API), keeps the node-state history within cluster.retention,
and gathers each service's counters for HTTP's /metrics. Log lines are logfmt (key=value),
one event per line.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from ..inventory import Inventory, InventoryInvalid, load_inventory
from ..logs import kv, setup_logging
from ..nodestate import NodeStateDB
from ..nodestate.slurm import is_ready, slurm_states
from ..paths import Site, State
from .limits import fit
from .service import Service
from .supervise import PUSH_INTERVAL, Link, Message, Supervised, host

if TYPE_CHECKING:
    from .dhcp.server import Adopter
    from .http import ConsoleActions

log = logging.getLogger("provisioner.serve")

SERVICES = ("dhcp", "tftp", "http")  # the default set
OPTIONAL = ("console",)  # IPMI serial-over-LAN console logs of nodes with a BMC
CHILD = "provisioner.servers.serve_child"  # the module a service process runs
RELOAD_TIMEOUT = 60.0  # for every service to take a reload (TFTP waits for its workers)


class ServeError(Exception):
    """A service cannot start (missing module, address in use): the CLI says so and exits 1."""


@dataclass(frozen=True)
class ServeOptions:
    services: tuple[str, ...] = SERVICES
    listen: str = "0.0.0.0"
    interface: str | None = None  # DHCP interface; default: cluster.network.interface
    http_port: int | None = None  # None: the inventory's cluster.ports
    tftp_port: int | None = None
    dhcp_port: int | None = None
    token_file: Path | None = None  # None: state/secrets/api.token if present
    watch_interval: float = 1.0
    slurm_interval: float = 10.0
    tftp_workers: int = 1  # TFTP processes on the port, this one included (tftp/workers.py)


@dataclass(frozen=True)
class Start:
    """What a service process builds its service from: the parent's first message."""

    name: str
    site: Site
    state: State
    inventory: Inventory
    opts: ServeOptions
    level: str
    adopt: Callable[[], Adopter] | None = None  # makes DHCP's adopter (picklable: a class and its arguments)
    console: Callable[[], ConsoleActions] | None = None  # makes the web console's actions, likewise


def _fingerprint(site: Site) -> tuple[int, int, int] | None:
    try:
        st = site.cluster_yaml.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Daemon:
    def __init__(
        self,
        site: Site,
        state: State,
        inventory: Inventory,
        opts: ServeOptions,
        adopt: Callable[[], Adopter] | None = None,
        console: Callable[[], ConsoleActions] | None = None,
    ):
        """`adopt` makes how DHCP adopts a discovered node under cluster.discovery `mode: auto`,
        `console` what the web console may change (the caller hands in actions.discovery.
        AutoAdopter and actions.webconsole.console_actions with their context: servers do not
        import the actions above them); each is called in its service's process, so picklable."""
        self.site, self.state, self.inventory, self.opts = site, state, inventory, opts
        self.adopt, self.console = adopt, console
        self.db = NodeStateDB(state.db)
        self.slurm: Mapping[str, str] | None = None
        self.failed = False
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()
        self._seen = _fingerprint(site)
        self._lock = threading.Condition()
        self._reloads = 0  # reloads handed out
        self._acks: dict[str, int] = {}  # the last reload each service took
        self._counters: dict[str, dict[str, int]] = {}  # the running process's, by service
        self._before: dict[str, dict[str, int]] = {}  # those of its ended processes
        self._peers_changed = True
        self._started = threading.Event()  # every service was ready once
        self.children = {name: Supervised(name, CHILD, self._starter(name), self._message) for name in opts.services}

    # -- the service processes ---------------------------------------------------------------------
    def _starter(self, name: str) -> Callable[[], Start]:
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()

        def start() -> Start:
            with self._lock:
                self._acks[name] = self._reloads
                return Start(name, self.site, self.state, self.inventory, self.opts, level, self.adopt, self.console)

        return start

    def _message(self, name: str, message: Message) -> None:
        """From a service process (its supervising thread)."""
        kind = message[0]
        with self._lock:
            if kind == "counters":
                self._counters[name] = message[1]
            elif kind == "exited":
                ended = self._counters.pop(name, {})
                before = self._before.setdefault(name, {})
                for key, n in ended.items():
                    before[key] = before.get(key, 0) + n
            elif kind == "reloaded":
                self._acks[name] = max(self._acks.get(name, 0), message[1])
            self._peers_changed = self._peers_changed or kind in ("counters", "ready")
            self._lock.notify_all()
        if kind == "reload":
            self.request_reload()
        elif kind == "ready" and self._started.is_set():
            log.info("service ready again", extra=kv(service=name, pid=self.children[name].pid))

    def counters(self, name: str) -> dict[str, int]:
        """A service's counters over all its processes (a restart does not set them back)."""
        with self._lock:
            total = dict(self._before.get(name, {}))
            for key, n in self._counters.get(name, {}).items():
                total[key] = total.get(key, 0) + n
            return total

    def _push_peers(self) -> None:
        """What HTTP shows of the others (/metrics, the admin API), when it changed."""
        with self._lock:
            if not self._peers_changed:
                return
            self._peers_changed = False
        peers = {"slurm": self.slurm, "counters": {name: self.counters(name) for name in self.children}}
        for child in self.children.values():
            child.send(("peers", peers))

    # -- control, from any thread -----------------------------------------------------------------
    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    # -- main thread ---------------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until SIGTERM; ServeError when a service cannot start."""
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        threads = [
            threading.Thread(target=self._poll_slurm, name="slurm-poll", daemon=True),
            threading.Thread(target=self._trim, name="retention", daemon=True),
        ]
        for child in self.children.values():
            child.start()
        try:
            failure = self._wait_ready()
            if failure is not None:
                self.failed = True
                raise ServeError(failure)
            for t in threads:
                t.start()
            self._started.set()
            if not self._stop.is_set():
                log.info("ready", extra=kv(services=",".join(self.children), pid=os.getpid()))
            self._loop()
        finally:
            log.info("stopping", extra=kv(services=",".join(self.children)))
            self._stop.set()
            for child in self.children.values():
                child.terminate()
            for child in self.children.values():
                child.join()
            for t in threads:
                if t.is_alive():
                    t.join(timeout=15)
            log.info("stopped", extra=kv(failed=self.failed))
        return 0

    def _wait_ready(self) -> str | None:
        """Until every service answers: None, or why one could not start."""
        for child in self.children.values():
            while not child.ready.wait(0.1) and not self._stop.is_set():
                if child.ended.is_set():
                    return child.failure
        return None

    def _loop(self) -> None:
        tick = min(self.opts.watch_interval, PUSH_INTERVAL)
        while not self._stop.is_set():
            self._wake.wait(tick)
            self._wake.clear()
            if self._stop.is_set():
                break
            changed = _fingerprint(self.site)
            if self._reload.is_set() or changed != self._seen:
                self._reload.clear()
                self._seen = changed
                self._do_reload()
            self._push_peers()

    def _do_reload(self) -> None:
        try:
            inventory = load_inventory(self.site.cluster_yaml)
        except InventoryInvalid as e:
            log.error(
                "reload refused: inventory invalid, keeping the previous one",
                extra=kv(problems=len(e.problems), first=e.problems[0] if e.problems else None),
            )
            return
        with self._lock:
            self.inventory = inventory
            self._reloads += 1
            n = self._reloads
        # Outside the lock: a process being started takes it to build its first message.
        for child in self.children.values():
            child.send(("reload", n, inventory))
        with self._lock:
            if not self._lock.wait_for(lambda: self._reloaded(n), RELOAD_TIMEOUT):
                late = [c for c in self.children if self._acks.get(c, 0) < n]
                log.error("reload not taken in time", extra=kv(services=",".join(late)))
        log.info("reloaded", extra=kv(nodes=len(inventory.nodes)))

    def _reloaded(self, n: int) -> bool:
        """Every service process took reload `n`, or started since with its inventory, or is gone."""
        return self._stop.is_set() or all(
            self._acks.get(name, 0) >= n or not child.alive() for name, child in self.children.items()
        )

    def _poll_slurm(self) -> None:
        """Record `idle` for each node slurmctld reports ready, once per boot."""
        while not self._stop.wait(0 if self.slurm is None else self.opts.slurm_interval):
            states = slurm_states()
            if (states or {}) != self.slurm:
                self.slurm = states or {}
                with self._lock:
                    self._peers_changed = True
            if not states:
                continue
            try:
                self._record_idle(states)
            except Exception:  # a locked or full database must not end the poller
                log.exception("could not record Slurm idle stages")

    def _trim(self) -> None:
        """Apply cluster.retention at start and every `interval` seconds after, off every
        packet and event loop (they only queue rows)."""
        while True:
            limits = self.inventory.cluster.retention
            try:
                deleted = self.db.prune(limits)
                if any(deleted.values()):
                    log.info("trimmed node-state history", extra=kv(**deleted))
            except Exception:  # a locked or full database must not end the trimmer
                log.exception("could not trim the node-state history")
            if self._stop.wait(limits.interval):
                return

    def _record_idle(self, states: Mapping[str, str]) -> None:
        last = self.db.last_stages()
        for node in self.inventory.nodes:
            state = states.get(node.name)
            if is_ready(state) and (node.name not in last or last[node.name]["stage"] != "idle"):
                self.db.record_stage(node.name, "idle", state)
                log.info("stage", extra=kv(node=node.name, stage="idle", slurm=state))


# -- in a service process ----------------------------------------------------------------------------
def _console(start: Start, link: Link) -> Service:
    from .consoles import ConsoleService

    return ConsoleService(start.inventory, start.state)


def _dhcp(start: Start, link: Link) -> Service:
    from .dhcp import DhcpServer

    return DhcpServer(
        start.inventory,
        start.state,
        start.opts.interface,
        start.opts.listen,
        start.opts.dhcp_port or start.inventory.cluster.ports.dhcp,
        NodeStateDB(start.state.db),
        adopt=start.adopt() if start.adopt is not None else None,
    )


def _tftp(start: Start, link: Link) -> Service:
    from .tftp import listen_address
    from .tftp_service import boot_service

    return boot_service(
        start.site,
        start.state,
        start.inventory,
        NodeStateDB(start.state.db),
        listen_address(start.opts.listen),
        start.opts.tftp_port or start.inventory.cluster.ports.tftp,
        start.opts.tftp_workers,
    )


def _http(start: Start, link: Link) -> Service:
    from .http import Hooks, HttpServer

    def peers(key: str) -> dict:
        return (link.peers or {}).get(key) or {}

    hooks = Hooks(
        reload=lambda: link.send(("reload",)),
        slurm_states=lambda: (link.peers or {}).get("slurm"),
        dhcp_packets=lambda: peers("counters").get("dhcp", {}),
        console=start.console() if start.console is not None else None,
    )
    return HttpServer(
        start.inventory,
        start.state,
        start.opts.listen,
        start.opts.http_port or start.inventory.cluster.ports.http,
        NodeStateDB(start.state.db),
        start.opts.token_file,
        hooks,
        fit(start.inventory.cluster.limits, ("http",)),
    )


BUILD: dict[str, Callable[[Start, Link], Service]] = {"dhcp": _dhcp, "tftp": _tftp, "http": _http, "console": _console}


def _build(start: Start, link: Link) -> Service:
    try:
        return BUILD[start.name](start, link)
    except ImportError as e:
        raise ServeError(f"the {start.name} service is not available in this installation ({e})") from None
    except (OSError, ValueError) as e:
        raise ServeError(f"cannot start {start.name} on {start.opts.listen}: {e}") from None


def child_main(argv: Sequence[str]) -> int:
    """A service process (`python -m provisioner.servers.serve_child NAME FD`): its service,
    built from the parent's first message on FD, until SIGTERM or the parent's end."""
    link = Link(Connection(int(argv[1])))
    try:
        start: Start = link.conn.recv()
    except (EOFError, OSError):
        return 0
    setup_logging(start.level)
    try:
        service = _build(start, link)
    except ServeError as e:
        link.send(("failed", str(e)))
        return 1
    return host(link, service)
