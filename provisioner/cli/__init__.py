"""The `provisioner` command line: one click group, one module of subcommands per concept."""

from __future__ import annotations

import importlib
import os

import click

from ..paths import DEFAULT_SITE, DEFAULT_STATE, site_from, state_from
from .context import Context, Group

# Each subcommand: its name, then the modules that make it (the first holds the group; a later
# one adds its own commands to that group when imported). Commands load on first use, so a
# command starts without importing every other one (scapy, pyroute2, jinja2, ...).
COMMANDS: dict[str, tuple[str, ...]] = {
    "init": ("inventory_cmds",),
    "check": ("inventory_cmds",),
    "node": ("inventory_cmds", "discovery_cmds"),  # `node discovered` and `node approve`
    "profile": ("inventory_cmds",),
    "serve": ("serve_cmds",),
    "status": ("status_cmds",),
    "tftp": ("tftp_cmds",),
    "boot": ("tftp_cmds",),
    "slurm": ("slurm_cmds",),
    "mpi": ("slurm_cmds",),
    "image": ("image_cmds",),
    "initramfs": ("image_cmds",),
    "nfs": ("image_cmds",),
    "overlay": ("overlay_cmds",),
    "plan": ("overlay_cmds",),
    "secrets": ("overlay_cmds", "power_cmds"),  # `secrets set-bmc`
    "configure": ("configure_cmds",),
    "logs": ("logs_cmds",),
    "power": ("power_cmds",),
    "console": ("power_cmds",),
    "demo": ("demo_cmds",),
    "monitoring": ("monitoring_cmds",),
    "doctor": ("doctor_cmds",),
    "rollout": ("rollout_cmds",),
}


class Commands(Group):
    """The root group, loading each subcommand's modules when it is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        modules = COMMANDS.get(cmd_name)
        if modules is None:
            return None
        loaded = [importlib.import_module(f".{m}", __name__) for m in modules]
        command = next(
            (c for c in vars(loaded[0]).values() if isinstance(c, click.Command) and c.name == cmd_name), None
        )
        if command is None:
            raise RuntimeError(f"{modules[0]} defines no command {cmd_name!r}")
        return command


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--site",
    metavar="DIR",
    envvar="PROVISIONER_SITE",
    show_envvar=True,
    help=f"Site directory: cluster.yaml and the admin's overrides [default: {DEFAULT_SITE}]",
)
@click.option(
    "--state",
    metavar="DIR",
    envvar="PROVISIONER_STATE",
    show_envvar=True,
    help=f"State directory: artifacts, images, secrets, node database [default: {DEFAULT_STATE}]",
)
@click.version_option(package_name="provisioner")
@click.pass_context
def main(ctx: click.Context, site: str | None, state: str | None) -> None:
    """Diskless node provisioning for HPC clusters.

    Shell completion: eval "$(_PROVISIONER_COMPLETE=bash_source provisioner)"
    (zsh_source, fish_source for other shells).
    """
    # Every file is made with the mode it needs (secrets 0600 in 0700 folders), so an admin's
    # umask of 0 cannot open them, nor one of 077 close what nodes read over NFS.
    os.umask(0o022)
    ctx.obj = Context(site_from(site), state_from(state))
