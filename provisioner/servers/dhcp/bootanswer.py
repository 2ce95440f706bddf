"""The boot file a DHCP answer names, checked against the boot tree it will be fetched from.

pxe.choose picks the name (pure); this refuses it when the TFTP and HTTP servers could not
serve it, so firmware is never sent after a file that is not there: the client gets no boot
file and the log says which file is missing and which Debian package `boot install` copies
it from. The same check runs over the defaults and every `boot_files` override when the
inventory is taken and after `boot install`, so an admin reads before any node boots which
clients will be refused.
"""

from __future__ import annotations

import logging
import time

from ...artifacts import layout
from ...bootfiles import DEFAULTS, FIRMWARE, missing
from ...inventory import Inventory, Node
from ...paths import State
from ..boottree import BootTree, PathRefused
from . import pxe

log = logging.getLogger("provisioner.dhcp")

# A client refused a boot file is logged once in this many seconds (firmware retries).
REFUSAL_QUIET = 60.0
MAX_REMEMBERED = 4096


class BootAnswers:
    """pxe.choose for one inventory and boot tree, refusing what the tree cannot serve."""

    def __init__(self, state: State, inventory: Inventory):
        self.tree = BootTree(state, inventory)
        self.refused: dict[tuple[str, int | None, str], float] = {}
        self.master, self.http_port = str(inventory.cluster.network.master), inventory.cluster.ports.http

    def reload(self, inventory: Inventory) -> None:
        """Take a new inventory and log which clients it leaves without a boot file."""
        self.tree.reload(inventory)
        self.master, self.http_port = str(inventory.cluster.network.master), inventory.cluster.ports.http
        for serious, message in problems(self.tree, inventory):
            (log.warning if serious else log.info)("%s", message)

    def __call__(self, client: pxe.Client, mac: str, node: Node | None) -> pxe.Boot | None:
        """The boot answer; None for a plain client, and for one whose boot file cannot be
        served (logged once per REFUSAL_QUIET for each client, architecture and reason)."""
        answer = pxe.choose(client, mac, node.boot_files if node else {}, self.master, self.http_port)
        if answer is None:
            return None
        if isinstance(answer, pxe.Boot):
            why = absent(self.tree, answer.local, node) if answer.local is not None else None
            if why is None:
                return answer
        else:
            why = answer.why
        now = time.monotonic()
        key = (mac, client.arch, why)
        if now - self.refused.get(key, -REFUSAL_QUIET) >= REFUSAL_QUIET:
            if len(self.refused) >= MAX_REMEMBERED:
                self.refused.clear()
            self.refused[key] = now
            log.warning(
                "no boot file for %s (%s, %s client, arch %s): %s",
                node.name if node else "unknown client",
                mac,
                client.kind,
                client.arch,
                why,
            )
        return None


def absent(tree: BootTree, local: str, node: Node | None) -> str | None:
    """Why the boot tree cannot serve `local` to this node (None: any client), or None if it
    can: the TFTP and HTTP servers resolve it the same way."""
    try:
        if tree(str(node.ip) if node is not None and node.ip else "", local) is not None:
            return None
    except PathRefused as e:
        return f"{local}: {e}"
    return missing(local, layout.boot_dir(tree.state))


def problems(tree: BootTree, inventory: Inventory | None) -> list[tuple[bool, str]]:
    """(serious, message) for each boot file DHCP would name that the tree lacks: the defaults
    (serious unless optional), and each `boot_files` override of the inventory with its nodes."""
    out = []
    for firmware in FIRMWARE:
        default = DEFAULTS[firmware]
        why = absent(tree, default.name, None)
        if why:
            out.append((default.required, f"{firmware} clients will get no boot file: {why}"))
    if inventory is None:
        return out
    master, http_port = str(inventory.cluster.network.master), inventory.cluster.ports.http
    overrides: dict[tuple[str, str, str], list[str]] = {}
    for node in inventory.nodes:
        for key, value in node.boot_files.items():
            local = pxe.local_path(value, master, http_port)
            why = absent(tree, local, node) if local else None
            if why:
                overrides.setdefault((key, value, why), []).append(node.name)
    for (key, value, why), names in overrides.items():
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        out.append((True, f"boot_files {key}: {value} of {shown} will get no boot file: {why}"))
    return out
