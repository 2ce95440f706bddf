"""`provisioner status`: each node's latest boot stage, and one node's boot timeline."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import click

from ..actions.power import console_log_file
from ..actions.rollout import load as latest_rollout
from ..actions.status import boot_timeline, statuses
from .context import Context, echo_json, echo_table, pass_ctx


def _clock(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _age(at: float | None, now: float) -> str | None:
    """'42s ago', '5m ago', '3h ago', '2d ago': enough to read a table at a glance."""
    if at is None:
        return None
    s = max(0, int(now - at))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit} ago"
    return f"{s}s ago"


def _took(seconds: float | None) -> str | None:
    return None if seconds is None else f"{seconds:.1f}s"


def show_table(ctx: Context, selector: str | None, as_json: bool) -> None:
    rows = statuses(ctx, selector)
    if as_json:
        echo_json([r.as_dict() for r in rows])
        return
    now = time.time()
    if (rollout := latest_rollout(ctx)) is not None:
        click.echo(rollout.summary() + "\n")
    echo_table(
        ["node", "stage", "since", "ip", "image", "slurm", "seen", "runtime"],
        [
            [r.node, r.stage, _age(r.since, now), r.ip, r.image, r.slurm, _age(r.last_seen, now), r.runtime]
            for r in rows
        ],
    )


def show_timeline(ctx: Context, selector: str | None, as_json: bool) -> None:
    name, steps = boot_timeline(ctx, selector)
    if as_json:
        echo_json([s.__dict__ for s in steps])
        return
    if not steps:
        click.echo(f"{name}: no boot recorded")
        return
    echo_table(["stage", "at", "took", "detail"], [[s.stage, _clock(s.at), _took(s.took), s.detail] for s in steps])
    click.echo(f"total {_took(steps[-1].at - steps[0].at)} from {steps[0].stage} to {steps[-1].stage}")
    if console := console_log_file(ctx, name):
        click.echo(f"console: {console} (provisioner console {name} --log)")


@click.command()
@click.argument("nodes", required=False, metavar="[NODES]")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--watch", is_flag=True, help="Redraw every --interval seconds until interrupted.")
@click.option("--interval", type=click.FloatRange(0.2), default=2.0, show_default=True)
@click.option("--timeline", is_flag=True, help="One node's latest boot, stage by stage, with the time each took.")
@pass_ctx
def status(ctx: Context, nodes: str | None, as_json: bool, watch: bool, interval: float, timeline: bool) -> None:
    """Boot stage, IP, image and Slurm state of each node (all nodes if NODES is omitted)."""
    show = show_timeline if timeline else show_table
    if not watch:
        show(ctx, nodes, as_json)
        return
    try:
        while True:
            if not as_json:
                click.clear()
                click.echo(f"provisioner status  {_clock(time.time())} UTC  (every {interval:g}s, Ctrl-C to stop)\n")
            show(ctx, nodes, as_json)
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
