"""Node actions: removing nodes takes their secrets, archives and boot configs with them."""

from __future__ import annotations

from ..artifacts.overlay_build import BuildReport
from ..errors import UserError
from ..inventory import InventoryInvalid
from ..inventory.edit import edit_inventory, isolate, node_entries
from .context import Context, Say, quiet
from .overlays import build_overlays


def remove_nodes(ctx: Context, expr: str, say: Say = quiet) -> tuple[list[str], BuildReport]:
    """Drop the nodes `expr` selects from the inventory (a node inside a range entry is split out of it first),
    then build: the build deletes what the departed nodes leave in the state directory and
    revokes their host keys in the list every remaining node is rebuilt with. Node-state
    history (events, transfers, leases) stays: it is the record of what happened, and its
    retention ages it out like any other node's. Returns the names removed and the build."""
    try:
        with edit_inventory(ctx.site.cluster_yaml) as (doc, inv):
            names = [n.name for n in inv.select(expr)]
            for name in names:
                entry = isolate(doc, name)
                entries = node_entries(doc)
                entries.pop(next(i for i, e in enumerate(entries) if e is entry))
    except InventoryInvalid as e:
        raise UserError(f"not changed: {e}") from None
    except KeyError as e:
        raise UserError(f"no such node or profile: {e.args[0]}") from None
    return names, build_overlays(ctx.fresh(), say=say)
