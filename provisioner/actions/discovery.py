"""Adopting a discovered MAC: by the admin (`provisioner node approve`), or by the DHCP server
of `provisioner serve` when cluster.discovery says `mode: auto` (through an AutoAdopter, which
keeps the policy's rate limit and does the work off the packet loop).

Either way the node gets everything a listed node has before the inventory names it: its
overlay archive and boot config are built from the edited inventory first, then the file is
written (locked, atomically, comments kept), so serve's reload of cluster.yaml never answers
a node whose boot files are not there yet; slurm.conf follows the inventory by itself
(`slurm apply --watch`)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from ruamel.yaml.comments import CommentedMap

from ..errors import UserError
from ..inventory import Inventory, InventoryInvalid, normalize_mac
from ..inventory.edit import (
    edit_inventory,
    edited,
    next_free_ip,
    node_entries,
    set_fields,
)
from ..inventory.hostlist import expand
from ..logs import kv
from .context import Context
from .overlays import build_overlays

log = logging.getLogger("provisioner.discovery")


@dataclass(frozen=True)
class Adopted:
    mac: str
    name: str
    ip: IPv4Address


def _name(inv: Inventory, name: str | None, by_port: str | None = None) -> str:
    policy = inv.cluster.discovery.names
    if name is None and by_port is not None:
        if inv.node(by_port) is None:
            return by_port
        log.warning("switch-port name is taken; a name from `names` instead", extra=kv(node=by_port))
    if name is None:
        if not policy:
            raise UserError("name the node: cluster.discovery has no `names` to take one from")
        name = next((n for n in expand(policy) if inv.node(n) is None), None)
        if name is None:
            raise UserError(f"every name of {policy} is taken")
    elif inv.node(name) is not None:
        raise UserError(f"node {name} exists already")
    return name


def adopt_node(ctx: Context, mac: str, name: str | None = None, profiles: Sequence[str] = ()) -> Adopted:
    """Make `mac` node `name` (default: the name its switch port gives, see switches.py, else
    the first free name of cluster.discovery.names) at the
    first free address of cluster.discovery.addresses, with `profiles` (default: the policy's),
    and build its overlay and boot config; the node-state DB notes the MAC as adopted and
    frees its dynamic lease."""
    norm = normalize_mac(mac)
    if norm is None:
        raise UserError(f"{mac!r} is not a MAC address (like 52:54:00:12:34:56)")
    if not ctx.has_inventory():
        raise UserError(f"no inventory at {ctx.site.cluster_yaml} (run `provisioner init` first)")
    by_port = None
    if name is None and ctx.inventory().cluster.discovery.switches:
        from .switches import port_name  # pysnmp takes half a second to import: only when needed

        by_port = port_name(ctx.inventory().cluster.discovery, norm)  # before the lock: may time out
    try:
        with edit_inventory(ctx.site.cluster_yaml) as (doc, inv):
            known = inv.by_mac(norm)
            if known is not None:
                raise UserError(f"{norm} is already node {known.name}")
            policy = inv.cluster.discovery
            name = _name(inv, name, by_port)
            ip = next_free_ip(inv, policy.addresses)
            if ip is None:
                where = "-".join(map(str, policy.addresses)) if policy.addresses else inv.cluster.network.subnet
                raise UserError(f"no free address left in {where}")
            entry = CommentedMap({"name": name, "ip": str(ip), "mac": norm})
            set_fields(entry, {"profiles": list(profiles or policy.profiles) or None})
            node_entries(doc).append(entry)
            after = Context(ctx.site, ctx.state, edited(doc, ctx.site.cluster_yaml))
            build_overlays(after, [after.node(name)])
    except InventoryInvalid as e:
        raise UserError(f"not changed: {e}") from None
    db = ctx.db()
    try:
        db.mark_adopted(norm, name)
        db.drop_lease(norm)  # its dynamic address is free again: the node has a static one now
    finally:
        db.close()
    return Adopted(norm, name, ip)


class AutoAdopter:
    """serve's DHCP adopter under `mode: auto`: the packet loop hands it a MAC and goes on;
    a worker thread adopts it (a one-node build takes seconds) and serve's reload of the
    edited cluster.yaml answers the node on its next DISCOVER. At most `rate` MACs a minute
    (cluster.discovery.rate, as of the last adoption) are taken; the others stay discovered
    and are tried again when they ask again."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._taken: list[float] = []  # when each of the last minute's adoptions was taken on
        self._pending: dict[str, float] = {}  # MAC: when taken on (kept a minute: until serve reloads)
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._refused = 0

    def __call__(self, mac: str, rate: int) -> bool:
        """True when `mac` is taken on (answer its next DISCOVER); False when it waits."""
        now = time.monotonic()
        with self._lock:
            self._taken = [t for t in self._taken if now - t < 60]
            self._pending = {m: t for m, t in self._pending.items() if now - t < 60}
            if mac in self._pending:
                return True
            if len(self._taken) >= rate:
                self._refused += 1
                if self._refused == 1 or self._refused % 100 == 0:  # a flood is one line per 100
                    log.warning(
                        "adoption rate limit reached; the node stays discovered",
                        extra=kv(mac=mac, rate_per_minute=rate, refused=self._refused),
                    )
                return False
            self._taken.append(now)
            self._pending[mac] = now
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="adopt", daemon=True)
                self._worker.start()
        self._queue.put(mac)
        return True

    def _work(self) -> None:
        while True:
            mac = self._queue.get()
            started = time.monotonic()
            try:
                got = adopt_node(self.ctx.fresh(), mac)
                log.info(
                    "adopted",
                    extra=kv(mac=got.mac, node=got.name, ip=got.ip, seconds=round(time.monotonic() - started, 2)),
                )
            except UserError as e:
                log.warning("could not adopt", extra=kv(mac=mac, error=e))
                self._forget(mac)
            except Exception:  # the worker must outlive one bad adoption
                log.exception("adoption failed", extra=kv(mac=mac))
                self._forget(mac)

    def _forget(self, mac: str) -> None:
        """Not adopted: the MAC's next DISCOVER gets a dynamic lease again (or a new try)."""
        with self._lock:
            self._pending.pop(mac, None)
