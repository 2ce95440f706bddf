"""The `provisioner serve` daemon: the DHCP, TFTP and HTTP services as threads of one
process (TFTP may add worker processes on its port: tftp/workers.py), each driven through
the Service interface (service.py) alone.

The main thread owns the signals: SIGHUP (or an inventory change, or POST /api/v1/reload)
reloads the inventory into every service in place, so transfers in flight carry on; SIGTERM
or SIGINT stops the services cleanly. Artifacts need no reload: the servers open them per
request, and builders replace them atomically. A Slurm poller records each node's `idle`
stage; a trimmer keeps the node-state history within cluster.retention. Log lines are
logfmt (key=value), one event per line.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..inventory import Inventory, InventoryInvalid, load_inventory
from ..logs import kv
from ..nodestate import NodeStateDB
from ..nodestate.slurm import is_ready, slurm_states
from ..paths import Site, State
from .limits import fit
from .service import Service

if TYPE_CHECKING:
    from .dhcp.server import Adopter
    from .http import ConsoleActions

log = logging.getLogger("provisioner.serve")

SERVICES = ("dhcp", "tftp", "http")  # the default set
OPTIONAL = ("console",)  # IPMI serial-over-LAN console logs of nodes with a BMC


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
        adopt: Adopter | None = None,
        console: ConsoleActions | None = None,
    ):
        """`adopt`: how DHCP adopts a discovered node under cluster.discovery `mode: auto` (the
        caller hands in actions.discovery.AutoAdopter: servers do not import the actions above
        them); `console`: what the web console may change, likewise (actions.webconsole)."""
        self.site, self.state, self.inventory, self.opts = site, state, inventory, opts
        self.adopt, self.console = adopt, console
        self.db = NodeStateDB(state.db)
        self.slurm: Mapping[str, str] | None = None
        self.failed = False
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()
        self._seen = _fingerprint(site)
        # One descriptor budget for the services of this process (limits.py).
        self.limits = fit(inventory.cluster.limits, opts.services)
        self.services: dict[str, Service] = {name: self._make(name) for name in opts.services}

    # -- composition ---------------------------------------------------------------------------
    def _make(self, name: str) -> Service:
        make: dict[str, Callable[[], Service]] = {
            "dhcp": self._dhcp,
            "tftp": self._tftp,
            "http": self._http,
            "console": self._console,
        }
        try:
            return make[name]()
        except ImportError as e:
            raise ServeError(f"the {name} service is not available in this installation ({e})") from None
        except (OSError, ValueError) as e:
            raise ServeError(f"cannot start {name} on {self.opts.listen}: {e}") from None

    def _console(self) -> Service:
        from .consoles import ConsoleService

        return ConsoleService(self.inventory, self.state)

    def _dhcp(self) -> Service:
        from .dhcp import DhcpServer

        return DhcpServer(
            self.inventory,
            self.state,
            self.opts.interface,
            self.opts.listen,
            self.opts.dhcp_port or self.inventory.cluster.ports.dhcp,
            self.db,
            adopt=self.adopt,
        )

    def _tftp(self) -> Service:
        from .tftp import listen_address
        from .tftp_service import boot_service

        return boot_service(
            self.site,
            self.state,
            self.inventory,
            self.db,
            listen_address(self.opts.listen),
            self.opts.tftp_port or self.inventory.cluster.ports.tftp,
            self.opts.tftp_workers,
            limits=self.limits,
        )

    def _http(self) -> Service:
        from .http import Hooks, HttpServer

        hooks = Hooks(
            reload=self.request_reload,
            slurm_states=lambda: self.slurm,
            dhcp_packets=lambda: self._counters("dhcp"),
            console=self.console,
        )
        return HttpServer(
            self.inventory,
            self.state,
            self.opts.listen,
            self.opts.http_port or self.inventory.cluster.ports.http,
            self.db,
            self.opts.token_file,
            hooks,
            self.limits,
        )

    def _counters(self, name: str) -> Mapping[str, int]:
        """A service's counters, empty when this process does not run it."""
        service = self.services.get(name)
        return service.counters() if service is not None else {}

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
        threads = [
            threading.Thread(target=self._serve, args=(n, s), name=f"serve-{n}", daemon=True)
            for n, s in self.services.items()
        ]
        threads.append(threading.Thread(target=self._poll_slurm, name="slurm-poll", daemon=True))
        threads.append(threading.Thread(target=self._trim, name="retention", daemon=True))
        for t in threads:
            t.start()
        for service in self.services.values():
            while not service.ready.wait(0.1) and not self._stop.is_set():
                pass
        if not self._stop.is_set():
            log.info("ready", extra=kv(services=",".join(self.services), pid=os.getpid()))
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
        log.info("stopping", extra=kv(services=",".join(self.services)))
        for s in self.services.values():
            s.shutdown()
        for t in threads:
            t.join(timeout=15)
        log.info("stopped", extra=kv(failed=self.failed))
        return 1 if self.failed else 0

    def _serve(self, name: str, service: Service) -> None:
        try:
            service.serve_forever()
        except Exception:
            log.exception("service failed", extra=kv(service=name))
            self.failed = True
        if not self._stop.is_set():
            self.failed = True
            self.request_stop()

    def _do_reload(self) -> None:
        try:
            inventory = load_inventory(self.site.cluster_yaml)
        except InventoryInvalid as e:
            log.error(
                "reload refused: inventory invalid, keeping the previous one",
                extra=kv(problems=len(e.problems), first=e.problems[0] if e.problems else None),
            )
            return
        self.inventory = inventory
        for service in self.services.values():
            service.reload(inventory)
        log.info("reloaded", extra=kv(nodes=len(inventory.nodes)))

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
