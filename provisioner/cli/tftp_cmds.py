"""TFTP commands: a standalone read-only server over a directory, and the boot tree."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

import click

from ..artifacts import bootloaders
from ..errors import UserError
from ..logs import kv, setup_logging
from ..servers.boottree import BootTree
from ..servers.dhcp import bootanswer
from ..servers.tftp import listen_address
from ..servers.tftp_service import directory_service
from .context import Context, echo_table, pass_ctx

log = logging.getLogger("provisioner.cli")


@click.command()
@click.option(
    "--root",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Directory to serve (read-only).",
)
@click.option("--listen", default="0.0.0.0", show_default=True, help="IPv4 address to listen on.")
@click.option("--port", default=69, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--timeout",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.1, 255),
    help="Retransmit timeout in seconds when the client asks for none.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Server processes sharing the port [default: one per CPU].",
)
@click.option("--record", is_flag=True, help="Also record transfers in the state directory's node database.")
@click.option("-v", "--verbose", is_flag=True, help="Log every transfer.")
@pass_ctx
def tftp(
    ctx: Context, root: Path, listen: str, port: int, timeout: float, workers: int | None, record: bool, verbose: bool
) -> None:
    """Serve a directory over TFTP (no inventory needed); stops on SIGINT/SIGTERM."""
    setup_logging("info")
    if not verbose:
        logging.getLogger("provisioner.tftp").setLevel(logging.WARNING)
    try:
        address = listen_address(listen)
    except ValueError as e:
        raise UserError(f"bad listen address {listen!r}: {e}") from None
    n = workers or os.cpu_count() or 1
    if n > 1 and port == 0:
        raise UserError("--port 0 (any free port) needs --workers 1")
    try:
        service = directory_service(root, address, port, n, ctx.state if record else None, timeout)
    except OSError as e:
        raise UserError(f"cannot listen on {listen}:{port}: {e.strerror}") from None
    log.info("serving", extra=kv(root=root, address=address, port=service.server.port, workers=n))

    def stop(*_: object) -> None:
        threading.Thread(target=service.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        service.serve_forever()
    except RuntimeError as e:  # a worker died
        log.error("service failed", extra=kv(service="tftp", error=e))
        sys.exit(1)


@click.group()
def boot() -> None:
    """The static boot tree (bootloaders served over TFTP and HTTP)."""


@boot.command("install")
@pass_ctx
def boot_install(ctx: Context) -> None:
    """Copy iPXE, PXELINUX and GRUB binaries from their Debian packages into state/boot."""
    try:
        done = bootloaders.install(ctx.state)
    except bootloaders.MissingLoader as e:
        raise UserError(str(e)) from None
    echo_table(["file", "status"], [[name, "installed" if changed else "unchanged"] for name, changed in done])
    inventory = None
    if ctx.site.cluster_yaml.exists():
        try:
            inventory = ctx.inventory()
        except UserError as e:
            click.echo(f"boot_files not checked: {e}", err=True)
    for serious, message in bootanswer.problems(BootTree(ctx.state, inventory), inventory):
        click.echo(f"{'warning' if serious else 'note'}: {message}", err=True)
