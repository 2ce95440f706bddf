"""Who is asking: the peer's address and source port, the node it belongs to, and whether
it may have secret-bearing content or the admin endpoints. Pure functions, no I/O."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Mapping

from ...inventory import Inventory, Node

PRIVILEGED_PORTS = 1024


@dataclass(frozen=True)
class Peer:
    ip: IPv4Address | IPv6Address | None
    port: int

    @classmethod
    def of(cls, peername: object) -> "Peer":
        """From a transport's peername; an IPv4-mapped IPv6 address becomes plain IPv4."""
        if not isinstance(peername, tuple) or len(peername) < 2:
            return cls(None, 0)
        try:
            ip = ip_address(str(peername[0]).split("%")[0])
        except ValueError:
            return cls(None, 0)
        if isinstance(ip, IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return cls(ip, int(peername[1]))

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


def node_at(inventory: Inventory, leases: Mapping[str, str], peer: Peer) -> Node | None:
    """The node at the peer's address: a static address from the inventory, else a DHCP
    lease (ip -> mac) of a node known by MAC."""
    if not isinstance(peer.ip, IPv4Address):
        return None
    node = inventory.by_ip(peer.ip)
    if node is None and str(peer.ip) in leases:
        node = inventory.by_mac(leases[str(peer.ip)])
    return node


def node_addresses(node: Node, leases: Mapping[str, str]) -> set[str]:
    mine = {i.mac for i in node.interfaces if i.mac}
    return {str(i.ip) for i in node.interfaces if i.ip} | {ip for ip, mac in leases.items() if mac in mine}


def secret_refusal(node: Node, peer: Peer, leases: Mapping[str, str], secure: bool) -> str | None:
    """Why the peer may not have this node's secrets, or None if it may. Secure mode also
    wants a privileged source port: only root on the node can bind one, so an ordinary
    user's process on the right node is still refused."""
    if str(peer.ip) not in node_addresses(node, leases):
        return "not the node's address"
    if secure and peer.port >= PRIVILEGED_PORTS:
        return "unprivileged source port"
    return None


def is_admin(peer: Peer, local: Peer, authorization: str | None, token: str | None) -> bool:
    """A process on this host (loopback, or the very address it connected to), or a matching
    `Authorization: Bearer TOKEN`."""
    if peer.ip is not None and (peer.ip.is_loopback or peer.ip == local.ip):
        return True
    if not token or not authorization or not authorization.startswith("Bearer "):
        return False
    return hmac.compare_digest(authorization[len("Bearer "):].strip().encode(), token.encode())
