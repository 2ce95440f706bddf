"""chrony on the master: the provisioning subnet's time server.

Nodes run systemd-timesyncd pointed at the master (the base overlay); the master keeps time
from `cluster.ntp.upstream` and, with none reachable, serves its own clock at a high stratum
(`local`), so nodes never drift apart from each other: MUNGE refuses credentials from a
skewed clock. Pure: the caller passes where chronyd keeps its files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..inventory.model import Cluster

HEADER = "# Written by `provisioner configure ntp`; edits are lost on the next run."


@dataclass(frozen=True)
class NtpFiles:
    conf: Path
    driftfile: Path
    pidfile: Path
    socket: Path  # chronyc's Unix socket (bindcmdaddress)


def render_chrony(cluster: Cluster, files: NtpFiles) -> str:
    ntp = cluster.ntp
    lines = [
        HEADER,
        *(f"server {s} iburst" for s in ntp.upstream),
        f"allow {cluster.network.subnet}",
        f"local stratum {ntp.stratum} orphan",
        "makestep 1.0 3",
        f"driftfile {files.driftfile}",
        f"pidfile {files.pidfile}",
        f"bindcmdaddress {files.socket}",
        # chronyc talks over the Unix socket only; no command port on the network.
        "cmdport 0",
        *ntp.options,
    ]
    return "\n".join(lines) + "\n"
