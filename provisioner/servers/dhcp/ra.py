"""IPv6 router advertisements for the boot network, so iPXE does not wait for one.

iPXE starts IPv6 autoconfiguration beside DHCP and, on a link without a router, waits about
16 s for an advertisement before it goes on. Answering its router solicitation with an RA
that announces no prefix, no default route (lifetime 0) and neither the M nor the O flag
tells it at once that there is nothing to configure; Linux hosts ignore such an RA. Sites
that run real IPv6 routers on the boot network answer the solicitation themselves (the
server does not advertise in ProxyDHCP mode, where the site owns the network).
"""

from __future__ import annotations

import logging
import socket
import struct

from ...logs import kv
from . import netif

log = logging.getLogger("provisioner.dhcp")

ROUTER_SOLICITATION, ROUTER_ADVERTISEMENT = 133, 134
ALL_NODES, ALL_ROUTERS = "ff02::1", "ff02::2"
ICMP6_FILTER = 1  # <netinet/icmp6.h>: a bitmap of blocked ICMPv6 types


def _only(icmp_type: int) -> bytes:
    blocked = [0xFFFFFFFF] * 8
    blocked[icmp_type >> 5] &= ~(1 << (icmp_type & 31))
    return struct.pack("@8I", *blocked)


# hop limit 64, no flags, router lifetime 0, no options: the source link-layer address
# option may be left out (RFC 4861 4.2), and a bridge's MAC changes as ports join it. The
# kernel fills in the ICMPv6 checksum.
ADVERTISEMENT = struct.pack("!BBHBBHII", ROUTER_ADVERTISEMENT, 0, 0, 64, 0, 0, 0, 0)


class RouterAdvertiser:
    def __init__(self, link: netif.Link):
        self.link = link
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        try:
            s.setsockopt(socket.SOL_SOCKET, netif.SO_BINDTODEVICE, link.name.encode())
            s.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, _only(ROUTER_SOLICITATION))
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)  # RFC 4861: hop limit 255
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, link.index)
            s.setsockopt(
                socket.IPPROTO_IPV6,
                socket.IPV6_JOIN_GROUP,
                socket.inet_pton(socket.AF_INET6, ALL_ROUTERS) + struct.pack("@I", link.index),
            )
            s.setblocking(False)
        except OSError:
            s.close()
            raise
        self.sock = s

    def answer(self) -> None:
        """Read pending ICMPv6 messages; answer each router solicitation to all nodes."""
        while True:
            try:
                data, peer = self.sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            if data[:1] != bytes((ROUTER_SOLICITATION,)):
                continue
            try:
                self.sock.sendto(ADVERTISEMENT, (ALL_NODES, 0, 0, self.link.index))
            except OSError as e:
                log.warning("could not send a router advertisement", extra=kv(interface=self.link.name, error=e))
            else:
                log.debug("router advertisement", extra=kv(to=peer[0]))

    def close(self) -> None:
        self.sock.close()
