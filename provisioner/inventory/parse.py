"""cluster.yaml -> Inventory, reporting every problem at once with file, line and field."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path as FsPath
from typing import Any, Callable

import yaml

from ..bootfiles import override_problems
from . import yamlpos
from .hostlist import HostlistError, expand, is_range
from .merge import merge_settings
from .model import (
    SETTINGS, Cluster, Dhcp, Discovery, Interface, Inventory, Network, Nfs, NfsExport, Node,
    Ports, Profile, Slurm,
)

Path = yamlpos.Path

CLUSTER_KEYS = {"name", "domain", "network", "nfs", "slurm", "time_servers", "ports", "dhcp",
                "discovery", "secure"}
NETWORK_KEYS = {"interface", "subnet", "gateway", "dns", "master", "dynamic_range"}
NFS_KEYS = {"server", "version", "exports"}
EXPORT_KEYS = {"path", "mount", "access", "options"}
SLURM_KEYS = {"controller", "address", "port", "options"}
PORT_KEYS = {"http", "tftp", "dhcp"}
DHCP_KEYS = {"mode", "lease_time"}
DISCOVERY_KEYS = {"adopt", "profiles"}
PROFILE_KEYS = {"description", *SETTINGS}
NODE_KEYS = {"name", "interfaces", "mac", "ip", "profiles", "bmc", *SETTINGS}
IFACE_KEYS = {"name", "mac", "ip"}

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.I)
_MAC_HEX = re.compile(r"^[0-9a-f]{12}$")


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class InventoryInvalid(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


def field_name(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top)"


def normalize_mac(value: str) -> str | None:
    """Lower-case colon form of a MAC in colon, dash, dot or bare-hex notation, or None."""
    hexdigits = re.sub(r"[:\-.]", "", value.strip().lower())
    if not _MAC_HEX.match(hexdigits):
        return None
    if re.search(r"[:\-.]", value) and not re.fullmatch(
        r"([0-9a-f]{2}[:-]){5}[0-9a-f]{2}|([0-9a-f]{4}\.){2}[0-9a-f]{4}", value.strip().lower()
    ):
        return None
    return ":".join(hexdigits[i:i + 2] for i in range(0, 12, 2))


def valid_hostname(name: str) -> bool:
    return bool(_LABEL.match(name))


class _Parser:
    def __init__(self, located: yamlpos.Located, filename: str):
        self.loc = located
        self.file = filename
        self.problems: list[Problem] = []

    # -- reporting -------------------------------------------------------------------------
    def err(self, path: Path, message: str) -> None:
        self.problems.append(Problem(self.file, self.loc.line(path), field_name(path), message))

    def mapping(self, value: Any, path: Path, allowed: set[str], required: tuple[str, ...] = ()) -> dict:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.err(path, f"must be a mapping, not {type(value).__name__}")
            return {}
        for key in value:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                self.err((*path, key), f"unknown key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        for key in required:
            if value.get(key) is None:
                self.err(path, f"missing required key {key!r}")
        return value

    # -- typed getters (None on a problem, which is recorded) ---------------------------------
    def typed(self, m: dict, path: Path, key: str, conv: Callable[[Any], Any], what: str, default: Any = None) -> Any:
        if m.get(key) is None:
            return default
        try:
            return conv(m[key])
        except (ValueError, TypeError) as e:
            detail = f" ({e})" if str(e) and what not in str(e) else ""
            self.err((*path, key), f"{m[key]!r} is not {what}{detail}")
            return default

    def ip(self, m: dict, path: Path, key: str, default: Any = None) -> IPv4Address | None:
        return self.typed(m, path, key, lambda v: IPv4Address(str(v)), "an IPv4 address", default)

    def string(self, m: dict, path: Path, key: str, default: Any = None) -> str | None:
        return self.typed(m, path, key, _as_str, "a string", default)

    def integer(self, m: dict, path: Path, key: str, default: Any = None, lo: int = 0, hi: int = 2**31) -> int | None:
        def conv(v: Any) -> int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError("")
            if not lo <= v <= hi:
                raise ValueError(f"out of range {lo}..{hi}")
            return v
        return self.typed(m, path, key, conv, "a whole number", default)

    def strings(self, m: dict, path: Path, key: str) -> tuple[str, ...]:
        value = m.get(key)
        if value is None:
            return ()
        if isinstance(value, (str, int, float)):
            return tuple(str(value).split()) if key == "kernel_args" else (str(value),)
        if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
            self.err((*path, key), "must be a list of strings")
            return ()
        return tuple(str(v) for v in value)

    # -- sections -----------------------------------------------------------------------------
    def cluster(self, raw: Any) -> Cluster | None:
        path: Path = ("cluster",)
        c = self.mapping(raw, path, CLUSTER_KEYS, required=("name", "network"))
        name = self.string(c, path, "name", "cluster")
        if name and not valid_hostname(name):
            self.err((*path, "name"), f"{name!r} is not a valid name (letters, digits, '-')")
        domain = self.string(c, path, "domain", "cluster")
        net = self.network(c.get("network"), (*path, "network"))
        if net is None:
            return None
        nfs_path = (*path, "nfs")
        nfs_raw = self.mapping(c.get("nfs"), nfs_path, NFS_KEYS)
        exports = []
        raw_exports = nfs_raw.get("exports") or []
        if not isinstance(raw_exports, list):
            self.err((*nfs_path, "exports"), "must be a list")
            raw_exports = []
        for i, e in enumerate(raw_exports):
            ep = (*nfs_path, "exports", i)
            e = self.mapping(e, ep, EXPORT_KEYS, required=("path",))
            access = self.string(e, ep, "access", "rw")
            if access not in ("ro", "rw"):
                self.err((*ep, "access"), f"{access!r} must be 'ro' or 'rw'")
            if e.get("path"):
                exports.append(NfsExport(str(e["path"]), str(e.get("mount") or e["path"]), access or "rw",
                                         self.string(e, ep, "options", "") or ""))
        nfs = Nfs(self.ip(nfs_raw, nfs_path, "server", net.master) or net.master,
                  str(nfs_raw.get("version") or "4.2"), tuple(exports))
        sp = (*path, "slurm")
        s = self.mapping(c.get("slurm"), sp, SLURM_KEYS)
        options = s.get("options") or {}
        if not isinstance(options, dict):
            self.err((*sp, "options"), "must be a mapping of slurm.conf keys to values")
            options = {}
        slurm = Slurm(self.string(s, sp, "controller", "master") or "master",
                      self.ip(s, sp, "address", net.master) or net.master,
                      self.integer(s, sp, "port", 6817, 1, 65535) or 6817,
                      {str(k): str(v) for k, v in options.items()})
        pp = (*path, "ports")
        p = self.mapping(c.get("ports"), pp, PORT_KEYS)
        ports = Ports(*(self.integer(p, pp, k, d, 1, 65535) or d for k, d in (("http", 80), ("tftp", 69), ("dhcp", 67))))
        dp = (*path, "dhcp")
        d = self.mapping(c.get("dhcp"), dp, DHCP_KEYS)
        mode = self.string(d, dp, "mode", "full")
        if mode not in ("full", "proxy"):
            self.err((*dp, "mode"), f"{mode!r} must be 'full' or 'proxy'")
        dhcp = Dhcp(mode or "full", self.integer(d, dp, "lease_time", 3600, 60) or 3600)
        dsp = (*path, "discovery")
        ds = self.mapping(c.get("discovery"), dsp, DISCOVERY_KEYS)
        adopt = self.string(ds, dsp, "adopt")
        if adopt:
            try:
                expand(adopt)
            except HostlistError as e:
                self.err((*dsp, "adopt"), str(e))
        discovery = Discovery(adopt, self.strings(ds, dsp, "profiles"))
        secure = c.get("secure", True)
        if not isinstance(secure, bool):
            self.err((*path, "secure"), "must be true or false")
            secure = True
        return Cluster(name or "cluster", domain or "cluster", net, nfs, slurm,
                       self.strings(c, path, "time_servers"), ports, dhcp, discovery, secure)

    def network(self, raw: Any, path: Path) -> Network | None:
        n = self.mapping(raw, path, NETWORK_KEYS, required=("subnet",))
        subnet = self.typed(n, path, "subnet", lambda v: IPv4Network(str(v), strict=True), "an IPv4 subnet (like 10.0.0.0/24)")
        if subnet is None:
            return None
        master = self.ip(n, path, "master", next(subnet.hosts(), subnet.network_address))
        gateway = self.ip(n, path, "gateway")
        dns = []
        for i, v in enumerate(n.get("dns") or []):
            try:
                dns.append(IPv4Address(str(v)))
            except ValueError:
                self.err((*path, "dns", i), f"{v!r} is not an IPv4 address")
        for key, addr in (("master", master), ("gateway", gateway)):
            if addr is not None and addr not in subnet:
                self.err((*path, key), f"{addr} is outside the subnet {subnet}")
        dyn = None
        if n.get("dynamic_range") is not None:
            text = str(n["dynamic_range"])
            parts = [p.strip() for p in text.split("-")]
            try:
                if len(parts) != 2:
                    raise ValueError
                lo, hi = IPv4Address(parts[0]), IPv4Address(parts[1])
                if lo > hi or lo not in subnet or hi not in subnet:
                    raise ValueError
                dyn = (lo, hi)
            except ValueError:
                self.err((*path, "dynamic_range"), f"{text!r} must be 'FIRST-LAST' inside {subnet}, FIRST <= LAST")
        iface = self.string(n, path, "interface")
        return Network(iface, subnet, master or subnet.network_address, gateway, tuple(dns), dyn)

    def settings(self, m: dict, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, kind in SETTINGS.items():
            if key not in m or m[key] is None:
                continue
            if kind == "list":
                out[key] = self.strings(m, path, key)
            elif kind == "dict":
                if not isinstance(m[key], dict):
                    self.err((*path, key), "must be a mapping")
                else:
                    out[key] = {str(k): v for k, v in m[key].items()}
                    if key == "boot_files":
                        for name, problem in override_problems(m[key]):
                            self.err((*path, key, name), problem)
            elif key == "mpi_slots":
                v = self.integer(m, path, key, None, 1, 100000)
                if v is not None:
                    out[key] = v
            else:
                v = self.string(m, path, key)
                if v is not None:
                    out[key] = v
        return out

    def profiles(self, raw: Any) -> dict[str, Profile]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.err(("profiles",), "must be a mapping of profile name to settings")
            return {}
        out = {}
        for name, body in raw.items():
            path: Path = ("profiles", name)
            body = self.mapping(body, path, PROFILE_KEYS)
            out[str(name)] = Profile(str(name), self.settings(body, path), str(body.get("description") or ""))
        return out

    def nodes(self, raw: Any, cluster: Cluster, profiles: dict[str, Profile]) -> list[Node]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.err(("nodes",), "must be a list of node entries")
            return []
        nodes: list[Node] = []
        for i, entry in enumerate(raw):
            nodes.extend(self.node_entry(entry, ("nodes", i), cluster, profiles))
        self.cross_check(nodes, cluster)
        return nodes

    def node_entry(self, raw: Any, path: Path, cluster: Cluster, profiles: dict[str, Profile]) -> list[Node]:
        e = self.mapping(raw, path, NODE_KEYS, required=("name",))
        if not e.get("name"):
            return []
        pattern = str(e["name"])
        try:
            names = expand(pattern) if is_range(pattern) else [pattern]
        except HostlistError as err:
            self.err((*path, "name"), str(err))
            return []
        for name in names:
            if not valid_hostname(name):
                self.err((*path, "name"), f"{name!r} is not a valid hostname (RFC 1123: letters, digits, '-', 1-63 characters, no leading or trailing '-')")
        if "interfaces" in e and ("mac" in e or "ip" in e):
            self.err(path, "give either 'interfaces' or the shorthand 'mac'/'ip', not both")
        if e.get("interfaces") is not None:
            if not isinstance(e["interfaces"], list) or not e["interfaces"]:
                self.err((*path, "interfaces"), "must be a non-empty list")
                raw_ifaces: list[tuple[dict, Path]] = []
            else:
                raw_ifaces = [(self.mapping(x, (*path, "interfaces", k), IFACE_KEYS), (*path, "interfaces", k))
                              for k, x in enumerate(e["interfaces"])]
        else:
            raw_ifaces = [({"mac": e.get("mac"), "ip": e.get("ip")}, path)]
        per_node_ifaces: list[list[Interface]] = [[] for _ in names]
        for k, (iface, ipath) in enumerate(raw_ifaces):
            macs = self.macs_for(iface, ipath, names)
            first_ip = self.ip(iface, ipath, "ip")
            if k == 0 and first_ip is None and "ip" not in iface:
                self.err(ipath, "the first interface needs an 'ip' (the first address for a range)")
            for j, _ in enumerate(names):
                ip = first_ip + j if first_ip is not None else None
                per_node_ifaces[j].append(Interface(str(iface.get("name") or f"eth{k}"), macs[j], ip))
        prof_names = self.strings(e, path, "profiles") if "profiles" in e else (("default",) if "default" in profiles else ())
        for pn in prof_names:
            if pn not in profiles:
                hint = difflib.get_close_matches(pn, sorted(profiles), n=1)
                self.err((*path, "profiles"), f"unknown profile {pn!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        own = self.settings(e, path)
        layers = [(f"profile:{pn}", profiles[pn].settings) for pn in prof_names if pn in profiles]
        layers.append(("node", own))
        merged, sources = merge_settings(layers)
        bmc = self.ip(e, path, "bmc")
        line = self.loc.line(path)
        return [
            Node(name=name, interfaces=tuple(per_node_ifaces[j]), profiles=tuple(prof_names),
                 bmc=(bmc + j if bmc is not None else None), sources=sources, line=line, **_node_fields(merged))
            for j, name in enumerate(names)
        ]

    def macs_for(self, iface: dict, path: Path, names: list[str]) -> list[str | None]:
        raw = iface.get("mac")
        if raw is None:
            return [None] * len(names)
        values = raw if isinstance(raw, list) else [raw]
        if len(names) > 1 and not isinstance(raw, list):
            self.err((*path, "mac"), f"a range of {len(names)} nodes takes a list of {len(names)} MACs, one per node")
            return [None] * len(names)
        if len(values) != len(names):
            self.err((*path, "mac"), f"{len(values)} MACs given for {len(names)} nodes")
        out: list[str | None] = []
        for j, v in enumerate(values[: len(names)]):
            mac = normalize_mac(str(v)) if isinstance(v, str) else None
            if mac is None:
                self.err((*path, "mac", j) if isinstance(raw, list) else (*path, "mac"),
                         f"{v!r} is not a MAC address (like 52:54:00:12:34:56)")
            out.append(mac)
        return out + [None] * (len(names) - len(out))

    def cross_check(self, nodes: list[Node], cluster: Cluster) -> None:
        seen_name: dict[str, Node] = {}
        seen_mac: dict[str, Node] = {}
        seen_ip: dict[IPv4Address, Node] = {}
        net = cluster.network
        reserved = {net.master: "the master", net.gateway: "the gateway"}
        for n in nodes:
            where = ("nodes", _entry_index(self.loc, n.line))
            if n.name in seen_name:
                self.err((*where, "name"), f"duplicate node name {n.name!r} (first at line {seen_name[n.name].line})")
            seen_name.setdefault(n.name, n)
            for iface in n.interfaces:
                if iface.mac:
                    if iface.mac in seen_mac and seen_mac[iface.mac] is not n:
                        self.err((*where, "mac"), f"{n.name}: MAC {iface.mac} is already used by {seen_mac[iface.mac].name}")
                    seen_mac.setdefault(iface.mac, n)
                if iface.ip is None:
                    continue
                if iface.ip in seen_ip and seen_ip[iface.ip] is not n:
                    self.err((*where, "ip"), f"{n.name}: IP {iface.ip} is already used by {seen_ip[iface.ip].name}")
                seen_ip.setdefault(iface.ip, n)
                if iface is n.primary:
                    if iface.ip not in net.subnet or iface.ip in (net.subnet.network_address, net.subnet.broadcast_address):
                        self.err((*where, "ip"), f"{n.name}: IP {iface.ip} is not a host address of the subnet {net.subnet}")
                    elif net.in_dynamic_range(iface.ip):
                        lo, hi = net.dynamic_range  # type: ignore[misc]
                        self.err((*where, "ip"), f"{n.name}: IP {iface.ip} is inside the dynamic range {lo}-{hi}")
                    elif iface.ip in reserved:
                        self.err((*where, "ip"), f"{n.name}: IP {iface.ip} is {reserved[iface.ip]}'s address")


def _entry_index(loc: yamlpos.Located, line: int) -> int:
    for path, ln in loc.lines.items():
        if len(path) == 2 and path[0] == "nodes" and ln == line:
            return int(path[1])
    return 0


def _as_str(v: Any) -> str:
    if isinstance(v, (dict, list)):
        raise TypeError("")
    return str(v)


def _node_fields(merged: dict[str, Any]) -> dict[str, Any]:
    return {
        "image": merged.get("image"),
        "kernel": merged.get("kernel"),
        "kernel_args": tuple(merged.get("kernel_args", ())),
        "overlays": tuple(merged.get("overlays", ())),
        "partitions": tuple(merged.get("partitions", ())),
        "features": tuple(merged.get("features", ())),
        "mpi_slots": merged.get("mpi_slots"),
        "boot_files": dict(merged.get("boot_files", {})),
        "vars": dict(merged.get("vars", {})),
    }


def parse_text(text: str, filename: str) -> Inventory:
    """Parse and validate; raise InventoryInvalid listing every problem."""
    try:
        located = yamlpos.load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise InventoryInvalid([Problem(filename, line, "(syntax)", str(getattr(e, "problem", e)))]) from None
    p = _Parser(located, filename)
    for path, line in located.duplicates:
        p.problems.append(Problem(filename, line, field_name(path), "key given twice"))
    data = located.data
    if not isinstance(data, dict):
        raise InventoryInvalid([Problem(filename, 1, "(top)", "must be a mapping with cluster, profiles and nodes")])
    p.mapping(data, (), {"cluster", "profiles", "nodes"}, required=("cluster",))
    cluster = p.cluster(data.get("cluster")) if data.get("cluster") is not None else None
    profiles = p.profiles(data.get("profiles"))
    nodes = p.nodes(data.get("nodes"), cluster, profiles) if cluster else []
    if cluster is not None:
        for ap in cluster.discovery.profiles:
            if ap not in profiles:
                p.err(("cluster", "discovery", "profiles"), f"unknown profile {ap!r}")
    if p.problems or cluster is None:
        raise InventoryInvalid(sorted(p.problems, key=lambda x: x.line))
    return Inventory(FsPath(filename), cluster, profiles, tuple(nodes))


def load_inventory(path: str | FsPath) -> Inventory:
    path = FsPath(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise InventoryInvalid([Problem(str(path), 0, "(file)", e.strerror or str(e))]) from None
    return parse_text(text, str(path))
