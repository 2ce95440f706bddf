"""Inventory actions: write a starter site, check it, add and change nodes and profiles. Every
edit goes through inventory.edit (locked, atomic, comments kept) and is checked whole before it
is saved; values come in parsed (the CLI reads flags, the web console forms)."""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from ruamel.yaml.comments import CommentedMap

from ..artifacts import users as accounts
from ..atomic import atomic_write, locked
from ..errors import UserError
from ..inventory import Inventory, InventoryInvalid, Problem, load_inventory, parse_text
from ..inventory.edit import edit_inventory, isolate, next_free_ip, node_entries, set_fields
from ..inventory.hostlist import HostlistError, compress, expand, is_range
from ..inventory.starter import detect, gateway, starter_yaml
from .context import Context, select
from .power import missing_credentials


@contextlib.contextmanager
def editing(ctx: Context) -> Iterator[tuple[Any, Inventory]]:
    """edit_inventory with its failures as one-screen user errors; nothing is saved on error."""
    if not ctx.site.cluster_yaml.exists():
        raise UserError(f"no inventory at {ctx.site.cluster_yaml} (run `provisioner init` first)")
    try:
        with edit_inventory(ctx.site.cluster_yaml) as (doc, inv):
            yield doc, inv
    except InventoryInvalid as e:
        raise UserError(f"not changed: {e}") from None


def init_site(ctx: Context, interface: str | None, name: str | None, force: bool) -> list[str]:
    """Write a commented starter cluster.yaml for this host; returns what to tell the admin."""
    path = ctx.site.cluster_yaml
    if path.exists() and not force:
        raise UserError(f"{path} exists (use --force to overwrite)")
    try:
        net = detect(interface)
    except LookupError as e:
        raise UserError(str(e)) from None
    cname = name or re.sub(r"[^a-z0-9-]", "-", socket.gethostname().split(".")[0].lower()).strip("-") or "cluster"
    text = starter_yaml(cname, net)
    parse_text(text, str(path))
    with locked(path):
        atomic_write(path, text)
    (ctx.site.root / "nodes").mkdir(exist_ok=True)
    return [
        f"wrote {path} (interface {net.interface}, subnet {net.address.network}, master {net.address.ip})",
        gateway(net).summary,
        "the nodes ask this host for names and time: `provisioner configure all` sets up dnsmasq, chrony "
        "and rsyslog (node logs: `provisioner logs NODE`)",
    ]


@dataclass(frozen=True)
class CheckReport:
    inventory: Inventory | None  # None when it does not parse
    problems: list[Problem]  # each with file, line and field
    warnings: list[str]  # what works but will bite later


def check_site(ctx: Context) -> CheckReport:
    """Every problem of the inventory, and of the site accounts against the images' own."""
    try:
        inv = load_inventory(ctx.site.cluster_yaml)
    except InventoryInvalid as e:
        return CheckReport(None, e.problems, [])
    problems = [Problem(str(inv.path), 0, "cluster.users", p) for p in accounts.problems(ctx.state, inv)]
    warnings = []
    if missing := missing_credentials(Context(ctx.site, ctx.state, inv)):
        warnings.append(
            f"{len(missing)} node(s) have a BMC but no BMC password "
            f"(provisioner secrets set-bmc NODES): {', '.join(missing)}"
        )
    return CheckReport(inv, problems, warnings)


def add_nodes(
    ctx: Context,
    name: str,
    mac: str | None = None,
    ip: str | None = None,
    profiles: Sequence[str] = (),
    bmc: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> tuple[list[str], str]:
    """Add a node, or a range such as node[05-08] whose first address is `ip` (default: the next
    free one outside the dynamic range). Returns the names and the (first) address."""
    try:
        names = expand(name) if is_range(name) else [name]
    except HostlistError as e:
        raise UserError(str(e)) from None
    if mac and len(names) > 1:
        raise UserError("--mac names one node; add a range without MACs and set them per node")
    with editing(ctx) as (doc, inv):
        clash = [n for n in names if inv.node(n)]
        if clash:
            raise UserError(f"node {clash[0]} exists already")
        if ip is None:
            first = next_free_ip(inv)
            if first is None:
                raise UserError(f"no free address left in {inv.cluster.network.subnet}")
            ip = str(first)
        try:
            IPv4Address(ip)
        except ValueError:
            raise UserError(f"{ip!r} is not an IPv4 address") from None
        entry: dict[str, Any] = {"name": name, "ip": ip}
        if mac:
            entry["mac"] = mac
        m = CommentedMap(entry)
        set_fields(m, {"profiles": list(profiles) or None, "bmc": bmc, **(settings or {})})
        node_entries(doc).append(m)
    return names, ip


def set_nodes(ctx: Context, expr: str, values: Mapping[str, Any], unset: Sequence[str] = ()) -> list[str]:
    """Change node-level values (None: leave as is) of the nodes `expr` selects; a node inside
    a range entry is split out of it first. `mac` and `ip` name one node."""
    values = {k: v for k, v in values.items() if v is not None}
    with editing(ctx) as (doc, inv):
        names = [n.name for n in select(inv, expr)]
        if ("mac" in values or "ip" in values) and len(names) > 1:
            raise UserError("--mac and --ip name one node")
        for name in names:
            entry = isolate(doc, name)
            target = entry["interfaces"][0] if "interfaces" in entry and ("mac" in values or "ip" in values) else entry
            for key in ("mac", "ip"):
                if key in values:
                    target[key] = values[key]
            set_fields(entry, {k: v for k, v in values.items() if k not in ("mac", "ip")})
            for key in unset:
                entry.pop(key, None)
    return names


def _profiles_map(doc: Any) -> Any:
    if doc.get("profiles") is None:
        doc["profiles"] = CommentedMap()
    return doc["profiles"]


def add_profile(ctx: Context, name: str, description: str | None, settings: Mapping[str, Any]) -> None:
    with editing(ctx) as (doc, inv):
        if name in inv.profiles:
            raise UserError(f"profile {name} exists already")
        m = CommentedMap()
        set_fields(m, {"description": description, **settings})
        _profiles_map(doc)[name] = m


def set_profile(
    ctx: Context, name: str, description: str | None, settings: Mapping[str, Any], unset: Sequence[str] = ()
) -> None:
    with editing(ctx) as (doc, inv):
        if name not in inv.profiles:
            raise UserError(f"no such profile: {name}")
        entry = _profiles_map(doc)[name]
        set_fields(entry, {"description": description, **settings} if description else dict(settings))
        for key in unset:
            entry.pop(key, None)


def remove_profile(ctx: Context, name: str) -> None:
    """Remove a profile no node uses."""
    with editing(ctx) as (doc, inv):
        if name not in inv.profiles:
            raise UserError(f"no such profile: {name}")
        users = [n.name for n in inv.nodes if name in n.profiles]
        if users:
            raise UserError(f"profile {name} is used by {compress(users)}")
        del _profiles_map(doc)[name]
