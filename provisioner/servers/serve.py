"""The `provisioner serve` daemon: DHCP, TFTP and HTTP servers as threads of one process
(TFTP may add worker processes on its port: tftp_service.py).

The main thread owns the signals: SIGHUP (or an inventory change, or POST /api/v1/reload)
reloads the inventory into every server in place, so transfers in flight carry on; SIGTERM
or SIGINT stops the servers cleanly. Artifacts need no reload: the servers open them per
request, and builders replace them atomically. A Slurm poller records each node's `idle`
stage. Log lines are logfmt (key=value), one event per line.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

from ..artifacts import layout
from ..inventory import Inventory, InventoryInvalid, load_inventory
from ..nodestate import NodeStateDB
from ..nodestate.slurm import is_ready, slurm_states
from ..paths import Site, State

if TYPE_CHECKING:
    from .dhcp.server import Adopter

log = logging.getLogger("provisioner.serve")

SERVICES = ("dhcp", "tftp", "http")


class ServeError(Exception):
    """A service cannot start (missing module, address in use): the CLI says so and exits 1."""


class Server(Protocol):
    def serve_forever(self) -> None: ...
    def shutdown(self) -> None: ...


@dataclass(frozen=True)
class ServeOptions:
    services: tuple[str, ...] = SERVICES
    listen: str = "0.0.0.0"
    interface: str | None = None  # DHCP interface; default: cluster.network.interface
    http_port: int | None = None  # None: the inventory's cluster.ports
    tftp_port: int | None = None
    dhcp_port: int | None = None
    token_file: str | None = None  # None: state/secrets/api.token if present
    watch_interval: float = 1.0
    slurm_interval: float = 10.0
    tftp_workers: int = 1  # TFTP processes on the port, this one included (tftp_service.py)


class Logfmt(logging.Formatter):
    """`ts=... level=... logger=... msg=... key=value` lines; fields from `extra={"kv": {...}}`,
    then the process's own `always` fields (a TFTP worker's pid)."""

    def __init__(self, always: Mapping[str, Any] | None = None):
        super().__init__()
        self.always = dict(always or {})

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name.removeprefix("provisioner."),
            "msg": record.getMessage(),
            **getattr(record, "kv", {}),
        }
        if record.exc_info:
            fields["error"] = self.formatException(record.exc_info)
        fields.update(self.always)
        return " ".join(f"{k}={_value(v)}" for k, v in fields.items() if v is not None)


def _value(v: Any) -> str:
    s = str(v)
    return json.dumps(s) if not s or any(c in s for c in ' "=\n\t') else s


def setup_logging(level: str = "info", **always: Any) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Logfmt(always))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


def _fingerprint(site: Site) -> tuple[int, int, int] | None:
    try:
        st = site.cluster_yaml.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Daemon:
    def __init__(self, site: Site, state: State, inventory: Inventory, opts: ServeOptions,
                 adopt: Adopter | None = None):
        """`adopt`: how DHCP adopts a discovered node under cluster.discovery.adopt (the caller
        hands in actions.discovery.adopt_node: servers do not import the actions above them)."""
        self.site, self.state, self.inventory, self.opts = site, state, inventory, opts
        self.adopt = adopt
        self.db = NodeStateDB(state.db)
        self.slurm: Mapping[str, str] | None = None
        self.failed = False
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()
        self._seen = _fingerprint(site)
        self.servers: dict[str, Server] = {name: self._make(name) for name in opts.services}

    # -- composition ---------------------------------------------------------------------------
    def _make(self, name: str) -> Server:
        cluster, opts = self.inventory.cluster, self.opts
        try:
            if name == "http":
                from .http import Hooks, HttpServer
                hooks = Hooks(reload=self.request_reload, slurm_states=lambda: self.slurm,
                              dhcp_packets=self._dhcp_packets)
                return HttpServer(self.inventory, self.state, opts.listen, opts.http_port or cluster.ports.http,
                                  self.db, read_token(self.state, opts.token_file), hooks)
            if name == "tftp":
                from .tftp import listen_address
                from .tftp_service import with_workers
                return with_workers(self.site, self.state, self.inventory, self.db, listen_address(opts.listen),
                                    opts.tftp_port or cluster.ports.tftp, opts.tftp_workers)
            from .dhcp import DhcpServer
            return DhcpServer(self.inventory, self.state, opts.interface, opts.listen,
                              opts.dhcp_port or cluster.ports.dhcp, self.db, adopt=self.adopt)
        except ImportError as e:
            raise ServeError(f"the {name} service is not available in this installation ({e})") from None
        except (OSError, ValueError) as e:
            raise ServeError(f"cannot start {name} on {opts.listen}: {e}") from None

    def _dhcp_packets(self) -> Mapping[str, int]:
        """DHCP packet counters by kind, when this process runs the DHCP server."""
        return dict(getattr(self.servers.get("dhcp"), "counters", {}))

    # -- control, from any thread -----------------------------------------------------------------
    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    # -- main thread ---------------------------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        threads = [threading.Thread(target=self._serve, args=(n, s), name=f"serve-{n}", daemon=True)
                   for n, s in self.servers.items()]
        threads.append(threading.Thread(target=self._poll_slurm, name="slurm-poll", daemon=True))
        for t in threads:
            t.start()
        for server in self.servers.values():  # those that take a while to be up say when they are
            ready: threading.Event | None = getattr(server, "ready", None)
            while ready is not None and not ready.wait(0.1) and not self._stop.is_set():
                pass
        if not self._stop.is_set():
            log.info("ready", extra={"kv": {"services": ",".join(self.servers), "pid": os.getpid()}})
        while not self._stop.is_set():
            self._wake.wait(self.opts.watch_interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            changed = _fingerprint(self.site)
            if self._reload.is_set() or changed != self._seen:
                self._reload.clear()
                self._seen = changed
                self._do_reload()
        log.info("stopping", extra={"kv": {"services": ",".join(self.servers)}})
        for s in self.servers.values():
            s.shutdown()
        for t in threads:
            t.join(timeout=15)
        log.info("stopped", extra={"kv": {"failed": self.failed}})
        return 1 if self.failed else 0

    def _serve(self, name: str, server: Server) -> None:
        try:
            server.serve_forever()
        except Exception:
            log.exception("service failed", extra={"kv": {"service": name}})
            self.failed = True
        if not self._stop.is_set():
            self.failed = True
            self.request_stop()

    def _do_reload(self) -> None:
        try:
            inventory = load_inventory(self.site.cluster_yaml)
        except InventoryInvalid as e:
            log.error("reload refused: inventory invalid, keeping the previous one",
                      extra={"kv": {"problems": len(e.problems), "first": str(e.problems[0]) if e.problems else None}})
            return
        self.inventory = inventory
        http = self.servers.get("http")
        if http is not None:
            try:
                http.boot.token = read_token(self.state, self.opts.token_file)  # type: ignore[attr-defined]
            except OSError as e:
                log.error("token file unreadable, keeping the previous token", extra={"kv": {"error": str(e)}})
        for name, server in self.servers.items():
            reload: Callable[[Inventory], None] | None = getattr(server, "reload", None)
            if reload is not None:
                reload(inventory)
        log.info("reloaded", extra={"kv": {"nodes": len(inventory.nodes)}})

    def _poll_slurm(self) -> None:
        """Record `idle` for each node slurmctld reports ready, once per boot."""
        while not self._stop.wait(0 if self.slurm is None else self.opts.slurm_interval):
            states = slurm_states()
            self.slurm = states or {}
            if not states:
                continue
            try:
                self._record_idle(states)
            except Exception:  # a locked or full database must not end the poller
                log.exception("could not record Slurm idle stages")

    def _record_idle(self, states: Mapping[str, str]) -> None:
        last = self.db.last_stages()
        for node in self.inventory.nodes:
            state = states.get(node.name)
            if is_ready(state) and (node.name not in last or last[node.name]["stage"] != "idle"):
                self.db.record_stage(node.name, "idle", state)
                log.info("stage", extra={"kv": {"node": node.name, "stage": "idle", "slurm": state}})


def read_token(state: State, path: str | None) -> str | None:
    """The admin API token: the given file, else state/secrets/api.token if present."""
    p = Path(path) if path else layout.api_token(state)
    try:
        return p.read_text().strip() or None
    except FileNotFoundError:
        if path:
            raise
        return None

