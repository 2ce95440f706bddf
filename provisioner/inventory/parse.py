"""cluster.yaml -> Inventory, reporting every problem at once with file, line and field."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import re
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path as FsPath
from typing import Any, TypeVar

import yaml

from . import yamlpos
from .hostlist import HostlistError, expand, is_range
from .merge import merge_settings
from .model import SETTINGS, Cluster, Interface, Inventory, Node, Profile
from .schema import (
    Address,
    Invalid,
    Kind,
    Names,
    Scope,
    Section,
    Sections,
    Unresolved,
    settings_of,
    valid_hostname,
)

Path = yamlpos.Path
T = TypeVar("T")

# A node entry: who the node is and where (name, interfaces or the mac/ip shorthand, profiles,
# bmc), then its settings.
NODE_KEYS = {"name", "interfaces", "mac", "ip", "profiles", "bmc", *SETTINGS}
PROFILE_KEYS = {"description", *SETTINGS}
IFACE_KEYS = {f.name for f in dataclasses.fields(Interface)}

_MAC_HEX = re.compile(r"^[0-9a-f]{12}$")
_ADDRESS, _NAMES = Address(), Names()
_MISSING: Any = dataclasses.MISSING


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
    return ":".join(hexdigits[i : i + 2] for i in range(0, 12, 2))


class _Parser:
    def __init__(self, located: yamlpos.Located, filename: str):
        self.loc = located
        self.file = filename
        self.problems: list[Problem] = []

    # -- reporting -------------------------------------------------------------------------
    def err(self, path: Path, message: str) -> None:
        self.problems.append(Problem(self.file, self.loc.line(path), field_name(path), message))

    def mapping(self, value: Any, path: Path, allowed: set[str], required: tuple[str, ...] = ()) -> dict[str, Any]:
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

    # -- values (None or MISSING on a problem, which is recorded) -----------------------------
    def parsed(self, raw: Any, path: Path, kind: Kind) -> Any:
        try:
            return kind.parse(raw)
        except Invalid as e:
            self.err((*path, *e.at), e.message)
            return _MISSING

    def value(self, m: dict[str, Any], path: Path, key: str, kind: Kind) -> Any:
        if m.get(key) is None:
            return None
        v = self.parsed(m[key], (*path, key), kind)
        return None if v is _MISSING else v

    # -- sections -----------------------------------------------------------------------------
    def section(self, raw: Any, path: Path, model: type[T], outer: Scope | None = None) -> T | None:
        """A model dataclass from a mapping, every field read as its setting declares; None
        when a value it cannot do without is missing or wrong (that problem is recorded)."""
        specs = settings_of(model)
        m = self.mapping(raw, path, set(specs), tuple(k for k, s in specs.items() if s.required))
        values: dict[str, Any] = {}
        scope = Scope(values, outer)
        complete = True
        for key, s in specs.items():
            sub = (*path, key)
            if isinstance(s.kind, Section):
                value = self.section(m.get(key), sub, s.kind.model, scope)
                value = _MISSING if value is None else value
            elif isinstance(s.kind, Sections):
                value = self.sections(m.get(key), sub, s.kind.model, scope)
            else:
                value = _MISSING if m.get(key) is None else self.parsed(m[key], sub, s.kind)
            if value is _MISSING and s.derive is not None:
                with contextlib.suppress(Unresolved):
                    value = s.derive(scope)
            if value is _MISSING:
                value = s.fallback()
            if value is _MISSING:
                complete = False
                continue
            if value is not None and s.check is not None:
                with contextlib.suppress(Unresolved):
                    if problem := s.check(value, scope):
                        self.err(sub, problem)
            values[key] = value
        return model(**values) if complete else None

    def sections(self, raw: Any, path: Path, model: type[T], outer: Scope) -> tuple[T, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.err(path, "must be a list")
            return ()
        items = (self.section(item, (*path, i), model, outer) for i, item in enumerate(raw))
        return tuple(item for item in items if item is not None)

    def cluster(self, raw: Any) -> Cluster | None:
        return self.section(raw, ("cluster",), Cluster)

    def settings(self, m: dict[str, Any], path: Path) -> dict[str, Any]:
        """The node settings a profile or a node entry gives, parsed by their declarations."""
        out: dict[str, Any] = {}
        for key, s in SETTINGS.items():
            if m.get(key) is not None and (v := self.parsed(m[key], (*path, key), s.kind)) is not _MISSING:
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
                self.err(
                    (*path, "name"),
                    f"{name!r} is not a valid hostname (RFC 1123: letters, digits, '-', "
                    "1-63 characters, no leading or trailing '-')",
                )
        if "interfaces" in e and ("mac" in e or "ip" in e):
            self.err(path, "give either 'interfaces' or the shorthand 'mac'/'ip', not both")
        if e.get("interfaces") is not None:
            if not isinstance(e["interfaces"], list) or not e["interfaces"]:
                self.err((*path, "interfaces"), "must be a non-empty list")
                raw_ifaces: list[tuple[dict[str, Any], Path]] = []
            else:
                raw_ifaces = [
                    (self.mapping(x, (*path, "interfaces", k), IFACE_KEYS), (*path, "interfaces", k))
                    for k, x in enumerate(e["interfaces"])
                ]
        else:
            raw_ifaces = [({"mac": e.get("mac"), "ip": e.get("ip")}, path)]
        per_node_ifaces: list[list[Interface]] = [[] for _ in names]
        for k, (iface, ipath) in enumerate(raw_ifaces):
            macs = self.macs_for(iface, ipath, names)
            first_ip = self.value(iface, ipath, "ip", _ADDRESS)
            if k == 0 and first_ip is None and "ip" not in iface:
                self.err(ipath, "the first interface needs an 'ip' (the first address for a range)")
            if k > 0 and first_ip is not None and not valid_hostname(f"x-{iface.get('name') or 'eth'}"):
                # A further interface with an address is named NODE-IFACE in /etc/hosts and DNS.
                self.err((*ipath, "name"), f"{iface.get('name')!r} cannot be part of a DNS name (letters, digits, '-')")
            for j, _ in enumerate(names):
                ip = first_ip + j if first_ip is not None else None
                per_node_ifaces[j].append(Interface(str(iface.get("name") or f"eth{k}"), macs[j], ip))
        prof_names = (
            (self.value(e, path, "profiles", _NAMES) or ())
            if "profiles" in e
            else (("default",) if "default" in profiles else ())
        )
        for pn in prof_names:
            if pn not in profiles:
                hint = difflib.get_close_matches(pn, sorted(profiles), n=1)
                self.err(
                    (*path, "profiles"), f"unknown profile {pn!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                )
        own = self.settings(e, path)
        layers = [(f"profile:{pn}", profiles[pn].settings) for pn in prof_names if pn in profiles]
        layers.append(("node", own))
        merged, sources = merge_settings(layers)
        bmc = self.value(e, path, "bmc", _ADDRESS)
        line = self.loc.line(path)
        return [
            Node(
                name=name,
                interfaces=tuple(per_node_ifaces[j]),
                profiles=tuple(prof_names),
                bmc=(bmc + j if bmc is not None else None),
                sources=sources,
                line=line,
                **merged,
            )
            for j, name in enumerate(names)
        ]

    def macs_for(self, iface: dict[str, Any], path: Path, names: list[str]) -> list[str | None]:
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
                self.err(
                    (*path, "mac", j) if isinstance(raw, list) else (*path, "mac"),
                    f"{v!r} is not a MAC address (like 52:54:00:12:34:56)",
                )
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
                        self.err(
                            (*where, "mac"), f"{n.name}: MAC {iface.mac} is already used by {seen_mac[iface.mac].name}"
                        )
                    seen_mac.setdefault(iface.mac, n)
                if iface.ip is None:
                    continue
                if iface.ip in seen_ip and seen_ip[iface.ip] is not n:
                    self.err((*where, "ip"), f"{n.name}: IP {iface.ip} is already used by {seen_ip[iface.ip].name}")
                seen_ip.setdefault(iface.ip, n)
                if iface is n.primary:
                    if iface.ip not in net.subnet or iface.ip in (
                        net.subnet.network_address,
                        net.subnet.broadcast_address,
                    ):
                        self.err(
                            (*where, "ip"), f"{n.name}: IP {iface.ip} is not a host address of the subnet {net.subnet}"
                        )
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


def _parser(text: str, filename: str) -> _Parser:
    """A parser of the YAML document `text`, with its syntax error or duplicate keys raised or recorded."""
    try:
        located = yamlpos.load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise InventoryInvalid([Problem(filename, line, "(syntax)", str(getattr(e, "problem", e)))]) from None
    p = _Parser(located, filename)
    for path, line in located.duplicates:
        p.problems.append(Problem(filename, line, field_name(path), "key given twice"))
    return p


def parse_model(text: str, filename: str, model: type[T]) -> T:
    """A whole YAML file read as one model dataclass (an image recipe), its fields read as
    their settings declare; raise InventoryInvalid listing every problem with its line."""
    p = _parser(text, filename)
    found = p.section(p.loc.data, (), model)
    if p.problems or found is None:
        raise InventoryInvalid(sorted(p.problems, key=lambda x: x.line))
    return found


def parse_text(text: str, filename: str) -> Inventory:
    """Parse and validate; raise InventoryInvalid listing every problem."""
    p = _parser(text, filename)
    data = p.loc.data
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
        if cluster.discovery.mode == "auto" and not cluster.discovery.names:
            p.err(("cluster", "discovery", "mode"), "mode auto needs `names` (a hostlist to name new nodes from)")
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
