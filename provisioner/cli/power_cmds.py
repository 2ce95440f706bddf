"""`provisioner power ACTION NODES` and `provisioner secrets set-bmc`: thin over actions.power."""

from __future__ import annotations

import os
import sys
import termios
import tty
from collections.abc import Callable
from typing import Any

import click

from ..actions import power as power_action
from ..artifacts import secrets
from ..bmc import ACTIONS
from ..errors import UserError
from .context import Context, echo_json, pass_ctx
from .overlay_cmds import secrets_group


@click.group()
def power() -> None:
    """Power nodes on and off and choose their boot device through their BMCs (IPMI, Redfish).

    Each node gets one line; the exit status is 1 when any node failed.
    """


_HELP = {
    "on": "Power NODES on.",
    "off": "Cut power to NODES at once (no shutdown).",
    "cycle": "Power NODES off and on again (IPMI: returns once they are on again).",
    "reset": "Hard-reset NODES.",
    "soft": "Ask NODES' operating systems to shut down (ACPI).",
    "status": "Show whether NODES are on or off.",
    "pxe": "Boot NODES from the network next time (with --persistent: every time).",
}


# Tuning flags: (name, type, help); their defaults are actions.power.Options'.
_TUNING: tuple[tuple[str, click.ParamType, str], ...] = (
    ("fanout", click.IntRange(1, 4096), "BMCs talked to at once."),
    ("timeout", click.FloatRange(0.1, 600), "Seconds one BMC request may take."),
    ("retries", click.IntRange(0, 20), "Tries again after a BMC did not answer or answered garbage."),
    ("stagger", click.FloatRange(0, 3600), "Seconds between two nodes' power-ons (on, cycle, reset)."),
)


def _options(f: Callable[..., Any]) -> Callable[..., Any]:
    defaults = power_action.Options()
    for name, kind, text in reversed(_TUNING):
        f = click.option(f"--{name}", type=kind, default=getattr(defaults, name), show_default=True, help=text)(f)
    f = click.option("--json", "as_json", is_flag=True, help="One JSON object per node, in a list.")(f)
    return click.argument("nodes")(f)


def _command(action: str) -> click.Command:
    @_options
    @pass_ctx
    def cmd(ctx: Context, nodes: str, as_json: bool, persistent: bool = False, **opts: Any) -> None:
        chosen = ctx.select(nodes)
        say = None if as_json else (lambda o: click.echo(o.line()))
        outcomes = power_action.run(ctx, chosen, action, power_action.Options(persistent=persistent, **opts), say)
        if as_json:
            echo_json([o.as_json() for o in outcomes])
        failed = [o.node for o in outcomes if not o.ok]
        if failed:
            click.echo(f"{len(failed)} of {len(outcomes)} node(s) failed", err=True)
            raise SystemExit(1)

    cmd.__doc__ = _HELP[action]
    if action == "pxe":
        cmd = click.option("--persistent", is_flag=True, help="For every boot, not only the next.")(cmd)
    return click.command(action)(cmd)


for _action in (*ACTIONS, "pxe"):
    power.add_command(_command(_action))


@secrets_group.command("set-bmc")
@click.argument("nodes")
@click.option("--profile", is_flag=True, help="NODES names profiles: the password of their nodes' BMCs.")
@pass_ctx
def secrets_set_bmc(ctx: Context, nodes: str, profile: bool) -> None:
    """Store the BMC password of NODES (or profiles), read from a prompt or one line of stdin
    (never from the command line, where `ps` shows it)."""
    if profile:
        names = [p for p in nodes.split(",") if p]
        unknown = [p for p in names if p not in ctx.inventory().profiles]
        if unknown:
            raise UserError(f"no such profile: {', '.join(unknown)}")
    else:
        names = [n.name for n in ctx.select(nodes)]
    if sys.stdin.isatty():
        password = click.prompt("BMC password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\n")
    secrets.set_bmc_password(ctx.state, names, password, profile)
    click.echo(f"stored the BMC password of {len(names)} {'profile' if profile else 'node'}(s)")


@click.command("console")
@click.argument("node")
@click.option("--log", "show_log", is_flag=True, help="Print what `serve` kept of the console instead.")
@pass_ctx
def console(ctx: Context, node: str, show_log: bool) -> None:
    """Attach to NODE's serial console over IPMI serial-over-LAN (a Redfish BMC's too, where
    its manager offers the console over IPMI); `~.` at a line start detaches."""
    if show_log:
        sys.stdout.buffer.write(power_action.console_log(ctx, node))
        return
    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    fd = sys.stdin.fileno()
    if not os.isatty(fd):
        power_action.console(ctx, node, fd, write)
        return
    saved = termios.tcgetattr(fd)
    click.echo(f"[attached to {node}; ~. detaches]", err=True)
    try:
        tty.setraw(fd)
        power_action.console(ctx, node, fd, write)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        click.echo("\r\n[detached]", err=True)
