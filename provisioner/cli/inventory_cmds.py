"""Inventory commands: init, check, node and profile."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from ..actions.configure import refresh
from ..actions.inventory import (
    add_nodes,
    add_profile,
    check_site,
    init_site,
    remove_profile,
    set_nodes,
    set_profile,
)
from ..actions.nodes import remove_nodes, retire_nodes
from ..errors import UserError
from ..inventory import Node, normalize_mac
from ..inventory.model import SETTINGS
from ..inventory.schema import Invalid
from .context import Context, echo_json, echo_table, pass_ctx
from .slurm_cmds import controller, controller_options


@click.command()
@click.option("--interface", help="Provisioning interface (default: the one with the default route).")
@click.option("--name", default=None, help="Cluster name (default: this host's short name).")
@click.option("--force", is_flag=True, help="Overwrite an existing cluster.yaml.")
@pass_ctx
def init(ctx: Context, interface: str | None, name: str | None, force: bool) -> None:
    """Write a commented starter site for this host."""
    for line in init_site(ctx, interface, name, force):
        click.echo(line)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Problems as a JSON list (exit 1 if any).")
@pass_ctx
def check(ctx: Context, as_json: bool) -> None:
    """Validate the inventory; list every problem with file, line and field."""
    if not as_json and not ctx.has_inventory():
        ctx.inventory()  # "no inventory at ..., run init"
    report = check_site(ctx)
    if as_json:
        echo_json([vars(p) for p in report.problems])
        if report.problems:
            raise SystemExit(1)
        return
    inv = report.inventory
    if inv is None:
        raise UserError(f"{len(report.problems)} problem(s) in the inventory:\n" + "\n".join(map(str, report.problems)))
    if report.problems:
        raise UserError("; ".join(p.message for p in report.problems))
    click.echo(f"{inv.path}: ok ({len(inv.nodes)} nodes, {len(inv.profiles)} profiles)")
    for w in report.warnings:
        click.echo(f"warning: {w}", err=True)


def node_dict(n: Node, sources: bool = False) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": n.name,
        "interfaces": [{"name": i.name, "mac": i.mac, "ip": str(i.ip) if i.ip else None} for i in n.interfaces],
        "profiles": list(n.profiles),
        "bmc": str(n.bmc) if n.bmc else None,
        **_settings_json({key: getattr(n, key) for key in SETTINGS}),
    }
    if sources:
        d["sources"] = dict(n.sources)
    return d


def _settings_json(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Node or profile settings as JSON values, each shown as its kind says."""
    return {key: SETTINGS[key].kind.to_json(value) for key, value in settings.items()}


# -- node ------------------------------------------------------------------------------------


@click.group()
def node() -> None:
    """List, show and edit nodes (NODES accepts node[01-04,07], a,b and @profile)."""


@node.command("list")
@click.argument("nodes", required=False)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def node_list(ctx: Context, nodes: str | None, as_json: bool) -> None:
    """List nodes."""
    chosen = ctx.select(nodes)
    if as_json:
        echo_json([node_dict(n) for n in chosen])
        return
    echo_table(
        ["name", "ip", "mac", "profiles", "image"],
        [[n.name, n.ip, n.mac, ",".join(n.profiles), n.image] for n in chosen],
    )


