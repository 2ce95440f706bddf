"""Adopting a discovered MAC into the inventory: by the admin (`provisioner node adopt`) or
automatically under the cluster.discovery.adopt policy (names taken from a hostlist such as
node[100-199]). The edit goes through edit_inventory, so the admin's comments survive and an
invalid result writes nothing."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path
from typing import Sequence

from ruamel.yaml.comments import CommentedMap

from ...inventory.edit import edit_inventory, next_free_ip, node_entries, set_fields
from ...inventory.hostlist import expand


class AdoptError(Exception):
    """Adoption is not possible (MAC known, name taken, no name or address left)."""


def adopt(path: str | Path, mac: str, name: str | None = None,
          profiles: Sequence[str] | None = None) -> tuple[str, IPv4Address]:
    """Add node `name` (or the first free name of the adopt policy) with `mac` and the next
    free static address; return (name, address)."""
    with edit_inventory(path) as (doc, inv):
        known = inv.by_mac(mac)
        if known is not None:
            raise AdoptError(f"{mac} is already node {known.name}")
        if name is None:
            policy = inv.cluster.discovery.adopt
            if not policy:
                raise AdoptError("no cluster.discovery.adopt policy to name the node from")
            name = next((n for n in expand(policy) if inv.node(n) is None), None)
            if name is None:
                raise AdoptError(f"every name of {policy} is taken")
        elif inv.node(name) is not None:
            raise AdoptError(f"node {name} exists already")
        ip = next_free_ip(inv)
        if ip is None:
            raise AdoptError(f"no free address left in {inv.cluster.network.subnet}")
        entry = CommentedMap({"name": name, "ip": str(ip), "mac": mac})
        chosen = list(profiles) if profiles else list(inv.cluster.discovery.profiles)
        set_fields(entry, {"profiles": chosen or None})
        node_entries(doc).append(entry)
    return name, ip
