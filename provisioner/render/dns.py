"""The cluster's names for dnsmasq in DNS-only mode on the master.

dnsmasq because it is what nodes already meet (the tests' DHCP peer), it answers the
cluster domain and its reverse zones from a plain hosts file, and it re-reads that file and
its upstream servers on SIGHUP within its single event loop: queries that arrive meanwhile
wait in the socket and are answered, none is dropped (unbound would need a zone per change
through unbound-control). So the inventory's nodes live in two data files (`hosts`,
`servers`) and the configuration itself only changes with the cluster's network.

Pure: the caller passes where each file lives.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from ..inventory.model import Cluster, Node

HEADER = "# Written by `provisioner configure dns`; edits are lost on the next run."


@dataclass(frozen=True)
class DnsFiles:
    conf: Path  # dnsmasq's configuration (--conf-file)
    hosts: Path  # addn-hosts: every name in the cluster domain
    servers: Path  # servers-file: the upstream servers
    pidfile: Path


def host_entries(cluster: Cluster, nodes: Iterable[Node]) -> list[tuple[IPv4Address, tuple[str, ...]]]:
    """Address -> names, the fully qualified name first (dnsmasq answers a reverse query with
    the first name): the master, each node's interfaces (as /etc/hosts on the nodes names
    them), then the aliases."""
    dom = cluster.domain
    out: list[tuple[IPv4Address, tuple[str, ...]]] = []
    master = cluster.slurm.controller
    out.append((cluster.network.master, (f"{master}.{dom}", master)))
    by_name: dict[str, IPv4Address] = {master: cluster.network.master}
    for n in nodes:
        for k, i in enumerate(n.interfaces):
            if i.ip is None:
                continue
            name = n.name if k == 0 else f"{n.name}-{i.name}"
            by_name.setdefault(name, i.ip)
            out.append((i.ip, (f"{name}.{dom}", name)))
    for alias, target in sorted(cluster.dns.aliases.items()):
        try:
            ip = IPv4Address(target)
        except ValueError:
            if target not in by_name:
                continue  # an alias of a node that is not (or no longer) in the inventory
            ip = by_name[target]
        out.append((ip, (f"{alias}.{dom}", alias)))
    return out


def render_hosts(cluster: Cluster, nodes: Iterable[Node]) -> str:
    lines = [HEADER]
    lines += [f"{ip}\t{' '.join(names)}" for ip, names in host_entries(cluster, nodes)]
    return "\n".join(lines) + "\n"


def render_servers(upstream: Sequence[IPv4Address]) -> str:
    return "\n".join([HEADER, *(f"server={s}" for s in upstream)]) + "\n"


def reverse_zones(subnet: IPv4Network) -> list[str]:
    """The in-addr.arpa zones that cover `subnet` at octet boundaries (a /22 is four /24 zones,
    a /26 lies in one /24 zone), so reverse queries for the cluster's addresses are never sent
    upstream."""
    prefix = min(24, max(8, math.ceil(subnet.prefixlen / 8) * 8))
    nets = subnet.subnets(new_prefix=prefix) if prefix > subnet.prefixlen else [subnet.supernet(new_prefix=prefix)]
    return [".".join(reversed(str(n.network_address).split(".")[: prefix // 8])) + ".in-addr.arpa" for n in nets]


def render_dnsmasq(cluster: Cluster, files: DnsFiles, port: int = 53) -> str:
    """DNS only (no DHCP, no TFTP), on the master's provisioning address; the cluster domain
    and its reverse zones are answered from `hosts` alone, never forwarded."""
    lines = [
        HEADER,
        f"port={port}",
        f"listen-address={cluster.network.master}",
        "bind-dynamic",
        "no-resolv",
        "no-hosts",
        "domain-needed",
        "bogus-priv",
        f"addn-hosts={files.hosts}",
        f"servers-file={files.servers}",
        f"pid-file={files.pidfile}",
        f"local=/{cluster.domain}/",
        *(f"local=/{z}/" for z in reverse_zones(cluster.network.subnet)),
        *cluster.dns.options,
    ]
    return "\n".join(lines) + "\n"
