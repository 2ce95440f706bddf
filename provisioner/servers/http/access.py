"""Who is asking: the peer's address and source port, the node it belongs to, whether it
proves to be that node (its report credential), and whether it may have secret-bearing
content or the admin endpoints. Pure functions, no I/O."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from ...inventory import Inventory, Node

PRIVILEGED_PORTS = 1024


@dataclass(frozen=True)
class Peer:
    ip: IPv4Address | IPv6Address | None
    port: int

    @classmethod
    def of(cls, peername: object) -> Peer:
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


NOT_ITS_ADDRESS = "not the node's address"


def secret_refusal(node: Node, peer: Peer, leases: Mapping[str, str], secure: bool) -> str | None:
    """Why the peer may not have this node's secrets, or None if it may. Secure mode also
    wants a privileged source port: only root on the node can bind one, so an ordinary
    user's process on the right node is still refused."""
    if str(peer.ip) not in node_addresses(node, leases):
        return NOT_ITS_ADDRESS
    if secure and peer.port >= PRIVILEGED_PORTS:
        return "unprivileged source port"
    return None


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, or None."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    return authorization[len("Bearer ") :].strip() or None


def matches(presented: str | None, expected: str | None) -> bool:
    """A constant-time comparison; nothing matches a missing secret."""
    if not presented or not expected:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def is_admin(local_uid: int | None, authorization: str | None, token: str | None) -> bool:
    """Root on this host (the uid the kernel names for the caller's socket: any other local
    user is no admin, loopback or not), or a matching `Authorization: Bearer TOKEN`."""
    return local_uid == 0 or matches(bearer(authorization), token)
