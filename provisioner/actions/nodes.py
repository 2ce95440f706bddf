"""Node actions: removing nodes takes their secrets, archives and boot configs with them;
retiring them drains them in Slurm first and has Slurm forget them after."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..artifacts import slurm_config
from ..artifacts.overlay_build import BuildReport
from ..artifacts.slurm_config import ApplyResult, accepted_hardware
from ..errors import UserError
from ..inventory.edit import isolate, node_entries
from ..nodestate.slurm import SlurmError, jobs_on, node_status, update
from .context import Context, Say, quiet, select
from .inventory import editing
from .overlays import build_overlays
from .slurm import apply_slurm

RETIRING = "retiring (provisioner node retire)"
PROGRESS = 60.0  # seconds between two progress lines while the jobs stay the same


def remove_nodes(ctx: Context, expr: str, say: Say = quiet) -> tuple[list[str], BuildReport]:
    """Drop the nodes `expr` selects from the inventory (a node inside a range entry is split out of it first),
    then build: the build deletes what the departed nodes leave in the state directory and
    revokes their host keys in the list every remaining node is rebuilt with; their accepted
    hardware goes too (a new machine given the name is a first boot). Node-state history
    (events, transfers, leases) stays: it is the record of what happened, and its retention
    ages it out like any other node's. Returns the names removed and the build."""
    with editing(ctx) as (doc, inv):
        names = [n.name for n in select(inv, expr)]
        for name in names:
            entry = isolate(doc, name)
            entries = node_entries(doc)
            entries.pop(next(i for i, e in enumerate(entries) if e is entry))
    with accepted_hardware(ctx.state) as accepted:
        for name in names:
            accepted.pop(name, None)
    return names, build_overlays(ctx.fresh(), say=say)


def drain(
    names: Sequence[str],
    *,
    force: bool,
    timeout: float,
    say: Say = quiet,
    poll: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Drain `names` in Slurm and wait until no job holds them; `force`: set them DOWN
    instead, which has Slurm kill the jobs running there (batch jobs that may be requeued go
    back to the queue) and wait for nothing. Nodes sinfo does not list (in no partition, or
    waiting for their facts) run no jobs and are skipped. A timeout leaves them drained."""
    try:
        listed = [n for n in names if n in node_status()]
        if listed:
            update(listed, "DOWN" if force else "DRAIN", RETIRING)
            say(f"{','.join(listed)}: {'down, their jobs killed' if force else 'draining'} in Slurm")
    except SlurmError as e:
        if not force:
            raise UserError(f"cannot drain {','.join(names)}: {e} (--force retires without draining)") from None
        say(f"not drained, Slurm does not answer: {e}")
        return
    if listed and not force:
        _wait_for_jobs(listed, timeout, say, poll, clock)


def _wait_for_jobs(listed: Sequence[str], timeout: float, say: Say, poll: float, clock: Callable[[], float]) -> None:
    """Until no job holds `listed`, with a progress line when the jobs change (or a minute
    passed); squeue failing meanwhile (slurmctld restarting) is asked again until the deadline."""
    deadline = clock() + timeout
    last, said = "", 0.0
    while True:
        left = deadline - clock()
        try:
            held = jobs_on(listed)
        except SlurmError as e:
            if left <= 0:
                raise UserError(f"cannot tell whether jobs still hold {','.join(listed)}: {e}") from None
            say(f"{e}; asking again")
            time.sleep(min(poll, max(left, 0.05)))
            continue
        if not held:
            return
        jobs = list(dict.fromkeys(j for js in held.values() for j in js))
        if left <= 0:
            raise UserError(
                f"{','.join(sorted(held))} still run job(s) {', '.join(jobs)} after {timeout:g} s: nothing "
                "removed, the nodes stay drained (retire again to wait longer, or --force to kill the jobs)"
            )
        news = f"waiting for job(s) {', '.join(jobs)} on {','.join(sorted(held))}"
        if news != last or clock() - said >= PROGRESS:
            say(f"{news} ({left:.0f} s left)")
            last, said = news, clock()
        time.sleep(min(poll, max(left, 0.05)))


def retire_nodes(
    ctx: Context,
    expr: str,
    conf_dir: Path | str,
    *,
    force: bool = False,
    timeout: float = 3600,
    reconfigure: Sequence[str] | None = slurm_config.RECONFIGURE,
    restart: Sequence[str] | None = slurm_config.RESTART,
    say: Say = quiet,
) -> tuple[list[str], BuildReport, ApplyResult]:
    """Drain the nodes (see `drain`), remove them (see `remove_nodes`), then have Slurm forget
    them: slurm.conf and its partitions rewritten without them and applied (a restart of
    slurmctld: Slurm 22.05 takes a new node set no other way), the shared hostfile rewritten.
    DHCP follows the inventory by itself (serve reloads it on change)."""
    nodes = ctx.select(expr)
    names = [n.name for n in nodes]
    drain([n.name for n in nodes if "slurm" in n.overlays], force=force, timeout=timeout, say=say)
    removed, report = remove_nodes(ctx, ",".join(names), say)
    say(f"removed {','.join(removed)} with their secrets and files; rebuilt {len(report.built)} other(s)")
    return removed, report, apply_slurm(ctx.fresh(), conf_dir, reconfigure, restart, say)
