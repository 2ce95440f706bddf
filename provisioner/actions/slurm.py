"""Slurm and MPI actions: the controller's files from the inventory and the nodes' facts,
applied once or again and again (`slurm apply --watch`), and MPI hostfiles."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from ..artifacts import slurm_config
from ..artifacts.slurm_config import ApplyResult
from ..errors import UserError
from ..render import mpi
from ..render.slurm import SlurmConfig, render
from .context import Context, Say, quiet


def slurm_files(ctx: Context, warn: Say = quiet) -> SlurmConfig:
    """slurm.conf, cgroup.conf and gres.conf; each problem found on the way goes to `warn`."""
    config = render(ctx.inventory(), ctx.facts())
    for problem in config.problems:
        warn(problem)
    return config


def _apply(
    ctx: Context, conf_dir: Path | str, reconfigure: Sequence[str] | None, restart: Sequence[str] | None, warn: Say
) -> ApplyResult:
    try:
        return slurm_config.apply(slurm_files(ctx, warn), Path(conf_dir), reconfigure, restart)
    except OSError as e:
        raise UserError(f"cannot write {conf_dir}: {e.strerror}") from None


def apply_slurm(
    ctx: Context,
    conf_dir: Path | str,
    reconfigure: Sequence[str] | None = slurm_config.RECONFIGURE,
    restart: Sequence[str] | None = slurm_config.RESTART,
    warn: Say = quiet,
) -> ApplyResult:
    """Write the files that changed (atomically) and have slurmctld take them; `reconfigure`
    None: write only."""
    try:
        return _apply(ctx, conf_dir, reconfigure, restart, warn)
    except slurm_config.ReconfigureFailed as e:
        raise UserError(f"files written, but slurmctld did not take them: {e}") from None


def watch_slurm(
    ctx: Context,
    conf_dir: Path | str,
    interval: float,
    *,
    reconfigure: Sequence[str] | None = slurm_config.RECONFIGURE,
    restart: Sequence[str] | None = slurm_config.RESTART,
    applied: Callable[[ApplyResult], None],
    warn: Say = quiet,
    error: Say = quiet,
    stop: threading.Event | None = None,
) -> None:
    """Apply every `interval` seconds until `stop` is set, so reported facts and inventory
    edits (read again each round) reach Slurm by themselves. `applied` hears of each round
    that changed files; a slurmctld that refuses them goes to `error` and the next round tries
    again; an inventory or config dir the round cannot use ends the watch (a UserError)."""
    stop = stop or threading.Event()
    while True:
        try:
            result = _apply(ctx, conf_dir, reconfigure, restart, warn)
        except slurm_config.ReconfigureFailed as e:
            error(str(e))
        else:
            if result.changed:
                applied(result)
        if stop.wait(interval):
            return
        ctx = ctx.fresh()


def hostfile(ctx: Context, partition: str | None = None, fmt: str = "openmpi") -> str:
    """An MPI hostfile (slots: the node's mpi_slots, else its reported CPUs, else 1)."""
    inv = ctx.inventory()
    if partition is not None and not mpi.partition_nodes(inv, partition):
        known = sorted({p for n in inv.nodes for p in n.partitions})
        raise UserError(f"no node is in partition {partition!r} (partitions: {', '.join(known) or 'none'})")
    return mpi.hostfile(inv, ctx.facts(), partition, fmt)
