"""The user behind a TCP connection from this host: the kernel's socket table
(/proc/net/tcp, tcp6 of the server's network namespace) names the owner of the client's end,
as `ss -e` shows it. Only a connection whose both ends are on this host has that row."""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address, IPv6Address, ip_address

from .access import Peer

TABLES = ("/proc/self/net/tcp", "/proc/self/net/tcp6")


def _address(field: str) -> tuple[IPv4Address | IPv6Address, int]:
    """`0100007F:1F90` as the kernel prints it: the address in host-order 32-bit words."""
    addr, port = field.split(":")
    raw = b"".join(struct.pack("=I", int(addr[i : i + 8], 16)) for i in range(0, len(addr), 8))
    ip = ip_address(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw))
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped, int(port, 16)
    return ip, int(port, 16)


def owner(table: str, client: Peer, server: Peer) -> int | None:
    """The uid in a socket table (its text) of the socket at `client` connected to `server`."""
    for line in table.splitlines()[1:]:
        cols = line.split()
        if (
            len(cols) > 7
            and _address(cols[1]) == (client.ip, client.port)
            and _address(cols[2]) == (server.ip, server.port)
        ):
            return int(cols[7])
    return None


def local_uid(client: Peer, server: Peer) -> int | None:
    """The uid of the local process at the client end, or None (not from this host)."""
    if client.ip is None or server.ip is None:
        return None
    for path in TABLES:
        try:
            with open(path) as f:
                uid = owner(f.read(), client, server)
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
        if uid is not None:
            return uid
    return None
