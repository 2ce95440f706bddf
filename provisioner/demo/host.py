"""The master host of the demo: a hostname (UTS) and mount namespace inside the demo network,
held open by a sleeping process, in which slurmctld, munged and `provisioner serve` run as
they would on a real master, without touching this machine's /etc or /run."""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .netns import DemoNet

# Private state directories: path on the host -> (owner, mode), bind-mounted over the real ones.
PRIVATE = {
    "run": ("root", 0o755),
    "run/munge": ("munge", 0o755),
    "var/lib/munge": ("munge", 0o711),
    "var/log/munge": ("munge", 0o700),
    "var/lib/slurm": ("slurm", 0o755),
    "var/lib/slurm/slurmctld": ("slurm", 0o755),
    "var/log/slurm": ("slurm", 0o755),
    "etc/munge": ("munge", 0o700),
}
# Not /tmp: the demo's own files may live there (a test's work dir), and must stay visible.
BINDS = ("run", "var/lib/munge", "var/log/munge", "var/lib/slurm", "var/log/slurm", "etc/munge")


class MasterHost:
    def __init__(self, net: DemoNet, hostname: str, work: Path, files: dict[str, Path]):
        """`files` maps a path on the master (e.g. "etc/slurm") to what is mounted there."""
        self.name, self.work = hostname, work
        priv = work / "priv"
        for d, (owner, mode) in PRIVATE.items():
            (priv / d).mkdir(parents=True, exist_ok=True)
            pw = pwd.getpwnam(owner)
            os.chown(priv / d, pw.pw_uid, pw.pw_gid)
            os.chmod(priv / d, mode)
        script = ["set -e", f"hostname {hostname}"]
        script += [f"mount --bind {priv / d} /{d}" for d in BINDS]
        script += [f"mount --bind {src} /{dst}" for dst, src in files.items()]
        script += ["echo ready", "exec sleep infinity"]
        self.holder = subprocess.Popen(
            net.enter(["unshare", "--uts", "--mount", "--propagation", "private", "--", "sh", "-c", "\n".join(script)]),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        line = self.holder.stdout.readline().decode()  # type: ignore[union-attr]
        if line.strip() != "ready":
            rest = self.holder.stdout.read().decode(errors="replace")  # type: ignore[union-attr]
            raise RuntimeError(f"master namespace setup failed: {line}{rest}")

    @property
    def priv(self) -> Path:
        return self.work / "priv"

    def enter(self, cmd: Sequence[str]) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "--net", "--uts", "--mount", "--", *cmd]

    def run(self, cmd: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.enter(cmd), capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        if self.holder.poll() is None:
            self.holder.kill()
            self.holder.wait()
