"""`provisioner logs NODE`: a node's syslog, as the master's rsyslog filed it."""

from __future__ import annotations

import click

from ..actions import logs as logs_action
from .context import Context, pass_ctx


@click.command()
@click.argument("node")
@click.option("--follow", "-f", is_flag=True, help="Keep printing lines as they arrive.")
@click.option("--boot", "-b", is_flag=True, help="Only the last boot (from its initramfs on).")
@click.option("--lines", "-n", type=click.IntRange(1), help="Only the last N lines.")
@pass_ctx
def logs(ctx: Context, node: str, follow: bool, boot: bool, lines: int | None) -> None:
    """Print NODE's log (initramfs and system; `provisioner configure logs` sets it up)."""
    found = logs_action.read(ctx, node, boot, lines)
    for line in found:
        click.echo(line)
    if not found and not follow:
        click.echo(f"no log of {node} yet (the master collects them after `provisioner configure logs`)", err=True)
    if follow:
        try:
            logs_action.follow(ctx, node, click.echo)
        except KeyboardInterrupt:
            pass
