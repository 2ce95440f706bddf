"""The `console` service of `serve`: an IPMI serial-over-LAN session to every node's BMC (a
Redfish BMC's too where its manager offers the console over IPMI), its
output kept in state/console/<node>.log (bounded, rotated: bmc/console.py), so an admin reads
what a node printed during a failed boot after the fact (`provisioner console NODE --log`).

pyghmi runs every session on its own I/O loop, so one thread keeps them all: it opens the
missing ones, reopens a lost one after RETRY seconds and follows inventory reloads.
"""

from __future__ import annotations

import logging
import threading
import time

from ..bmc import BmcError, ConsoleLog, Sol, Target, close_sessions, sol_target, target_of
from ..inventory import Inventory
from ..logs import kv
from ..paths import State
from .service import Service

log = logging.getLogger("provisioner.console")

RETRY = 30.0  # seconds before a lost or refused session is tried again
CHECK = 5.0  # seconds between two looks at the inventory and passwords (a reload looks at once)


class ConsoleService(Service):
    name = "console"

    def __init__(self, inventory: Inventory, state: State, retry: float = RETRY):
        super().__init__()
        self.state, self.retry = state, retry
        self._inventory = inventory
        self._stop = threading.Event()
        self._sessions: dict[str, tuple[Target, Sol]] = {}
        self._next_try: dict[str, float] = {}
        self._changed = threading.Event()
        self._said: dict[str, str] = {}  # the last failure logged per node (one line per new reason)

    def _wanted(self) -> dict[str, Target]:
        out = {}
        for node in self._inventory.nodes:
            t = target_of(self.state, node) if node.bmc is not None else None
            if isinstance(t, Target):
                out[node.name] = t
        return out

    def _reconcile(self) -> None:
        wanted = self._wanted()
        for name, (t, sol) in list(self._sessions.items()):
            if wanted.get(name) != t or sol.closed.is_set():
                if sol.error:
                    log.warning("console lost", extra=kv(node=name, error=sol.error))
                sol.close()
                del self._sessions[name]
                self._next_try[name] = time.monotonic() + (self.retry if sol.error else 0)
        now = time.monotonic()
        for name, t in wanted.items():
            if name in self._sessions or self._next_try.get(name, 0) > now:
                continue
            try:
                # A Redfish BMC is asked where its console is (IPMI SOL on the same BMC, or none).
                sol_at = sol_target(t)
                self._sessions[name] = (t, Sol(sol_at, ConsoleLog(self.state.consoles, name).write))
                self._said.pop(name, None)
                log.info("console attached", extra=kv(node=name, bmc=f"{sol_at.address}:{sol_at.port}"))
            except BmcError as e:
                if self._said.get(name) != str(e):
                    self._said[name] = str(e)
                    log.warning("console failed", extra=kv(node=name, error=str(e)))
                self._next_try[name] = now + self.retry

    def serve_forever(self) -> None:
        self.ready.set()
        checked = 0.0
        while not self._stop.is_set():
            lost = any(sol.closed.is_set() for _, sol in self._sessions.values())
            if lost or self._changed.is_set() or time.monotonic() - checked >= CHECK:
                self._changed.clear()
                self._reconcile()
                checked = time.monotonic()
            if self._sessions:
                Sol.pump(0.5)
            else:
                self._stop.wait(0.5)
        for _, sol in self._sessions.values():
            sol.close()
        self._sessions.clear()
        close_sessions()

    def shutdown(self) -> None:
        self._stop.set()

    def reload(self, inventory: Inventory) -> None:
        self._inventory = inventory
        self._changed.set()
