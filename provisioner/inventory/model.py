"""The typed inventory: what the cluster and each node should be.

Everything downstream (renderers, servers) reads these frozen dataclasses, never raw YAML.
Each setting is declared once, as a field carrying its kind, default, checks and CLI flag
(see schema.py); the parser, profile merging, the CLI and the JSON view derive from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from ..bootfiles import override_problems
from .hostlist import expand, split_top
from .schema import (
    Address,
    Addresses,
    AddressRange,
    Choice,
    Count,
    Flag,
    Hostlist,
    Invalid,
    Label,
    Names,
    Options,
    Scope,
    Section,
    Sections,
    Setting,
    Subnet,
    Table,
    Text,
    Words,
    setting,
    settings_of,
)


def _in_subnet(addr: IPv4Address, s: Scope) -> str | None:
    return None if addr in s.subnet else f"{addr} is outside the subnet {s.subnet}"


def _range_in(r: tuple[IPv4Address, IPv4Address], subnet: IPv4Network) -> str | None:
    if r[0] <= r[1] and r[0] in subnet and r[1] in subnet:
        return None
    return f"'{r[0]}-{r[1]}' must be 'FIRST-LAST' inside {subnet}, FIRST <= LAST"


# -- the cluster section ----------------------------------------------------------------------


class BootFiles(Table):
    """The `boot_files` table, refused when an entry cannot work whatever the boot tree holds
    (the boot registry says which keys and loaders fit)."""

    def convert(self, raw: Any) -> dict[str, Any]:
        value = super().convert(raw)
        for key, problem in override_problems(value):
            raise Invalid(problem, (key,))
        return value


@dataclass(frozen=True, kw_only=True)
class Network:
    interface: str | None = setting(Text(), help="the provisioning interface on the master")
    subnet: IPv4Network = setting(Subnet(), required=True)
    master: IPv4Address = setting(
        Address(),
        derive=lambda s: next(s.subnet.hosts(), s.subnet.network_address),
        check=_in_subnet,
        help="default: the subnet's first host",
    )
    gateway: IPv4Address | None = setting(Address(), check=_in_subnet)
    dns: tuple[IPv4Address, ...] = setting(Addresses())
    dynamic_range: tuple[IPv4Address, IPv4Address] | None = setting(
        AddressRange(),
        check=lambda r, s: _range_in(r, s.subnet),
        help="addresses for nodes that are not in the inventory",
    )

    def in_dynamic_range(self, ip: IPv4Address) -> bool:
        return self.dynamic_range is not None and self.dynamic_range[0] <= ip <= self.dynamic_range[1]


@dataclass(frozen=True, kw_only=True)
class NfsExport:
    path: str = setting(Text(), required=True)
    mount: str = setting(Text(), derive=lambda s: s.path, help="where nodes mount it; default: the path")
    access: str = setting(Choice(("ro", "rw")), default="rw")
    options: str = setting(Text(), default="")


@dataclass(frozen=True, kw_only=True)
class Nfs:
    server: IPv4Address = setting(Address(), derive=lambda s: s.network.master, help="default: the master")
    version: str = setting(Text(), default="4.2")
    exports: tuple[NfsExport, ...] = setting(Sections(NfsExport))


@dataclass(frozen=True, kw_only=True)
class Slurm:
    controller: str = setting(Text(), default="master")
    address: IPv4Address = setting(Address(), derive=lambda s: s.network.master, help="default: the master")
    port: int = setting(Count(1, 65535), default=6817)
    options: Mapping[str, str] = setting(Options("slurm.conf keys to values"))


@dataclass(frozen=True, kw_only=True)
class Ports:
    http: int = setting(Count(1, 65535), default=80)
    tftp: int = setting(Count(1, 65535), default=69)
    dhcp: int = setting(Count(1, 65535), default=67)


@dataclass(frozen=True, kw_only=True)
class Dhcp:
    mode: str = setting(Choice(("full", "proxy")), default="full")
    lease_time: int = setting(Count(60), default=3600)


def _renamed_adopt(value: str, _: Scope) -> str:
    return f"is now two settings: write `mode: auto` and `names: {value}`"


@dataclass(frozen=True, kw_only=True)
class Discovery:
    """What happens to a PXE client no node entry names: it waits in `node discovered` for the
    admin's `node approve` (mode approve), or the server adopts it at once (mode auto), at most
    `rate` a minute, so a flood of made-up MACs cannot use up the names and addresses or
    collect the MUNGE key faster than the written policy allows."""

    mode: str = setting(Choice(("approve", "auto")), default="approve")
    names: str | None = setting(Hostlist(), help="hostlist new nodes are named from, like auto[001-100]")
    addresses: tuple[IPv4Address, IPv4Address] | None = setting(
        AddressRange(),
        check=lambda r, s: _range_in(r, s.network.subnet),
        help="FIRST-LAST static addresses for new nodes; default: any free one outside the dynamic range",
    )
    profiles: tuple[str, ...] = setting(Names(), help="profiles an adopted node gets")
    rate: int = setting(Count(1, 10000), default=10, help="adoptions per minute at most (mode auto)")
    adopt: str | None = setting(Hostlist(), check=_renamed_adopt, help="old spelling of mode auto + names")


@dataclass(frozen=True, kw_only=True)
class Retention:
    """How much node-state history `serve` keeps, so that strangers (a flood of requests for
    missing files, of random MACs) cannot grow it without bound: rows older than `days`, and
    the oldest beyond a table's count, are deleted every `interval` seconds."""

    days: int = setting(Count(1, 36500), default=30, help="events, transfers and discovered MACs kept this long")
    events: int = setting(Count(10), default=200000, help="boot-stage events kept at most")
    transfers: int = setting(Count(10), default=200000, help="TFTP and HTTP transfer records kept at most")
    discovered: int = setting(Count(10), default=4096, help="discovered (unknown) MACs kept at most")
    interval: int = setting(Count(1, 86400), default=300, help="seconds between two trims by serve")


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What a flood may take of the boot services before it is refused; the references are
    dnsmasq's tftp-max (50) and nginx's client_header_timeout (60 s) and keepalive_timeout
    (75 s). Read when `serve` starts (a reload keeps the caps it started with)."""

    tftp_transfers: int = setting(
        Count(1, 100_000),
        default=1000,
        help="TFTP transfers at once (2 descriptors each), split between the TFTP processes",
    )
    tftp_per_client: int = setting(Count(1, 10_000), default=16, help="TFTP transfers at once from one address")
    tftp_max_timeout: int = setting(
        Count(1, 255), default=5, help="a larger RFC 2349 timeout option is not acknowledged (seconds)"
    )
    tftp_cache_mb: int = setting(Count(0, 1 << 20), default=64, help="prebuilt TFTP DATA packets, per process")
    http_connections: int = setting(Count(1, 100_000), default=1024, help="HTTP connections at once; more get 503")
    http_per_client: int = setting(Count(1, 100_000), default=64, help="HTTP connections at once from one address")
    http_header_timeout: int = setting(Count(1, 3600), default=60, help="seconds to send a request's headers")
    http_keepalive_timeout: int = setting(Count(1, 3600), default=75, help="seconds an idle connection is kept")


@dataclass(frozen=True, kw_only=True)
class Cluster:
    name: str = setting(Label(), required=True, default="cluster")
    domain: str = setting(Text(), default="cluster")
    network: Network = setting(Section(Network), required=True)
    nfs: Nfs = setting(Section(Nfs))
    slurm: Slurm = setting(Section(Slurm))
    time_servers: tuple[str, ...] = setting(Names())
    ports: Ports = setting(Section(Ports))
    dhcp: Dhcp = setting(Section(Dhcp))
    discovery: Discovery = setting(Section(Discovery))
    retention: Retention = setting(Section(Retention))
    limits: Limits = setting(Section(Limits))
    secure: bool = setting(Flag(), default=True)


# -- profiles and nodes -----------------------------------------------------------------------


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


@dataclass(frozen=True, kw_only=True)
class Node:
    """A node merged with its profiles; `sources` says where each setting came from."""

    name: str
    interfaces: tuple[Interface, ...]
    profiles: tuple[str, ...]
    bmc: IPv4Address | None
    # The settings a profile or a node may carry: each line is the whole declaration.
    image: str | None = setting(Text(), "--image", "Root image the node boots.")
    kernel: str | None = setting(Text(), "--kernel", "Kernel version from the image.")
    kernel_args: tuple[str, ...] = setting(Words(), "--kernel-arg", "Repeatable.")
    initramfs_modules: tuple[str, ...] = setting(
        Names(), "--initramfs-module", "Kernel module the image's initramfs carries, like a NIC driver (repeatable)."
    )
    overlays: tuple[str, ...] = setting(Names(), "--overlay", "Repeatable or comma list.")
    partitions: tuple[str, ...] = setting(Names(), "--partition", "Slurm partition (repeatable or comma list).")
    features: tuple[str, ...] = setting(Names(), "--feature", "Slurm feature (repeatable or comma list).")
    mpi_slots: int | None = setting(Count(1, 100000), "--mpi-slots", "MPI slots (default: its reported CPUs).")
    boot_files: Mapping[str, str] = setting(BootFiles())  # per client architecture; no flag yet
    vars: Mapping[str, Any] = setting(Table(), "--var", "KEY=VALUE for templates (repeatable).")
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


SETTINGS: Mapping[str, Setting] = settings_of(Node)


@dataclass(frozen=True)
class Inventory:
    path: Path
    cluster: Cluster
    profiles: Mapping[str, Profile]
    nodes: tuple[Node, ...]

    _by_name: dict[str, Node] = field(init=False, repr=False, compare=False)
    _by_mac: dict[str, Node] = field(init=False, repr=False, compare=False)
    _by_ip: dict[IPv4Address, Node] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {n.name: n for n in self.nodes})
        object.__setattr__(self, "_by_mac", {i.mac: n for n in self.nodes for i in n.interfaces if i.mac})
        object.__setattr__(self, "_by_ip", {i.ip: n for n in self.nodes for i in n.interfaces if i.ip})

    def node(self, name: str) -> Node | None:
        return self._by_name.get(name)

    def by_mac(self, mac: str) -> Node | None:
        return self._by_mac.get(mac.lower())

    def by_ip(self, ip: IPv4Address | str) -> Node | None:
        return self._by_ip.get(IPv4Address(ip))

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
                found = self.node(name)
                if found is None:
                    missing.append(name)
                else:
                    chosen.setdefault(name, found)
        if missing:
            raise KeyError(", ".join(missing))
        order = {n.name: i for i, n in enumerate(self.nodes)}
        return sorted(chosen.values(), key=lambda n: order[n.name])
