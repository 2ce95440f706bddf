"""`provisioner configure dns|ntp|logs|all`: the master's system daemons from the inventory."""

from __future__ import annotations

from pathlib import Path

import click

from ..actions import configure as configure_action
from .context import Context, pass_ctx


@click.command()
@click.argument("service", type=click.Choice([*configure_action.SERVICES, "all"]))
@click.option("--print", "show", is_flag=True, help="Show what would be written; write nothing.")
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/"),
    show_default=True,
    help="Put the system files (/etc, /run) below this directory (tests, chroots); the data stays in the state.",
)
@pass_ctx
def configure(ctx: Context, service: str, show: bool, root: Path) -> None:
    """Render a daemon's configuration from the inventory, check it, install it and reload it:
    dns (dnsmasq: the cluster domain, forward and reverse; other names upstream), ntp (chrony
    serving the subnet), logs (rsyslog filing each node's syslog under the state directory).
    Later `overlay build` and `node add|rm` re-run what was configured, writing what changed."""
    services = configure_action.SERVICES if service == "all" else (service,)
    for s in services:
        if show:
            for path, text in configure_action.render(ctx, s, root):
                click.echo(f"==> {path} <==")
                click.echo(text, nl=False)
            continue
        click.echo(configure_action.configure(ctx, s, root).line())
