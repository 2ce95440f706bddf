"""Slurm and MPI commands: render, diff and apply the controller's Slurm files; MPI hostfiles."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click

from ..actions import slurm as slurm_actions
from ..artifacts import slurm_config
from ..artifacts.slurm_config import ApplyResult
from ..render import mpi
from ..resources import systemd_unit
from .context import Context, pass_ctx


def controller_options(f: Any) -> Any:
    """Where slurmctld's files are and how to have it take them (apply, accept, node retire)."""
    for option in reversed(
        [
            click.option(
                "--conf-dir",
                type=click.Path(file_okay=False),
                envvar="PROVISIONER_SLURM_CONF_DIR",
                show_envvar=True,
                default=str(slurm_config.DEFAULT_CONF_DIR),
                show_default=True,
                help="The controller's Slurm config dir.",
            ),
            click.option(
                "--no-reload", is_flag=True, help="Write the Slurm files only; do not reconfigure or restart slurmctld."
            ),
            click.option(
                "--reconfigure-command",
                default=" ".join(slurm_config.RECONFIGURE),
                show_default=True,
                help="How to make slurmctld re-read its files.",
            ),
            click.option(
                "--restart-command",
                default=" ".join(slurm_config.RESTART),
                show_default=True,
                help="How to restart slurmctld when Slurm refuses a reconfigure (node topology changed).",
            ),
        ]
    ):
        f = option(f)
    return f


def controller(no_reload: bool, reconfigure_command: str, restart_command: str) -> dict[str, Any]:
    """The reconfigure and restart commands the actions take, from controller_options."""
    return {
        "reconfigure": None if no_reload else shlex.split(reconfigure_command),
        "restart": shlex.split(restart_command),
    }


def _warn(problem: str) -> None:
    click.echo(f"warning: {problem}", err=True)


def _applied(result: ApplyResult) -> None:
    click.echo(f"{', '.join(result.changed) or 'nothing'} changed; slurmctld: {result.action}")


@click.group()
def slurm() -> None:
    """slurm.conf, cgroup.conf and gres.conf from the inventory and the nodes' facts."""


@slurm.command("render")
@click.option(
    "--file",
    "name",
    type=click.Choice(["slurm.conf", "cgroup.conf", "gres.conf"]),
    default="slurm.conf",
    show_default=True,
)
@pass_ctx
def render_cmd(ctx: Context, name: str) -> None:
    """Print one rendered file."""
    click.echo(slurm_actions.slurm_files(ctx, _warn).files[name], nl=False)


@slurm.command("diff")
@click.option(
    "--conf-dir",
    type=click.Path(file_okay=False),
    envvar="PROVISIONER_SLURM_CONF_DIR",
    default=str(slurm_config.DEFAULT_CONF_DIR),
    show_default=True,
    help="The controller's Slurm config dir.",
)
@pass_ctx
def diff_cmd(ctx: Context, conf_dir: str) -> None:
    """Show what `apply` would change in the config dir (nothing printed: up to date)."""
    click.echo(slurm_config.diff(slurm_actions.slurm_files(ctx, _warn), Path(conf_dir)), nl=False)


@slurm.command("apply")
@controller_options
@click.option(
    "--watch",
    type=click.FloatRange(0.2),
    metavar="SECONDS",
    help="Keep running: apply again every SECONDS, so reported facts reach Slurm by themselves.",
)
@click.option(
    "--print-unit",
    is_flag=True,
    help="Print a systemd unit running `apply --watch` with this --site and --state, and exit.",
)
@pass_ctx
def apply_cmd(
    ctx: Context,
    conf_dir: str,
    no_reload: bool,
    reconfigure_command: str,
    restart_command: str,
    watch: float | None,
    print_unit: bool,
) -> None:
    """Write the files that changed (atomically) and have slurmctld take them; drain the nodes
    whose hardware changed, resume those whose hardware is back; rewrite the cluster's
    `slurm.hostfile` with the nodes that are up."""
    if print_unit:
        click.echo(systemd_unit("provisioner-slurm.service", ctx.site, ctx.state), nl=False)
        return
    commands = controller(no_reload, reconfigure_command, restart_command)
    if watch is None:
        _applied(slurm_actions.apply_slurm(ctx, conf_dir, warn=_warn, **commands))
        return
    slurm_actions.watch_slurm(
        ctx,
        conf_dir,
        watch,
        applied=_applied,
        warn=_warn,
        error=lambda e: click.echo(f"error: {e}", err=True),
        **commands,
    )


@slurm.command("accept")
@click.argument("nodes")
@controller_options
@pass_ctx
def accept_cmd(
    ctx: Context, nodes: str, conf_dir: str, no_reload: bool, reconfigure_command: str, restart_command: str
) -> None:
    """Take the hardware NODES last reported as theirs (after a drain for `hardware changed`:
    a DIMM or GPU removed for good, or an upgrade), apply it and resume them."""
    commands = controller(no_reload, reconfigure_command, restart_command)
    names, result = slurm_actions.accept(ctx, nodes, conf_dir, warn=_warn, **commands)
    click.echo(f"accepted the reported hardware of {len(names)} node(s)")
    _applied(result)


@click.group("mpi")
def mpi_group() -> None:
    """MPI hostfiles from the inventory and the nodes' facts."""


@mpi_group.command("hostfile")
@click.option("--partition", metavar="P", help="Only this partition's nodes [default: every node in a partition].")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(mpi.FORMATS),
    default="openmpi",
    show_default=True,
    help="openmpi: `name slots=N`; mpich: `name:N`.",
)
@click.option("--up", is_flag=True, help="Only the nodes Slurm can run on now (asks sinfo).")
@pass_ctx
def hostfile_cmd(ctx: Context, partition: str | None, fmt: str, up: bool) -> None:
    """Print a hostfile (slots: the node's mpi_slots, else its reported CPUs, else 1)."""
    click.echo(slurm_actions.hostfile(ctx, partition, fmt, up), nl=False)
