"""`provisioner serve`: the boot services daemon (see servers/serve.py)."""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import click

from ..actions.discovery import AutoAdopter
from ..actions.webconsole import console_actions
from ..errors import UserError
from ..logs import setup_logging
from ..resources import systemd_unit
from ..servers.serve import OPTIONAL, SERVICES, Daemon, ServeError, ServeOptions
from .context import Context, pass_ctx

PORT = click.IntRange(1, 65535)
# Each TFTP worker is a Python process (~30 MB, plus the files it is sending); past 8 a
# master's TFTP outruns what nodes that load iPXE over TFTP and the rest over HTTP ask of it.
DEFAULT_TFTP_WORKERS_MAX = 8


@click.command()
@click.option(
    "--services",
    default=",".join(SERVICES),
    show_default=True,
    metavar="LIST",
    help="Comma list of services to run: dhcp, tftp, http, console (serial console logs of nodes with a BMC).",
)
@click.option(
    "--listen", default="0.0.0.0", show_default=True, metavar="ADDR", help="Address the TFTP and HTTP servers bind."
)
@click.option("--interface", metavar="IF", help="DHCP interface [default: cluster.network.interface].")
@click.option("--http-port", type=PORT, help="[default: cluster.ports.http]")
@click.option("--tftp-port", type=PORT, help="[default: cluster.ports.tftp]")
@click.option("--dhcp-port", type=PORT, help="[default: cluster.ports.dhcp]")
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Bearer token for admin endpoints off localhost [default: state/secrets/api.token if present].",
)
@click.option(
    "--slurm-interval",
    type=click.FloatRange(0.5),
    default=10.0,
    show_default=True,
    help="Seconds between sinfo polls (records each node's `idle` stage).",
)
@click.option(
    "--tftp-workers",
    type=click.IntRange(1, 64),
    default=None,
    help=f"TFTP processes sharing the port, the TFTP service's own included [default: one per CPU, at most "
    f"{DEFAULT_TFTP_WORKERS_MAX}].",
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
)
@click.option(
    "--print-unit",
    is_flag=True,
    help="Print the systemd unit for this installation, with its --site and --state, and exit.",
)
@pass_ctx
def serve(
    ctx: Context,
    services: str,
    listen: str,
    interface: str | None,
    http_port: int | None,
    tftp_port: int | None,
    dhcp_port: int | None,
    token_file: Path | None,
    slurm_interval: float,
    tftp_workers: int | None,
    log_level: str,
    print_unit: bool,
) -> None:
    """Run the boot services (DHCP, TFTP, HTTP) in the foreground, each in a process of its own.

    A service that ends by itself is started again. SIGHUP or a change to cluster.yaml
    reloads the inventory without dropping transfers in flight; SIGTERM stops cleanly.
    Log lines go to stderr as key=value pairs.
    """
    if print_unit:
        click.echo(systemd_unit("provisioner.service", ctx.site, ctx.state), nl=False)
        return
    chosen = tuple(s.strip() for s in services.split(",") if s.strip())
    unknown = sorted(set(chosen) - set(SERVICES + OPTIONAL))
    if unknown or not chosen:
        known = ", ".join(SERVICES + OPTIONAL)
        raise UserError(f"unknown service(s) {', '.join(unknown) or '(none given)'}; choose from {known}")
    if "http" in chosen:
        from ..servers.http import read_token

        try:
            read_token(ctx.state, token_file)  # an unreadable file is an error now, not at the first request
        except OSError as e:
            raise UserError(f"cannot read token file {token_file}: {e.strerror}") from None
    inventory = ctx.inventory()
    setup_logging(log_level)
    opts = ServeOptions(
        tuple(dict.fromkeys(chosen)),
        listen,
        interface,
        http_port,
        tftp_port,
        dhcp_port,
        token_file,
        slurm_interval=slurm_interval,
        tftp_workers=tftp_workers or min(os.cpu_count() or 1, DEFAULT_TFTP_WORKERS_MAX),
    )
    try:
        daemon = Daemon(
            ctx.site,
            ctx.state,
            inventory,
            opts,
            adopt=partial(AutoAdopter, ctx.fresh()),
            console=partial(console_actions, ctx.fresh()),
        )
        sys.exit(daemon.run())
    except ServeError as e:
        raise UserError(str(e)) from None
