"""The one way tests write a site: cluster.yaml built from the parts a test cares about.

A test names its nodes, its profiles and the cluster settings it changes; the rest comes from
the lab's defaults (the `lab` fixture's subnet and bridge, the master on the subnet's first
address). Tests whose point is a particular YAML text (parser messages with line numbers,
comments kept through CLI edits, a broken file) keep that text literally instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import yaml

from provisioner.inventory.model import Inventory, Node

LAB_SUBNET = "10.99.0.0/24"  # the lab fixture's network (labs.net.Lab)

Entry = dict[str, Any]


def node(name: str, ip: str | None = None, mac: str | Sequence[str] | None = None, **settings: Any) -> Entry:
    """One `nodes:` entry. `name` may be a range (node[01-04]): `ip` is then the first
    node's address and `mac` a list, one per node."""
    entry: Entry = {"name": name}
    if ip is not None:
        entry["ip"] = ip
    if mac is not None:
        entry["mac"] = mac if isinstance(mac, str) else list(mac)
    return entry | settings


def numbered(
    count: int, subnet: str = LAB_SUBNET, prefix: str = "node", first: int = 11, mac: str = "52:54:00:00:00:{:02x}"
) -> list[Entry]:
    """node01..nodeNN at the subnet's .first, .first+1... with MACs from the `mac` pattern (1-based)."""
    hosts = IPv4Network(subnet)
    return [node(f"{prefix}{i:02d}", str(hosts[first + i - 1]), mac.format(i)) for i in range(1, count + 1)]


def site_yaml(
    nodes: Sequence[Entry] = (),
    profiles: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    name: str = "lab",
    domain: str | None = None,
    subnet: str = LAB_SUBNET,
    interface: str | None = "br0",
    network: Mapping[str, Any] | None = None,
    **cluster: Any,
) -> str:
    """The cluster.yaml text. `network` adds to (or overrides) interface, subnet and master;
    `cluster` adds any other cluster setting (nfs, slurm, ports, dhcp, secure...)."""
    net: dict[str, Any] = {"interface": interface, "subnet": subnet, "master": str(IPv4Network(subnet)[1])}
    net = {k: v for k, v in (net | dict(network or {})).items() if v is not None}
    body = {"name": name, "domain": domain or f"{name}.test", "network": net, **cluster}
    data = {"cluster": body, "profiles": {k: dict(v) for k, v in (profiles or {}).items()}, "nodes": list(nodes)}
    return yaml.safe_dump(data, sort_keys=False)


def write_site(site: Path, text: str | None = None, **kw: Any) -> Path:
    """Write `text` (or site_yaml(**kw)) as site/cluster.yaml atomically (a serve running on the
    site never reads half a file); returns its path."""
    site.mkdir(parents=True, exist_ok=True)
    tmp = site / ".cluster.yaml.tmp"
    tmp.write_text(site_yaml(**kw) if text is None else text)
    path = site / "cluster.yaml"
    os.replace(tmp, path)
    return path


def node_of(inv: Inventory, name: str) -> Node:
    """Node `name`, which the test's site declares (Inventory.node also answers unknown names)."""
    found = inv.node(name)
    assert found is not None, f"{name} is not in {inv.path}"
    return found
