"""Slurm and MPI actions: the controller's files from the inventory and the nodes' facts,
applied once or again and again (`slurm apply --watch`); the nodes whose hardware drifted
drained, and resumed once it is back or accepted; the MPI hostfile of the nodes that are up."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from ..artifacts import slurm_config
from ..artifacts.slurm_config import ApplyResult, accepted_hardware, as_accepted, load_accepted
from ..atomic import atomic_write
from ..errors import UserError
from ..facts import FactsInvalid, hardware
from ..nodestate.slurm import SlurmError, SlurmNode, is_ready, node_status, update
from ..render import mpi
from ..render.slurm import SlurmConfig, render, slurm_nodes
from .context import Context, Say, quiet

# The reason a node drained for drifting hardware carries: its prefix tells provisioner's drains
# from an admin's, so only its own are lifted.
DRIFT = "hardware changed: "
NOT_RESPONDING = "Not responding"  # the reason slurmctld gives a node it set DOWN (SlurmdTimeout)


def slurm_files(ctx: Context, warn: Say = quiet) -> SlurmConfig:
    """slurm.conf, cgroup.conf and gres.conf as `apply` would write them now (the accepted
    hardware, first reports folded in); each problem found on the way goes to `warn`."""
    try:
        accepted = load_accepted(ctx.state)
    except OSError as e:
        raise UserError(f"cannot read {e.filename}: {e.strerror}") from None
    config = render(ctx.inventory(), ctx.facts(), accepted)
    for problem in config.problems:
        warn(problem)
    return config


def _apply(
    ctx: Context, conf_dir: Path | str, reconfigure: Sequence[str] | None, restart: Sequence[str] | None, warn: Say
) -> tuple[ApplyResult, SlurmConfig]:
    """Render from the accepted hardware, remember it (a first report becomes accepted) and
    write; the lock keeps an `accept` from landing between reading and remembering."""
    try:
        with accepted_hardware(ctx.state) as accepted:
            config = render(ctx.inventory(), ctx.facts(), dict(accepted))
            for problem in config.problems:
                warn(problem)
            accepted.clear()
            accepted.update(as_accepted(config.hardware))
        return slurm_config.apply(config, Path(conf_dir), reconfigure, restart), config
    except OSError as e:
        raise UserError(f"cannot write {e.filename or conf_dir}: {e.strerror}") from None


def follow(ctx: Context, config: SlurmConfig, say: Say = quiet) -> None:
    """Bring slurmctld's node states in line with `config`: drain each node whose hardware
    drifted (reason `hardware changed: <difference>`), resume those provisioner drained for it
    whose hardware is back or accepted, rewrite the shared hostfile. An admin's own drain (any
    other reason) is left alone. Slurm not answering goes to `say`; the next round tries again."""
    try:
        seen = node_status()
        for name, diff in config.drift.items():
            node = seen.get(name)
            if node is not None and node.reason != DRIFT + diff and not _drained_by_admin(node):
                update([name], "DRAIN", DRIFT + diff)
                say(f"{name} drained: {DRIFT}{diff} (`provisioner slurm accept {name}` takes it)")
        back = [n for n, s in seen.items() if (s.reason or "").startswith(DRIFT) and n not in config.drift]
        if back:
            update(back, "RESUME")
            say(f"{','.join(back)} resumed: hardware as accepted")
    except SlurmError as e:
        say(f"cannot follow Slurm's node states: {e}")
        return
    try:
        write_hostfile(ctx, seen)
    except OSError as e:
        say(f"cannot write the hostfile {e.filename}: {e.strerror}")


def _drained_by_admin(node: SlurmNode) -> bool:
    """Drained or down for a reason neither provisioner's drift nor Slurm's own "Not responding"
    (a node that comes back with less memory is drained before its slurmd registers)."""
    return (
        node.state.startswith(("drain", "down"))
        and node.reason not in (None, NOT_RESPONDING)
        and not (node.reason or "").startswith(DRIFT)
    )


def write_hostfile(ctx: Context, seen: dict[str, SlurmNode]) -> None:
    """The cluster's `slurm.hostfile`, if it names one, with the nodes `seen` up; replaced
    atomically and only when its bytes change, so MPI jobs starting meanwhile read a whole one."""
    inv = ctx.inventory()
    path = inv.cluster.slurm.hostfile
    if path is None:
        return
    up = {n for n, s in seen.items() if is_ready(s.state)}
    text = mpi.hostfile(inv, ctx.facts(), None, inv.cluster.slurm.hostfile_format, up)
    try:
        if Path(path).read_text() == text:
            return
    except OSError:
        pass
    atomic_write(path, text, mode=0o644)


def apply_slurm(
    ctx: Context,
    conf_dir: Path | str,
    reconfigure: Sequence[str] | None = slurm_config.RECONFIGURE,
    restart: Sequence[str] | None = slurm_config.RESTART,
    warn: Say = quiet,
) -> ApplyResult:
    """Write the files that changed (atomically) and have slurmctld take them, then drain,
    resume and rewrite the hostfile (`follow`); `reconfigure` None: write only."""
    try:
        result, config = _apply(ctx, conf_dir, reconfigure, restart, warn)
    except slurm_config.ReconfigureFailed as e:
        raise UserError(f"files written, but slurmctld did not take them: {e}") from None
    if reconfigure is not None:
        follow(ctx, config, warn)
    return result


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
    """Apply and follow every `interval` seconds until `stop` is set, so reported facts,
    inventory edits (read again each round) and nodes coming and going reach Slurm and the
    hostfile by themselves. `applied` hears of each round that changed files; a slurmctld that
    refuses them goes to `error` and the next round tries again; an inventory or config dir
    the round cannot use ends the watch (a UserError)."""
    stop = stop or threading.Event()
    while True:
        try:
            result, config = _apply(ctx, conf_dir, reconfigure, restart, warn)
        except slurm_config.ReconfigureFailed as e:
            error(str(e))
        else:
            if result.changed:
                applied(result)
            if reconfigure is not None:
                follow(ctx, config, warn)
        if stop.wait(interval):
            return
        ctx = ctx.fresh()


def accept(
    ctx: Context,
    expr: str,
    conf_dir: Path | str,
    reconfigure: Sequence[str] | None = slurm_config.RECONFIGURE,
    restart: Sequence[str] | None = slurm_config.RESTART,
    warn: Say = quiet,
) -> tuple[list[str], ApplyResult]:
    """Take the hardware the nodes last reported as theirs: slurm.conf gets it and the nodes
    drained for drifting are resumed. A node that reported nothing usable is an error, and
    then nothing is accepted."""
    nodes = ctx.select(expr)
    slurm = {n.name for n in slurm_nodes(ctx.inventory())}
    facts = ctx.facts()
    taken = {}
    for node in nodes:
        if node.name not in slurm:
            raise UserError(f"{node.name} is not a Slurm node (no `slurm` overlay)")
        try:
            hw = hardware(node.name, facts.get(node.name))
        except FactsInvalid as e:
            raise UserError(f"cannot accept: {e}") from None
        if hw is None:
            raise UserError(f"{node.name} has reported no hardware yet")
        taken[node.name] = hw
    with accepted_hardware(ctx.state) as accepted:
        accepted.update(as_accepted(taken))
    return list(taken), apply_slurm(ctx, conf_dir, reconfigure, restart, warn)


def hostfile(ctx: Context, partition: str | None = None, fmt: str = "openmpi", up: bool = False) -> str:
    """An MPI hostfile (slots: the node's mpi_slots, else its reported CPUs, else 1); `up`:
    only the nodes Slurm can run on now (idle, mixed, allocated)."""
    inv = ctx.inventory()
    if partition is not None and not mpi.partition_nodes(inv, partition):
        known = sorted({p for n in inv.nodes for p in n.partitions})
        raise UserError(f"no node is in partition {partition!r} (partitions: {', '.join(known) or 'none'})")
    only = None
    if up:
        try:
            only = {n for n, s in node_status().items() if is_ready(s.state)}
        except SlurmError as e:
            raise UserError(f"cannot tell which nodes are up: {e}") from None
    return mpi.hostfile(inv, ctx.facts(), partition, fmt, only)
