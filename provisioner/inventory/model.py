"""The typed inventory: what the cluster and each node should be.

Everything downstream (renderers, servers) reads these frozen dataclasses, never raw YAML.
Each setting is declared once, as a field carrying its kind, default, checks and CLI flag
(see schema.py); the parser, profile merging, the CLI and the JSON view derive from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from ..bootfiles import override_problems
from .hostlist import expand, split_top
from .portname import PORT_FIELDS, node_name
from .schema import (
    Address,
    Addresses,
    AddressRange,
    Choice,
    Count,
    Flag,
    Hostlist,
    Invalid,
    Kind,
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
    valid_hostname,
)


def _in_subnet(addr: IPv4Address, s: Scope) -> str | None:
    return None if addr in s.subnet else f"{addr} is outside the subnet {s.subnet}"


def _range_in(r: tuple[IPv4Address, IPv4Address], subnet: IPv4Network) -> str | None:
    if r[0] <= r[1] and r[0] in subnet and r[1] in subnet:
        return None
    return f"'{r[0]}-{r[1]}' must be 'FIRST-LAST' inside {subnet}, FIRST <= LAST"


# MPI hostfile formats: OpenMPI's `name slots=N`, MPICH's `name:N`.
HOSTFILE_FORMATS = ("openmpi", "mpich")


def _absolute(path: str, _: Scope) -> str | None:
    return None if path.startswith("/") else f"{path!r} must be an absolute path"


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
    down_after: int = setting(
        Count(5, 65533),
        default=300,
        help="seconds a node may stop answering before Slurm sets it DOWN (SlurmdTimeout)",
    )
    hostfile: str | None = setting(
        Text(),
        check=_absolute,
        help="MPI hostfile of the nodes Slurm can run on now, kept by `slurm apply --watch` (shared filesystem)",
    )
    hostfile_format: str = setting(Choice(HOSTFILE_FORMATS), default="openmpi", help=" or ".join(HOSTFILE_FORMATS))
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


class Scalar(Kind):
    """A string or a whole number, kept as written (so `{rack:02}` can pad a number)."""

    what = "a string or a whole number"

    def convert(self, raw: Any) -> str | int:
        if isinstance(raw, bool) or not isinstance(raw, (str, int)):
            raise TypeError("")
        return raw


def _one_community(_: str, s: Scope) -> str | None:
    return "give community or community_file, not both" if s.community else None


@dataclass(frozen=True, kw_only=True)
class Switch:
    """An access switch whose forwarding table (Q-BRIDGE-MIB, else BRIDGE-MIB, over SNMP v1 or
    v2c) tells which port a new node's MAC was learned on."""

    address: IPv4Address = setting(Address(), required=True)
    port: int = setting(Count(1, 65535), default=161, help="the SNMP agent's UDP port")
    version: str = setting(Choice(("1", "2c")), default="2c")
    community: str | None = setting(Text(), help="a secret: better community_file; neither means 'public'")
    community_file: str | None = setting(
        Text(), check=_one_community, help="a file readable by root alone holding the community"
    )
    rack: str | int | None = setting(Scalar(), help="{rack} in the pattern")
    vars: Mapping[str, Any] = setting(Table(), help="more fields for the pattern")
    uplinks: tuple[str, ...] = setting(Names(), help="ports (numbers or interface names) that never name a node")
    macs_per_port: int = setting(
        Count(1, 4096), default=1, help="a port that learned more MACs is an uplink and names no node"
    )
    timeout: int = setting(Count(1, 60), default=2, help="seconds to wait for an answer (asked twice)")

    def __repr__(self) -> str:
        """Without the community: a policy in a log line or a traceback shows no secret."""
        shown = (f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name != "community")
        return f"Switch({', '.join(shown)})"

    def fields(self, port: int, ifindex: int | None, ifname: str | None) -> dict[str, Any]:
        """What the pattern may use for a node on `port` of this switch."""
        found = {"port": port, "ifindex": ifindex, "ifname": ifname, "rack": self.rack}
        return {**self.vars, **{k: v for k, v in found.items() if v is not None}}


def _pattern_fits(switches: tuple[Switch, ...], s: Scope) -> str | None:
    for i, sw in enumerate(switches):
        try:
            node_name(s.pattern, sw.fields(1, 1, "1"))
        except ValueError as e:
            return f"[{i}] ({sw.address}): {e}"
    return None


@dataclass(frozen=True, kw_only=True)
class Discovery:
    """What happens to a PXE client no node entry names: it waits in `node discovered` for the
    admin's `node approve` (mode approve), or the server adopts it at once (mode auto), at most
    `rate` a minute, so a flood of made-up MACs cannot use up the names and addresses or
    collect the MUNGE key faster than the written policy allows. With `switches`, a new node
    is named by `pattern` from the switch port it is plugged into, else from `names`."""

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
    pattern: str = setting(
        Text(),
        default="r{rack}n{port:02}",
        help=f"a new node's name from its switch port: fields {', '.join(PORT_FIELDS)}, a switch's rack and vars",
    )
    switches: tuple[Switch, ...] = setting(
        Sections(Switch), check=_pattern_fits, help="access switches naming new nodes by port; else `names`"
    )


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


