"""The provisioning interface and its address, found with pyroute2, and the sockets bound
to it (SO_BINDTODEVICE: broadcasts from other links never reach us, ours leave on this one)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from pyroute2 import IPRoute

SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


@dataclass(frozen=True)
class Link:
    name: str
    index: int
    address: IPv4Interface


def _addresses() -> list[Link]:
    with IPRoute() as ipr:
        links = {link["index"]: link for link in ipr.get_links()}
        return [
            Link(
                links[a["index"]].get_attr("IFLA_IFNAME"),
                a["index"],
                IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"),
            )
            for a in ipr.get_addr(family=socket.AF_INET)
            if a["index"] in links
        ]


def find(interface: str | None, listen: str, subnet: IPv4Network) -> Link:
    """The link to serve on: the named interface, else the one holding `listen`, else the one
    with an address in the provisioning subnet. LookupError says what is missing."""
    links = _addresses()
    want = None if listen in ("", "0.0.0.0") else IPv4Address(listen)
    if interface:
        mine = [link for link in links if link.name == interface]
        if not mine:
            raise LookupError(f"interface {interface} has no IPv4 address (or does not exist)")
        for pick in ([m for m in mine if m.address.ip == want], [m for m in mine if m.address.ip in subnet], mine):
            if pick:
                return pick[0]
    if want is not None:
        for link in links:
            if link.address.ip == want:
                return link
        raise LookupError(f"no interface has the address {listen}")
    for link in links:
        if link.address.ip in subnet:
            return link
    raise LookupError(f"no interface has an address in {subnet}; name one with network.interface")


def udp_socket(device: str, port: int, address: str = "0.0.0.0") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, device.encode())
    s.bind((address, port))
    s.setblocking(False)
    return s
