"""TFTP commands: a standalone read-only server over a directory, and the boot tree."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import click

from ..artifacts import bootloaders
from ..errors import UserError
from ..servers.boottree import StaticTree
from ..servers.tftp import TftpServer, listen_address
from .context import Context, echo_table, pass_ctx


@click.command()
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Directory to serve (read-only).")
@click.option("--listen", default="0.0.0.0", show_default=True, help="IPv4 address to listen on.")
@click.option("--port", default=69, show_default=True, type=click.IntRange(0, 65535))
@click.option("--timeout", default=1.0, show_default=True, type=click.FloatRange(0.1, 255),
              help="Retransmit timeout in seconds when the client asks for none.")
@click.option("--record", is_flag=True, help="Also record transfers in the state directory's node database.")
@click.option("-v", "--verbose", is_flag=True, help="Log every transfer.")
@pass_ctx
def tftp(ctx: Context, root: Path, listen: str, port: int, timeout: float, record: bool, verbose: bool) -> None:
    """Serve a directory over TFTP (no inventory needed); stops on SIGINT/SIGTERM."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        server = TftpServer(listen_address(listen), port, StaticTree(root),
                            ctx.db() if record else None, timeout=timeout)
    except ValueError as e:
        raise UserError(f"bad listen address {listen!r}: {e}") from None
    except OSError as e:
        raise UserError(f"cannot listen on {listen}:{port}: {e.strerror}") from None

    def stop(*_: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo(f"serving {root} on {listen}:{server.port}", err=True)
    server.serve_forever()


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