def _domain(value: str, _: Scope) -> str | None:
    bad = [label for label in value.split(".") if not valid_hostname(label)]
    return f"{value!r} is not a DNS domain (labels of letters, digits, '-', joined by '.')" if bad else None


def _aliases(value: Mapping[str, str], _: Scope) -> str | None:
    bad = [name for name in value if not valid_hostname(name)]
    return f"alias {bad[0]!r} is not a valid DNS label (letters, digits, '-')" if bad else None


@dataclass(frozen=True, kw_only=True)
class Dns:
    """The cluster's names, answered by dnsmasq on the master (`provisioner configure dns`)."""

    upstream: tuple[IPv4Address, ...] = setting(
        Addresses(), help="servers other names are forwarded to; default: the master's /etc/resolv.conf"
    )
    aliases: Mapping[str, str] = setting(
        Options("alias names to a node name or an address"), check=_aliases, help="extra names in the cluster domain"
    )
    options: tuple[str, ...] = setting(Words(), help="dnsmasq lines appended verbatim (a list)")


@dataclass(frozen=True, kw_only=True)
class Ntp:
    """chrony on the master, serving the provisioning subnet (`provisioner configure ntp`)."""

    upstream: tuple[str, ...] = setting(Words(), help="servers the master keeps time from; none: its own clock")
    stratum: int = setting(Count(1, 15), default=10, help="stratum served from the local clock without upstream")
    options: tuple[str, ...] = setting(Words(), help="chrony.conf lines appended verbatim (a list)")


@dataclass(frozen=True, kw_only=True)
class Logs:
    """Nodes' syslog collected by rsyslog on the master (`provisioner configure logs`)."""

    max_mb: int = setting(
        Count(1, 1 << 20), default=16, help="a node's log is rotated at this size (one old file kept)"
    )
    options: tuple[str, ...] = setting(Words(), help="rsyslog lines appended verbatim (a list)")


@dataclass(frozen=True, kw_only=True)
class Users:
    """Which of the master's accounts the nodes with the `users` overlay get, merged into their
    image's own passwd and group, so a job runs under the same identity on every node. Ids
    from `min_id` to `max_id` (Debian's range for people, so nobody and system accounts stay
    the image's), or exactly the users in `names`; groups by the same range, the users'
    primary groups and `groups`."""

    min_id: int = setting(Count(0, 2**31), default=1000, help="lowest UID/GID taken from the master")
    max_id: int = setting(
        Count(0, 2**31),
        default=59999,
        check=lambda v, s: None if v >= s.min_id else f"must not be below min_id ({s.min_id})",
        help="highest UID/GID taken from the master",
    )
    names: tuple[str, ...] = setting(Names(), help="these users only, whatever their UID")
    groups: tuple[str, ...] = setting(Names(), help="groups taken besides those in the id range")
    shadow: bool = setting(Flag(), default=False, help="also the users' password hashes (/etc/shadow)")
    keys: Mapping[str, str] = setting(
        Options("user names to SSH public keys (one a line)"),
        help="keys authorized on the nodes besides ~/.ssh/authorized_keys (root: the admins')",
    )
    root: str = setting(Text(), default="/", help="where the master's etc/passwd, etc/group and homes are read")


@dataclass(frozen=True, kw_only=True)
class Web:
    """The web console at `/` on serve's HTTP port (servers/http/web.py)."""

    anonymous_read: bool = setting(
        Flag(),
        default=False,
        help="browsers on the provisioning subnet may read the console without logging in",
    )


@dataclass(frozen=True, kw_only=True)
class Cluster:
    name: str = setting(Label(), required=True, default="cluster")
    domain: str = setting(Text(), default="cluster", check=_domain)
    network: Network = setting(Section(Network), required=True)
    nfs: Nfs = setting(Section(Nfs))
    slurm: Slurm = setting(Section(Slurm))
    time_servers: tuple[str, ...] = setting(Names())
    ports: Ports = setting(Section(Ports))
    dhcp: Dhcp = setting(Section(Dhcp))
    discovery: Discovery = setting(Section(Discovery))
    retention: Retention = setting(Section(Retention))
    limits: Limits = setting(Section(Limits))
    users: Users = setting(Section(Users))
    secure: bool = setting(Flag(), default=True)
    dns: Dns = setting(Section(Dns))
    ntp: Ntp = setting(Section(Ntp))
    logs: Logs = setting(Section(Logs))
    web: Web = setting(Section(Web))


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


BMC_PROTOCOLS = ("ipmi", "redfish", "redfish-http")


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
    # How to reach the node's BMC at `bmc` (its password is a secret: `secrets set-bmc`).
    bmc_protocol: str = setting(
        Choice(BMC_PROTOCOLS), "--bmc-protocol", "ipmi (RMCP+), redfish (https) or redfish-http.", default="ipmi"
    )
    bmc_user: str = setting(Text(), "--bmc-user", "BMC user name.", default="admin")
    bmc_port: int | None = setting(Count(1, 65535), "--bmc-port", "BMC port (default: 623, https 443, http 80).")
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
