"""Adopting a discovered MAC into the inventory: by the admin (`provisioner node adopt`), or by
the DHCP server of `provisioner serve` under the cluster.discovery.adopt policy (names taken
from a hostlist such as node[100-199]). The edit goes through edit_inventory, so the admin's
comments survive and an invalid result writes nothing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from ruamel.yaml.comments import CommentedMap

from ..errors import UserError
from ..inventory import InventoryInvalid, normalize_mac
from ..inventory.edit import edit_inventory, next_free_ip, node_entries, set_fields
from ..inventory.hostlist import expand
from .context import Context


@dataclass(frozen=True)
class Adopted:
    mac: str
    name: str
    ip: IPv4Address


def adopt_node(ctx: Context, mac: str, name: str | None = None, profiles: Sequence[str] = ()) -> Adopted:
    """Add node `name` (default: the first free name of the adopt policy) with `mac`, the next
    free static address and `profiles` (default: cluster.discovery.profiles); the node-state DB
    notes the MAC as adopted and frees its dynamic lease."""
    norm = normalize_mac(mac)
    if norm is None:
        raise UserError(f"{mac!r} is not a MAC address (like 52:54:00:12:34:56)")
    if not ctx.has_inventory():
        raise UserError(f"no inventory at {ctx.site.cluster_yaml} (run `provisioner init` first)")
    try:
        with edit_inventory(ctx.site.cluster_yaml) as (doc, inv):
            known = inv.by_mac(norm)
            if known is not None:
                raise UserError(f"{norm} is already node {known.name}")
            if name is None:
                policy = inv.cluster.discovery.adopt
                if not policy:
                    raise UserError("no cluster.discovery.adopt policy to name the node from")
                name = next((n for n in expand(policy) if inv.node(n) is None), None)
                if name is None:
                    raise UserError(f"every name of {policy} is taken")
            elif inv.node(name) is not None:
                raise UserError(f"node {name} exists already")
            ip = next_free_ip(inv)
            if ip is None:
                raise UserError(f"no free address left in {inv.cluster.network.subnet}")
            entry = CommentedMap({"name": name, "ip": str(ip), "mac": norm})
            set_fields(entry, {"profiles": list(profiles or inv.cluster.discovery.profiles) or None})
            node_entries(doc).append(entry)
    except InventoryInvalid as e:
        raise UserError(f"not changed: {e}") from None
    db = ctx.db()
    db.mark_adopted(norm, name)
    db.drop_lease(norm)  # its dynamic address is free again: the node has a static one now
    return Adopted(norm, name, ip)