@node.command("show")
@click.argument("nodes")
@click.option("--sources", is_flag=True, help="Say which profile (or the node) each value came from.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def node_show(ctx: Context, nodes: str, sources: bool, as_json: bool) -> None:
    """Show nodes merged with their profiles."""
    chosen = ctx.select(nodes)
    if as_json:
        echo_json([node_dict(n, sources) for n in chosen])
        return
    for k, n in enumerate(chosen):
        if k:
            click.echo()
        d = node_dict(n)
        click.echo(f"{n.name}:")
        for key, value in d.items():
            if key == "name" or value in (None, [], {}):
                continue
            if key == "interfaces":
                for i in n.interfaces:
                    click.echo(f"  interface {i.name}: mac={i.mac or '-'} ip={i.ip or '-'}")
                continue
            line = f"  {key}: {_fmt(value)}"
            if sources:
                origin = n.sources.get(key) or ", ".join(
                    f"{k[len(key) + 1 :]}<-{v}" for k, v in n.sources.items() if k.startswith(key + ".")
                )
                line += f"    [{origin or 'node'}]" if key in SETTINGS else ""
            click.echo(line)


def _fmt(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _parse_mac(value: str | None) -> str | None:
    if value is None:
        return None
    mac = normalize_mac(value)
    if mac is None:
        raise UserError(f"{value!r} is not a MAC address (like 52:54:00:12:34:56)")
    return mac


def _settings_from(options: dict[str, Any]) -> dict[str, Any]:
    """The settings' CLI flags -> YAML values, each as its kind reads the flag."""
    out: dict[str, Any] = {}
    for key, s in SETTINGS.items():
        if s.flag is None:
            continue
        try:
            value = s.kind.from_cli(options[key])
        except Invalid as e:
            raise UserError(f"{s.flag} {e.message}") from None
        if value is not None:
            out[key] = value
    return out


def settings_options(f: Any) -> Any:
    """One click option per setting that declares a CLI flag."""
    for key, s in reversed(list(SETTINGS.items())):
        if s.flag is not None:
            bounds = s.kind.bounds
            f = click.option(
                s.flag, key, multiple=s.kind.multiple, type=click.IntRange(*bounds) if bounds else None, help=s.help
            )(f)
    return f


@node.command("add")
@click.argument("name")
@click.option("--mac", help="MAC of the provisioning interface.")
@click.option("--ip", help="Address (default: next free one outside the dynamic range).")
@click.option("--profile", "profiles", multiple=True, help="Repeatable or comma list.")
@click.option("--bmc")
@settings_options
@pass_ctx
def node_add(
    ctx: Context,
    name: str,
    mac: str | None,
    ip: str | None,
    profiles: tuple[str, ...],
    bmc: str | None,
    **settings: Any,
) -> None:
    """Add a node (NAME may be a range such as node[05-08]; then --ip is the first address)."""
    mac = _parse_mac(mac)
    plist = [p for item in profiles for p in item.split(",") if p]
    _, ip = add_nodes(ctx, name, mac, ip, plist, bmc, _settings_from(settings))
    click.echo(f"added {name} ({ip}{', ' + mac if mac else ''})")
    refresh(ctx.fresh(), click.echo)


@node.command("set")
@click.argument("nodes")
@click.option("--mac")
@click.option("--ip")
@click.option("--profile", "profiles", multiple=True, help="Replace the profile list (repeatable or comma list).")
@click.option("--bmc")
@click.option("--unset", "unset", multiple=True, help="Remove a node-level key (repeatable).")
@settings_options
@pass_ctx
def node_set(
    ctx: Context,
    nodes: str,
    mac: str | None,
    ip: str | None,
    profiles: tuple[str, ...],
    bmc: str | None,
    unset: tuple[str, ...],
    **settings: Any,
) -> None:
    """Change node-level values (a node inside a range entry is split out of it)."""
    values: dict[str, Any] = {"mac": _parse_mac(mac), "ip": ip, "bmc": bmc, **_settings_from(settings)}
    if profiles:
        values["profiles"] = [p for item in profiles for p in item.split(",") if p]
    names = set_nodes(ctx, nodes, values, unset)
    click.echo(f"updated {len(names)} node(s)")
    refresh(ctx.fresh(), click.echo)


@node.command("rm")
@click.argument("nodes")
@pass_ctx
def node_rm(ctx: Context, nodes: str) -> None:
    """Remove nodes (a node inside a range entry is split out of it first), their secrets,
    archives and boot configs; their host keys are revoked on every other node."""
    if not ctx.site.cluster_yaml.exists():
        raise UserError(f"no inventory at {ctx.site.cluster_yaml} (run `provisioner init` first)")
    names, report = remove_nodes(ctx, nodes, click.echo)
    click.echo(f"removed {len(names)} node(s) with their secrets and files; rebuilt {len(report.built)} other(s)")


@node.command("retire")
@click.argument("nodes")
@click.option(
    "--force",
    is_flag=True,
    help="Do not wait: set the nodes DOWN, which kills the jobs running there (Slurm requeues "
    "batch jobs that allow it).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0),
    default=3600,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for running jobs; then nothing is removed and the nodes stay drained.",
)
@controller_options
@pass_ctx
def node_retire(
    ctx: Context,
    nodes: str,
    force: bool,
    timeout: float,
    conf_dir: str,
    no_reload: bool,
    reconfigure_command: str,
    restart_command: str,
) -> None:
    """Drain NODES in Slurm, wait for their jobs to finish, then remove them as `node rm` does
    and rewrite slurm.conf, its partitions and the hostfile without them."""
    if not ctx.site.cluster_yaml.exists():
        raise UserError(f"no inventory at {ctx.site.cluster_yaml} (run `provisioner init` first)")
    names, _, result = retire_nodes(
        ctx,
        nodes,
        conf_dir,
        force=force,
        timeout=timeout,
        say=click.echo,
        **controller(no_reload, reconfigure_command, restart_command),
    )
    click.echo(f"retired {len(names)} node(s); slurmctld: {result.action}")


# -- profile ---------------------------------------------------------------------------------


@click.group()
def profile() -> None:
    """List, show and edit profiles."""


@profile.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def profile_list(ctx: Context, as_json: bool) -> None:
    """List profiles and how many nodes use each."""
    inv = ctx.inventory()
    rows = [(p, sum(1 for n in inv.nodes if p.name in n.profiles)) for p in inv.profiles.values()]
    if as_json:
        echo_json(
            [{"name": p.name, "nodes": c, "description": p.description, **_settings_json(p.settings)} for p, c in rows]
        )
        return
    echo_table(
        ["name", "nodes", "image", "description"],
        [[p.name, c, p.settings.get("image"), p.description] for p, c in rows],
    )


@profile.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def profile_show(ctx: Context, name: str, as_json: bool) -> None:
    """Show one profile's settings."""
    p = ctx.inventory().profiles.get(name)
    if p is None:
        raise UserError(f"no such profile: {name}")
    if as_json:
        echo_json({"name": p.name, "description": p.description, **_settings_json(p.settings)})
        return
    click.echo(f"{p.name}:" + (f"  # {p.description}" if p.description else ""))
    for key, value in _settings_json(p.settings).items():
        click.echo(f"  {key}: {_fmt(value)}")


@profile.command("add")
@click.argument("name")
@click.option("--description")
@settings_options
@pass_ctx
def profile_add(ctx: Context, name: str, description: str | None, **settings: Any) -> None:
    """Add a profile."""
    add_profile(ctx, name, description, _settings_from(settings))
    click.echo(f"added profile {name}")


@profile.command("set")
@click.argument("name")
@click.option("--description")
@click.option("--unset", "unset", multiple=True, help="Remove a key (repeatable).")
@settings_options
@pass_ctx
def profile_set(ctx: Context, name: str, description: str | None, unset: tuple[str, ...], **settings: Any) -> None:
    """Change a profile's settings."""
    set_profile(ctx, name, description, _settings_from(settings), unset)
    click.echo(f"updated profile {name}")


@profile.command("rm")
@click.argument("name")
@pass_ctx
def profile_rm(ctx: Context, name: str) -> None:
    """Remove a profile no node uses."""
    remove_profile(ctx, name)
    click.echo(f"removed profile {name}")
