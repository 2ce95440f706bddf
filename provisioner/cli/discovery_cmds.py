"""Discovery commands: `node discovered` lists MACs that PXE-booted without being in the
inventory; `node approve MAC [NAME]` makes one a node; `node locate MAC` says which switch
port names it (added to the existing `node` group)."""

from __future__ import annotations

import datetime

import click

from ..actions.discovery import adopt_node
from ..errors import UserError
from ..inventory import normalize_mac
from ..logs import setup_logging
from .context import Context, echo_json, echo_table, pass_ctx
from .inventory_cmds import node

__all__ = ["node"]


def _when(ts: float | None) -> str | None:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else None


@node.command("discovered")
@click.option("--all", "show_all", is_flag=True, help="Include MACs adopted already.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def node_discovered(ctx: Context, show_all: bool, as_json: bool) -> None:
    """List unknown MACs seen PXE booting (first and last seen, architecture, UUID)."""
    rows = [dict(r) for r in ctx.db().discovered() if show_all or not r["adopted_as"]]
    if as_json:
        echo_json(rows)
        return
    echo_table(
        ["mac", "first seen", "last seen", "arch", "uuid", "ip", "adopted as"],
        [
            [r["mac"], _when(r["first_seen"]), _when(r["last_seen"]), r["arch"], r["uuid"], r["ip"], r["adopted_as"]]
            for r in rows
        ],
    )


@node.command("approve")
@click.argument("mac")
@click.argument("name", required=False)
@click.option(
    "--profile",
    "profiles",
    multiple=True,
    help="Repeatable or comma list (default: cluster.discovery.profiles, else the default profile).",
)
@pass_ctx
def node_approve(ctx: Context, mac: str, name: str | None, profiles: tuple[str, ...]) -> None:
    """Make a discovered MAC node NAME (default: the name of its switch port under
    cluster.discovery.switches, else the next of cluster.discovery.names) at the next free
    address of cluster.discovery.addresses, and build its overlay and boot config; serve
    answers it on its next boot."""
    setup_logging("warning")  # why a switch gave no name
    got = adopt_node(ctx, mac, name, [p for item in profiles for p in item.split(",") if p])
    click.echo(f"adopted {got.mac} as {got.name} ({got.ip})")


@node.command("locate")
@click.argument("mac")
@pass_ctx
def node_locate(ctx: Context, mac: str) -> None:
    """Print the name MAC's switch port gives a new node under cluster.discovery.switches (where
    it was found, and why a switch could not tell, on stderr); exit 1 when no port names it."""
    from ..actions.switches import port_name  # pysnmp: imported by this command alone

    norm = normalize_mac(mac)
    if norm is None:
        raise UserError(f"{mac!r} is not a MAC address (like 52:54:00:12:34:56)")
    policy = ctx.inventory().cluster.discovery
    if not policy.switches:
        raise UserError("cluster.discovery names no switches")
    setup_logging("info")
    name = port_name(policy, norm)
    if name is None:
        raise UserError(f"no switch port names {norm} (see above)")
    click.echo(name)
