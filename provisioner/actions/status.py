"""What the node-state database and Slurm say about nodes: `provisioner status`."""

from __future__ import annotations

from ..errors import UserError
from ..nodestate.slurm import slurm_states
from ..nodestate.summary import NodeStatus, Step, latest_boot, node_statuses, timeline
from .context import Context
from .runtime import runtime_states


def statuses(ctx: Context, selector: str | None = None) -> list[NodeStatus]:
    """Each selected node's latest boot stage, address, image, Slurm state and whether it runs
    the latest runtime overlay."""
    nodes = ctx.select(selector)
    return node_statuses(nodes, ctx.db(), slurm_states(), runtime_states(ctx, nodes))


def boot_timeline(ctx: Context, selector: str | None) -> tuple[str, list[Step]]:
    """One node's latest boot, stage by stage: the node's name and its steps."""
    nodes = ctx.select(selector)
    if len(nodes) != 1:
        raise UserError("--timeline takes exactly one node")
    name = nodes[0].name
    return name, timeline(latest_boot([dict(e) for e in ctx.db().timeline(name)]))
