"""Write the rendered Slurm files into the controller's config dir and reload slurmctld.

Each file is replaced atomically and only when its bytes differ; `scontrol reconfigure` runs
only when something changed, so applying on every facts report is cheap and never disturbs a
running cluster for nothing. In configless mode slurmctld pushes the new files to every slurmd.

Slurm 22.05 takes some changes only at a restart of slurmctld. A new CPU topology for a node
makes it refuse the reconfigure and say so; a changed set of node names is worse: the
reconfigure kills slurmctld ("hostnames inconsistency"). So a changed node set goes straight
to `restart`, and a refused reconfigure falls back to it (jobs survive a restart: slurmctld
saves and reloads its state); one more reconfigure then has running slurmds fetch the files.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_write, locked
from ..facts import Hardware
from ..paths import State
from ..render.slurm import SlurmConfig
from . import layout

DEFAULT_CONF_DIR = Path("/etc/slurm")
RECONFIGURE = ("scontrol", "reconfigure")
RESTART = ("systemctl", "restart", "slurmctld")


class ReconfigureFailed(RuntimeError):
    """The files were written but slurmctld did not take them (its message included)."""


@dataclass(frozen=True)
class ApplyResult:
    changed: tuple[str, ...]  # file names rewritten
    action: str  # "none" (nothing run), "reconfigured" or "restarted"


def diff(config: SlurmConfig, conf_dir: Path = DEFAULT_CONF_DIR) -> str:
    """A unified diff from what is in `conf_dir` to what would be written ('' if nothing)."""
    out: list[str] = []
    for name, text in config.files.items():
        path = Path(conf_dir) / name
        old = path.read_text() if path.exists() else ""
        out += difflib.unified_diff(old.splitlines(True), text.splitlines(True), str(path), f"{path} (new)")
    return "".join(out)


def node_names(slurm_conf: str) -> set[str]:
    return {line.split()[0].partition("=")[2] for line in slurm_conf.splitlines() if line.startswith("NodeName=")}


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True)


def _failed(cmd: Sequence[str], res: subprocess.CompletedProcess[str]) -> ReconfigureFailed:
    said = (res.stderr or res.stdout).strip()
    return ReconfigureFailed(f"{' '.join(cmd)} exited {res.returncode}" + (f": {said}" if said else ""))


def apply(
    config: SlurmConfig,
    conf_dir: Path = DEFAULT_CONF_DIR,
    reconfigure: Sequence[str] | None = RECONFIGURE,
    restart: Sequence[str] | None = RESTART,
) -> ApplyResult:
    """Write the files that changed; if any did, have slurmctld take them (reconfigure, or
    restart when Slurm demands it). `reconfigure=None`: write only."""
    conf_dir = Path(conf_dir)
    changed = []
    with locked(conf_dir / ".provisioner"):
        old = {name: (conf_dir / name).read_text() if (conf_dir / name).exists() else None for name in config.files}
        for name, text in config.files.items():
            if old[name] != text:
                atomic_write(conf_dir / name, text, mode=0o644)
                changed.append(name)
        if not changed or reconfigure is None:
            return ApplyResult(tuple(changed), "none")
        same_nodes = node_names(old["slurm.conf"] or "") == node_names(config.files["slurm.conf"])
        if same_nodes:
            res = _run(reconfigure)
            if res.returncode == 0:
                return ApplyResult(tuple(changed), "reconfigured")
            if "restart" not in (res.stderr + res.stdout).lower():
                raise _failed(reconfigure, res)
        if restart is None:
            raise ReconfigureFailed("slurmctld must be restarted to take the new files (no restart command given)")
        res = _run(restart)
        if res.returncode != 0:
            raise _failed(restart, res)
        for _ in range(50):
            res = _run(reconfigure)
            if res.returncode == 0:
                return ApplyResult(tuple(changed), "restarted")
            time.sleep(0.2)
        raise _failed(reconfigure, res)


# -- accepted hardware ---------------------------------------------------------------------------
Accepted = dict[str, dict[str, Any]]  # node -> its hardware as facts (Hardware.as_facts)


def load_accepted(state: State) -> Accepted:
    """The hardware accepted per node; a file that is not a JSON object of objects counts as
    empty: every node's next report is then taken as its first."""
    try:
        data = json.loads(layout.accepted_hardware(state).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


@contextlib.contextmanager
def accepted_hardware(state: State) -> Iterator[Accepted]:
    """The hardware accepted per node, locked for the block; what the block leaves in the dict
    is written back (atomically, 0600) if it changed."""
    path = layout.accepted_hardware(state)
    with locked(path):
        old = load_accepted(state)
        accepted = dict(old)
        yield accepted
        if accepted != old:
            atomic_write(path, json.dumps(accepted, indent=1, sort_keys=True) + "\n", mode=0o600)


def as_accepted(hardware: Mapping[str, Hardware]) -> Accepted:
    return {name: hw.as_facts(name) for name, hw in hardware.items()}
