"""What slurmctld says about each node, read with `sinfo` (the last boot stage 'idle' and the
Slurm column of `provisioner status` come from here), and the few node state changes
provisioner asks of it with `scontrol update`: drain, down, resume."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..inventory.hostlist import HostlistError, compress, expand

# Slurm base states in which a node has joined and takes work. A suffix flag such as `*`
# (not responding) or `~` (powered off) means it has not, so those never match.
READY = frozenset({"idle", "mixed", "allocated", "completing"})
# Job states that hold a node: running, completing (epilog), suspended.
HOLDING = "R,CG,S"


class SlurmError(RuntimeError):
    """A Slurm command failed or is missing (its own message included)."""


@dataclass(frozen=True)
class SlurmNode:
    state: str  # sinfo's %T in lower case: idle, draining, drained, down*, ...
    reason: str | None  # why it is drained or down (None: no reason set)


def parse_sinfo(text: str) -> dict[str, str]:
    """`sinfo -h -N -o '%N %T'` output -> {node: state}; a node listed in several
    partitions appears once."""
    states: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states.setdefault(parts[0], parts[1].lower())
    return states


def slurm_states(timeout: float = 5.0, env: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """Each node's Slurm state, or None when Slurm is not installed or slurmctld does not answer."""
    if shutil.which("sinfo") is None:
        return None
    try:
        res = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %T"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else dict(env),
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_sinfo(res.stdout) if res.returncode == 0 else None


def is_ready(state: str | None) -> bool:
    return state in READY


def _run(cmd: Sequence[str], timeout: float) -> str:
    try:
        res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SlurmError(f"{cmd[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{cmd[0]} got no answer from slurmctld in {timeout:g} s") from None
    if res.returncode != 0:
        said = (res.stderr or res.stdout).strip().splitlines()  # the last line: its fatal error
        raise SlurmError(f"{' '.join(cmd[:2])} exited {res.returncode}" + (f": {said[-1]}" if said else ""))
    return res.stdout


def parse_node_status(text: str) -> dict[str, SlurmNode]:
    """`sinfo -h -N -o '%N|%T|%E'` output -> {node: SlurmNode}, each node once."""
    nodes: dict[str, SlurmNode] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition("|")
        state, sep2, reason = rest.partition("|")
        if sep and sep2:
            nodes.setdefault(name, SlurmNode(state.lower(), None if reason in ("", "none") else reason))
    return nodes


def node_status(timeout: float = 10.0) -> dict[str, SlurmNode]:
    """Each node of a partition with its state and reason (SlurmError when sinfo fails)."""
    return parse_node_status(_run(["sinfo", "-h", "-N", "-o", "%N|%T|%E"], timeout))


def update(nodes: Sequence[str], state: str, reason: str | None = None, timeout: float = 30.0) -> None:
    """`scontrol update` the nodes' state (DRAIN and DOWN want a reason, RESUME none)."""
    _run(
        ["scontrol", "update", f"NodeName={compress(list(nodes))}", f"State={state}"]
        + ([f"Reason={reason}"] if reason else []),
        timeout,
    )


def reboot(nodes: Sequence[str], reason: str, timeout: float = 30.0) -> None:
    """`scontrol reboot ASAP nextstate=RESUME`: slurmctld drains the nodes, lets their jobs
    end, has slurmd run the RebootProgram and puts each back in service once it registers."""
    _run(
        ["scontrol", "reboot", "ASAP", "nextstate=RESUME", f"reason={reason}", compress(list(nodes))],
        timeout,
    )


def jobs_on(nodes: Sequence[str], timeout: float = 10.0) -> dict[str, list[str]]:
    """The jobs holding each of `nodes` (running, completing or suspended), by node."""
    out = _run(["squeue", "-h", "-w", compress(list(nodes)), "-t", HOLDING, "-o", "%i|%N"], timeout)
    wanted = set(nodes)
    held: dict[str, list[str]] = {}
    for line in out.splitlines():
        job, _, hosts = line.partition("|")
        try:
            names = expand(hosts)
        except HostlistError:  # squeue listed it for one of `nodes`: count it on each
            names = list(nodes)
        for name in names:
            if name in wanted:
                held.setdefault(name, []).append(job)
    return held
