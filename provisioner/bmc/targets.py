"""A node's BMC as the inventory and the secrets describe it."""

from __future__ import annotations

from ..artifacts.secrets import bmc_password
from ..inventory import Node
from ..paths import State
from .client import Target, default_port


def target_of(state: State, node: Node) -> Target | str:
    """Where and how to reach the node's BMC, or why it cannot be reached."""
    if node.bmc is None:
        return "no BMC address in the inventory (`bmc:` in its node entry)"
    password = bmc_password(state, node)
    if password is None:
        return f"no BMC password (run `provisioner secrets set-bmc {node.name}`)"
    port = node.bmc_port or default_port(node.bmc_protocol)
    return Target(node.name, node.bmc_protocol, str(node.bmc), port, node.bmc_user, password)
