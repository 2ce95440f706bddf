"""What the web console of `provisioner serve` may do beyond reading: the actions it is handed
(servers/http/web.py), each on a fresh read of the inventory, as the CLI would do them."""

from __future__ import annotations

from ..servers.http import ConsoleActions, PlanChange
from . import logs, overlays
from .context import Context
from .discovery import adopt_node


def console_actions(ctx: Context) -> ConsoleActions:
    def approve(mac: str, name: str | None) -> str:
        return adopt_node(ctx.fresh(), mac, name).name

    def plan(node: str) -> list[PlanChange] | None:
        now = ctx.fresh()
        for _, changes in overlays.plan(now, [now.node(node)], with_diff=True):
            return None if changes is None else [PlanChange(c.what, c.path, c.diff) for c in changes]
        return None

    def log_tail(node: str, lines: int) -> list[str]:
        return logs.read(ctx.fresh(), node, lines=lines)

    def rebuild(node: str) -> str:
        now = ctx.fresh()
        report = overlays.build_overlays(now, [now.node(node)])
        return "rebuilt" if node in report.built else "unchanged: nothing to rebuild"

    return ConsoleActions(approve=approve, plan=plan, log_tail=log_tail, rebuild=rebuild)
