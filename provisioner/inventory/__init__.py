"""The inventory: site/cluster.yaml loaded into typed, validated, merged dataclasses."""

from .model import Cluster, Interface, Inventory, Network, Node, Profile
from .parse import InventoryInvalid, Problem, load_inventory, normalize_mac, parse_text

__all__ = [
    "Cluster",
    "Interface",
    "Inventory",
    "InventoryInvalid",
    "Network",
    "Node",
    "Problem",
    "Profile",
    "load_inventory",
    "normalize_mac",
    "parse_text",
]
