"""rsyslog on the master: each node's syslog into its own file under the state directory.

rsyslog because one receiver then takes both what a booted node forwards (its journal through
its own rsyslog, over TCP with a queue that waits out a master restart) and what the
initramfs sends before switch_root (busybox syslogd speaks only syslog over UDP), into plain
files an admin greps; systemd-journal-remote (252 in Debian 12) takes neither syslog nor a
size limit. A line is filed under the node whose inventory address sent it (a lookup table,
not the hostname the sender claims); other senders are dropped. The table is a data file
rsyslog re-reads on SIGHUP, so adding a node needs no restart.

Pure: the caller passes where the files live.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..inventory.model import Cluster, Node

HEADER = "# Written by `provisioner configure logs`; edits are lost on the next run."
SYSLOG_PORT = 514
# What the initramfs logs first on every boot (initcpio/provisioner.sh): `logs --boot` starts there.
BOOT_MARK = "provisioner: boot begins"


@dataclass(frozen=True)
class LogFiles:
    conf: Path  # the rsyslog configuration snippet (rsyslog.d)
    table: Path  # lookup table: node address -> node name
    rotate: Path  # the script rsyslog runs when a node's file reaches the size limit
    logdir: Path  # logdir/NODE/messages (and messages.1)
    pidfile: Path


def render_table(nodes: Iterable[Node]) -> str:
    rows = [{"index": str(i.ip), "value": n.name} for n in nodes for i in n.interfaces if i.ip]
    return json.dumps({"version": 1, "nomatch": "", "type": "string", "table": rows}, indent=1) + "\n"


def render_rotate(files: LogFiles, max_mb: int) -> str:
    """rsyslog runs this (no arguments) when a file passes the limit; it moves every node's
    file past the limit to messages.1 (the one before is dropped), and rsyslog reopens."""
    logdir = shlex.quote(str(files.logdir))
    return (
        "#!/bin/sh\n"
        f"{HEADER}\n"
        f"find {logdir} -mindepth 2 -maxdepth 2 -name messages -size +{max_mb * 1024 - 1}k "
        "-exec mv -f {} {}.1 \\;\n"
    )


def render_rsyslog(cluster: Cluster, files: LogFiles) -> str:
    for p in (files.rotate, files.logdir, files.table):
        if any(c.isspace() or c in "\"'\\%" for c in str(p)):
            raise ValueError(f"rsyslog cannot take the path {str(p)!r}: no spaces, quotes or '%'")
    master, ruleset = cluster.network.master, "provisioner-nodes"
    lines = [
        HEADER,
        'module(load="imudp")',
        'module(load="imtcp" MaxSessions="2000")',
        f'lookup_table(name="provisioner-nodes" file="{files.table}" reloadOnHUP="on")',
        f'template(name="provisioner-node-file" type="string" string="{files.logdir}/%$.node%/messages")',
        f'ruleset(name="{ruleset}") {{',
        '    set $.node = lookup("provisioner-nodes", $fromhost-ip);',
        '    if $.node == "" then stop',
        '    action(type="omfile" dynaFile="provisioner-node-file" dynaFileCacheSize="1000" createDirs="on"',
        '           dirCreateMode="0700" fileCreateMode="0600"',
        f'           rotation.sizeLimit="{cluster.logs.max_mb}m" rotation.sizeLimitCommand="/bin/sh {files.rotate}")',
        "    stop",
        "}",
        f'input(type="imudp" address="{master}" port="{SYSLOG_PORT}" ruleset="{ruleset}")',
        f'input(type="imtcp" address="{master}" port="{SYSLOG_PORT}" ruleset="{ruleset}")',
        *cluster.logs.options,
    ]
    return "\n".join(lines) + "\n"
