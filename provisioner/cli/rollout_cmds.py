"""`provisioner rollout`: rolling image upgrades through Slurm (actions/rollout.py)."""

from __future__ import annotations

import time

import click

from ..actions import rollout as rollouts
from ..errors import UserError
from .context import Context, echo_json, echo_table, pass_ctx

INTERVAL = click.option(
    "--interval",
    type=click.FloatRange(0.2),
    default=rollouts.DEFAULT_INTERVAL,
    show_default=True,
    help="Seconds between looks at the nodes.",
)


@click.group()
def rollout() -> None:
    """Move nodes to another image version batch by batch, through Slurm reboots."""


def _drive(ctx: Context, interval: float) -> None:
    r = rollouts.run(ctx, lambda m: click.echo(f"{time.strftime('%H:%M:%S')} {m}"), interval)
    if r.state != rollouts.DONE:
        raise UserError(f"rollout {r.id} {r.state}: {r.reason}")


@rollout.command()
@click.argument("image")
@click.argument("nodes", required=False, metavar="[NODES|@PROFILE]")
@click.option("--to", "to", metavar="vN", help="The version to roll out [default: the image's current].")
@click.option("--canary", type=int, default=1, show_default=True, help="Nodes moved first, alone.")
@click.option("--batch", default="1", show_default=True, help="Nodes per batch after the canaries: K or P%.")
@click.option(
    "--timeout",
    type=float,
    default=900.0,
    show_default=True,
    help="Seconds a node may take from the end of its jobs to back in service.",
)
@click.option("--auto-rollback", is_flag=True, help="Pin failed nodes back to their version and reboot them.")
@click.option("--no-run", is_flag=True, help="Plan and pin only; `provisioner rollout run` drives it.")
@INTERVAL
@pass_ctx
def start(
    ctx: Context,
    image: str,
    nodes: str | None,
    to: str | None,
    canary: int,
    batch: str,
    timeout: float,
    auto_rollback: bool,
    no_run: bool,
    interval: float,
) -> None:
    """Roll IMAGE out over NODES (default: every node of the image) and drive it to its end."""
    r = rollouts.start(ctx, image, nodes, to, canary, batch, timeout, auto_rollback)
    click.echo(r.summary())
    if not no_run:
        _drive(ctx, interval)


@rollout.command("run")
@INTERVAL
@pass_ctx
def run_cmd(ctx: Context, interval: float) -> None:
    """Drive the latest rollout on (after `start --no-run`, or a runner that stopped)."""
    _drive(ctx, interval)


@rollout.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """The latest rollout and each of its nodes."""
    r = rollouts.load(ctx)
    if r is None:
        raise UserError("no rollout yet")
    if as_json:
        echo_json(r.as_dict())
        return
    click.echo(r.summary())
    echo_table(
        ["node", "batch", "from", "phase", "reason"],
        [[n.name, n.batch + 1, n.previous, n.phase, n.reason] for n in r.nodes],
    )


def _steer(what: str) -> click.Command:
    @pass_ctx
    def command(ctx: Context) -> None:
        click.echo(rollouts.steer(ctx, what).summary())

    doc = {
        "pause": "Start no further batch (nodes rebooting are still followed).",
        "resume": "Carry on after a pause.",
        "abort": "End the rollout: nodes keep their pins, nothing more reboots.",
    }[what]
    return click.command(what, help=doc)(command)


for _what in ("pause", "resume", "abort"):
    rollout.add_command(_steer(_what))
