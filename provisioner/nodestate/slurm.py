"""What slurmctld says about each node, read with `sinfo`: the last boot stage ('idle') and
the Slurm column of `provisioner status` come from here."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping

# Slurm base states in which a node has joined and takes work. A suffix flag such as `*`
# (not responding) or `~` (powered off) means it has not, so those never match.
READY = frozenset({"idle", "mixed", "allocated", "completing"})


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
