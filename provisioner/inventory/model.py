"""The typed inventory: what the cluster and each node should be.

Everything downstream (renderers, servers) reads these frozen dataclasses, never raw YAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Mapping

from .hostlist import expand, split_top


@dataclass(frozen=True)
class Network:
    interface: str | None
    subnet: IPv4Network
    master: IPv4Address
    gateway: IPv4Address | None = None
    dns: tuple[IPv4Address, ...] = ()
    dynamic_range: tuple[IPv4Address, IPv4Address] | None = None

    def in_dynamic_range(self, ip: IPv4Address) -> bool:
        return self.dynamic_range is not None and self.dynamic_range[0] <= ip <= self.dynamic_range[1]


@dataclass(frozen=True)
class NfsExport:
    path: str
    mount: str
    access: str = "rw"
    options: str = ""


@dataclass(frozen=True)
class Nfs:
    server: IPv4Address
    version: str = "4.2"
    exports: tuple[NfsExport, ...] = ()


@dataclass(frozen=True)
class Slurm:
    controller: str
    address: IPv4Address
    port: int = 6817
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Ports:
    http: int = 80
    tftp: int = 69
    dhcp: int = 67


@dataclass(frozen=True)
class Dhcp:
    mode: str = "full"  # "full" or "proxy"
    lease_time: int = 3600


@dataclass(frozen=True)
class Discovery:
    adopt: str | None = None  # hostlist the server may name discovered nodes from
    profiles: tuple[str, ...] = ()


@dataclass(frozen=True)
class Cluster:
    name: str
    domain: str
    network: Network
    nfs: Nfs
    slurm: Slurm
    time_servers: tuple[str, ...] = ()
    ports: Ports = Ports()
    dhcp: Dhcp = Dhcp()
    discovery: Discovery = Discovery()
    secure: bool = True


# Settings a profile or a node may carry. Merge rule by kind: "scalar" - later wins,
# "list" - later appends (without repeats), "dict" - merged key by key, later wins.
SETTINGS: dict[str, str] = {
    "image": "scalar",
    "kernel": "scalar",
    "kernel_args": "list",
    "overlays": "list",
    "partitions": "list",
    "features": "list",
    "mpi_slots": "scalar",
    "boot_files": "dict",
    "vars": "dict",
}


@dataclass(frozen=True)
class Profile:
    name: str
    settings: Mapping[str, Any]
    description: str = ""


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str | None
    ip: IPv4Address | None


@dataclass(frozen=True)
class Node:
    """A node merged with its profiles; `sources` says where each setting came from."""

    name: str
    interfaces: tuple[Interface, ...]
    profiles: tuple[str, ...]
    bmc: IPv4Address | None
    image: str | None
    kernel: str | None
    kernel_args: tuple[str, ...]
    overlays: tuple[str, ...]
    partitions: tuple[str, ...]
    features: tuple[str, ...]
    mpi_slots: int | None
    boot_files: Mapping[str, str]
    vars: Mapping[str, Any]
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    line: int = field(default=0, compare=False)

    @property
    def primary(self) -> Interface:
        return self.interfaces[0]

    @property
    def ip(self) -> IPv4Address | None:
        return self.primary.ip

    @property
    def mac(self) -> str | None:
        return self.primary.mac


@dataclass(frozen=True)
class Inventory:
    path: Path
    cluster: Cluster
    profiles: Mapping[str, Profile]
    nodes: tuple[Node, ...]

    def __post_init__(self) -> None:
        by_name = {n.name: n for n in self.nodes}
        by_mac = {i.mac: n for n in self.nodes for i in n.interfaces if i.mac}
        by_ip = {i.ip: n for n in self.nodes for i in n.interfaces if i.ip}
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_by_mac", by_mac)
        object.__setattr__(self, "_by_ip", by_ip)

    def node(self, name: str) -> Node | None:
        return self._by_name.get(name)  # type: ignore[attr-defined]

    def by_mac(self, mac: str) -> Node | None:
        return self._by_mac.get(mac.lower())  # type: ignore[attr-defined]

    def by_ip(self, ip: IPv4Address | str) -> Node | None:
        return self._by_ip.get(IPv4Address(ip))  # type: ignore[attr-defined]

    def select(self, expr: str | None) -> list[Node]:
        """Nodes named by a selector: hostlist terms (`node[01-04,07]`, `a,b`), `@profile`,
        or `all`/None. Unknown names raise KeyError naming them."""
        if not expr or expr == "all":
            return list(self.nodes)
        chosen: dict[str, Node] = {}
        missing: list[str] = []
        for term in split_top(expr):
            if term.startswith("@"):
                prof = term[1:]
                if prof not in self.profiles:
                    missing.append(term)
                for n in self.nodes:
                    if prof in n.profiles:
                        chosen.setdefault(n.name, n)
                continue
            for name in expand(term):
                n = self.node(name)
                if n is None:
                    missing.append(name)
                else:
                    chosen.setdefault(name, n)
        if missing:
            raise KeyError(", ".join(missing))
        order = {n.name: i for i, n in enumerate(self.nodes)}
        return sorted(chosen.values(), key=lambda n: order[n.name])
