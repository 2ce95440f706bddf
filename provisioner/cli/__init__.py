"""The `provisioner` command line: one click group, one module of subcommands per concept."""

from __future__ import annotations

import importlib
import os

import click

from ..paths import DEFAULT_SITE, DEFAULT_STATE, site_from, state_from
from .context import Context, Group

# (module, attribute) of each subcommand; a module holds one concept's commands.
COMMANDS = [
    ("inventory_cmds", "init"),
    ("inventory_cmds", "check"),
    ("inventory_cmds", "node"),
    ("inventory_cmds", "profile"),
    ("serve_cmds", "serve"),
    ("status_cmds", "status"),
    ("discovery_cmds", "node"),  # adds `node discovered` and `node approve` to the node group
    ("tftp_cmds", "tftp"),
    ("tftp_cmds", "boot"),
    ("slurm_cmds", "slurm"),
    ("slurm_cmds", "mpi_group"),
    ("image_cmds", "image"),
    ("image_cmds", "initramfs"),
    ("image_cmds", "nfs"),
    ("overlay_cmds", "overlay"),
    ("overlay_cmds", "plan"),
    ("overlay_cmds", "secrets_group"),
    ("configure_cmds", "configure"),
    ("logs_cmds", "logs"),
    ("power_cmds", "power"),  # also adds `secrets set-bmc`
    ("power_cmds", "console"),
    ("demo_cmds", "demo"),
    ("rollout_cmds", "rollout"),
]


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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


for _module, _attr in COMMANDS:
    main.add_command(getattr(importlib.import_module(f".{_module}", __name__), _attr))
