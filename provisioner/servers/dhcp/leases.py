"""Dynamic leases for discovered (unknown) MACs, RFC 2131 style.

Static nodes need none of this: their address comes from the inventory, so answering them
writes nothing. Dynamic leases live in the node-state database (they must survive a restart)
and in memory; an offer is only a short in-memory reservation until the client requests it.

Offers are soft: when every free address is held by an offer, the oldest offer's address goes
to the newcomer, and a client answering an offer (SELECTING) gets any address of the range that
no lease holds, first REQUEST first served. Hard reservations would let a flood of DISCOVERs
from random MACs, which never REQUEST, keep every real newcomer out for OFFER_HOLD at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from ipaddress import IPv4Address

from ...inventory import Inventory
from ...logs import repeated
from ...nodestate import NodeStateDB

log = logging.getLogger("provisioner.dhcp")

OFFER_HOLD = 60.0  # seconds an offered address stays reserved for its client
DECLINE_HOLD = 600.0  # seconds a declined address (in use by someone else) is skipped


class DynamicPool:
    def __init__(self, inventory: Inventory, db: NodeStateDB):
        self.db = db
        self._lock = threading.Lock()
        self.leases: dict[str, tuple[IPv4Address, float]] = {}  # mac -> (ip, expires)
        for row in db.leases():
            self.leases[row["mac"]] = (IPv4Address(row["ip"]), float(row["expires"]))
        self.offers: dict[str, tuple[IPv4Address, float]] = {}  # mac -> (ip, hold until)
        self.declined: dict[IPv4Address, float] = {}
        self.set_inventory(inventory)

    def set_inventory(self, inventory: Inventory) -> None:
        net = inventory.cluster.network
        self.range = net.dynamic_range
        self.reserved = {
            ip
            for ip in (net.master, net.gateway, *(i.ip for n in inventory.nodes for i in n.interfaces))
            if ip is not None
        }

    def lease_of(self, mac: str) -> IPv4Address | None:
        """The client's persisted address (expired or not: a returning client keeps it while
        nobody else took it)."""
        got = self.leases.get(mac)
        return got[0] if got else None

    def _held(self, now: float, mac: str) -> set[IPv4Address]:
        """Addresses `mac` may not have whatever the offers say: others' leases, declined, static."""
        held = {ip for m, (ip, exp) in self.leases.items() if m != mac and exp > now}
        held |= {ip for ip, until in self.declined.items() if until > now}
        return held | self.reserved

    def _recycle(self, now: float, mac: str) -> IPv4Address | None:
        """Take the address of the oldest live offer of another client."""
        others = [(until, m) for m, (_, until) in self.offers.items() if m != mac]
        if not others:
            return None
        _, oldest = min(others)
        ip = self.offers.pop(oldest)[0]
        log.info("offers hold the whole dynamic range; recycling the oldest", extra=repeated("dhcp offers recycled"))
        return ip

    def offer(self, mac: str, requested: IPv4Address | None) -> IPv4Address | None:
        """Reserve an address for an unknown client: its old one, the one it asks for, or the
        first free one of the range; None if the range is missing or full."""
        if self.range is None:
            return None
        lo, hi = self.range
        now = time.time()
        with self._lock:
            if len(self.offers) > int(hi) - int(lo):  # live offers have distinct addresses: drop the dead
                self.offers = {m: v for m, v in self.offers.items() if v[1] > now}
            held = self._held(now, mac)
            taken = held | {ip for m, (ip, until) in self.offers.items() if m != mac and until > now}
            candidates = [self.lease_of(mac), (self.offers.get(mac) or (None,))[0], requested]
            choice = next((ip for ip in candidates if ip is not None and lo <= ip <= hi and ip not in taken), None)
            if choice is None:
                ip = lo
                while ip <= hi and ip in taken:
                    ip += 1
                choice = ip if ip <= hi else self._recycle(now, mac)
            if choice is None or choice in held:
                log.warning(
                    "dynamic range full; no address", extra=repeated("dhcp range full", first=lo, last=hi, mac=mac)
                )
                return None
            self.offers[mac] = (choice, now + OFFER_HOLD)
            return choice

    def expected(self, mac: str) -> IPv4Address | None:
        """The address a REQUEST from this unknown client must name: offered or leased."""
        offered = self.offers.get(mac)
        if offered and offered[1] > time.time():
            return offered[0]
        return self.lease_of(mac)

    def commit(self, mac: str, ip: IPv4Address, hostname: str | None, lease_time: int) -> None:
        with self._lock:
            self._commit(mac, ip, hostname, lease_time)

    def take(self, mac: str, ip: IPv4Address, lease_time: int) -> bool:
        """A SELECTING client asks for `ip` though its offer is gone (recycled, or expired):
        lease it if it is in the range and no lease, decline or static node holds it."""
        if self.range is None or not self.range[0] <= ip <= self.range[1]:
            return False
        with self._lock:
            if ip in self._held(time.time(), mac):
                return False
            self._commit(mac, ip, None, lease_time)
            return True

    def _commit(self, mac: str, ip: IPv4Address, hostname: str | None, lease_time: int) -> None:
        expires = time.time() + lease_time
        self.db.put_lease(mac, str(ip), hostname, expires)
        self.leases = {m: v for m, v in self.leases.items() if v[0] != ip or m == mac}
        self.leases[mac] = (ip, expires)
        self.offers = {m: v for m, v in self.offers.items() if v[0] != ip}

    def forget_offer(self, mac: str) -> None:
        with self._lock:
            self.offers.pop(mac, None)

    def release(self, mac: str, ip: IPv4Address) -> bool:
        """Free the lease if `mac` holds `ip`; any other RELEASE changes nothing (as Kea)."""
        with self._lock:
            if self.lease_of(mac) != ip:
                return False
            self.db.drop_lease(mac)
            self.leases.pop(mac, None)
            return True

    def decline(self, mac: str, ip: IPv4Address) -> bool:
        """The holder of `ip` found another host using it: drop the lease and skip the
        address for DECLINE_HOLD. A DECLINE from anyone else changes nothing (as Kea), or
        a stranger could take the whole range out of service with a packet per address."""
        with self._lock:
            if self.lease_of(mac) != ip:
                return False
            self.declined[ip] = time.time() + DECLINE_HOLD
            self.db.drop_lease(mac)
            self.leases.pop(mac, None)
            self.offers.pop(mac, None)
            return True
