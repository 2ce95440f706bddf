"""`provisioner doctor NODE`: where a node's boot stopped and what to do about it."""

from __future__ import annotations

import sys

import click

from ..actions.doctor import FAIL, diagnose
from .context import Context, echo_json, pass_ctx


@click.command()
@click.argument("node")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def doctor(ctx: Context, node: str, as_json: bool) -> None:
    """Walk NODE's boot chain (inventory, DHCP, boot files, image, overlay, root, registration,
    Slurm, MUNGE key, clock): PASS, FAIL or UNKNOWN for each link, with the evidence and the
    fix. Exits 1 when a link failed."""
    found = diagnose(ctx, node)
    if as_json:
        echo_json(found.as_dict())
    else:
        width = max(len(c.link) for c in found.checks)
        for c in found.checks:
            click.echo(f"{c.status:<7} {c.link:<{width}}  {c.evidence}")
            if c.fix and c.status == FAIL:
                click.echo(f"{'':<7} {'':<{width}}  fix: {c.fix}")
        first = found.stopped_at
        click.echo(f"{node}: " + (f"stopped at {first.link}" if first else "no link failed"))
    if found.stopped_at is not None:
        sys.exit(1)
