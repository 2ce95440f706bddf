"""The master's DNS, NTP and log daemons in the demo, as `provisioner configure all` sets
them up (their system files below the master's work folder), and the check from inside each
node that it uses them."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from ..actions import configure as configure_action
from ..actions import logs as logs_action
from ..actions.context import Context
from ..inventory import Inventory
from .host import MasterHost
from .procs import DemoFailure, Supervisor

Say = Callable[[str], None]


def start(ctx: Context, master: MasterHost, sup: Supervisor, say: Say) -> None:
    """dnsmasq, chronyd, rsyslogd after `configure all`; as root (the work folder may be closed
    to their own users) and chronyd with -x (this machine's clock is not the demo's to set)."""
    root = master.work / "sysroot"
    for service in configure_action.SERVICES:
        say(configure_action.configure(ctx, service, root).line())
    sup.start(
        "dnsmasq",
        master.enter(["dnsmasq", "-k", f"--conf-file={root}/etc/dnsmasq.d/provisioner.conf", "--user=root"]),
        ready=(root / "run/dnsmasq/dnsmasq.pid").exists,
        timeout=20,
    )
    sup.start(
        "chronyd",
        master.enter(["chronyd", "-d", "-x", "-u", "root", "-f", f"{root}/etc/chrony/chrony.conf"]),
        ready=chrony_socket(master).exists,
        timeout=20,
    )
    conf, pidfile = root / "etc/rsyslog.d/provisioner.conf", root / "run/rsyslogd.pid"
    sup.start("rsyslogd", master.enter(["rsyslogd", "-n", "-f", str(conf), "-i", str(pidfile)]), ready=pidfile.exists)


def chrony_socket(master: MasterHost) -> Path:
    return master.work / "sysroot/run/chrony/chronyd.sock"


def node_script(inv: Inventory) -> str:
    """What each node runs: its DNS answers for the master's name and address (`getent -s dns`,
    past its /etc/hosts), timesyncd's server, and a `logger` line."""
    master, name = inv.cluster.network.master, inv.cluster.slurm.controller
    return (
        f"read -r n < /proc/sys/kernel/hostname; getent -s dns hosts {name}; getent -s dns hosts {master}; "
        "timedatectl timesync-status | sed -n 's/^ *Server: /ntp /p'; "
        'logger -t demo "logger check from $n"; echo "host $n"'
    )


def check(ctx: Context, master: MasterHost, inv: Inventory, say: Say) -> None:
    """One srun on every node; one line per service and node, or DemoFailure naming what failed."""
    addr, name = str(inv.cluster.network.master), inv.cluster.slurm.controller
    names = [n.name for n in inv.nodes]
    srun = ["srun", "-l", "--mpi=none", "-N", str(len(names)), "--ntasks-per-node=1", "-w", ",".join(names)]
    res = master.run([*srun, "sh", "-c", node_script(inv)], timeout=240)
    tasks: dict[str, list[str]] = {}
    for line in res.stdout.splitlines():
        m = re.match(r"\s*(\d+): ?(.*)", line)
        if m:
            tasks.setdefault(m.group(1), []).append(m.group(2))
    clients = master.run(["chronyc", "-h", str(chrony_socket(master)), "-n", "clients"]).stdout
    problems, lines = [], []
    for task in tasks.values():
        text = "\n".join(task)
        host = re.search(r"^host (\S+)", text, re.M)
        node = inv.node(host.group(1)) if host else None
        if node is None:
            continue
        answers = re.findall(rf"^{re.escape(addr)}\s+(\S+)", text, re.M)
        ntp = re.search(r"^ntp (\S+)", text, re.M)
        log = _node_log(ctx, node.name, f"logger check from {node.name}")
        if len(answers) < 2:
            problems.append(f"{node.name}: {name} and {addr} do not resolve through the master's DNS")
        if not ntp or ntp.group(1) != addr:
            problems.append(f"{node.name}: timesyncd's server is {ntp.group(1) if ntp else 'none'}, not {addr}")
        if not log:
            problems.append(f"{node.name}: its logger line is not in `provisioner logs {node.name}`")
        if not problems:
            seen = "listed" if str(node.ip) in clients else "not yet listed"
            lines += [
                f"{node.name}: dns {name} -> {addr} -> {answers[1]} (dnsmasq on the master)",
                f"{node.name}: ntp from {addr}, chrony on the master ({node.ip} {seen} in chronyc clients)",
                f"{node.name}: logs: its `logger` line is in `provisioner logs {node.name}` ({log})",
            ]
    if res.returncode != 0 or problems or len(tasks) != len(names):
        raise DemoFailure(
            f"service check (srun exit {res.returncode}): {'; '.join(problems)}\n{res.stdout}{res.stderr}"
        )
    for line in lines:
        say(line)


def _node_log(ctx: Context, node: str, wanted: str, timeout: float = 20) -> str:
    """How much of `provisioner logs NODE` there is once it holds `wanted` ('' if it never does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = logs_action.read(ctx, node)
        if any(wanted in line for line in lines):
            early = sum(1 for line in lines if "provisioner: " in line)
            return f"{len(lines)} lines, {early} from its initramfs"
        time.sleep(0.5)
    return ""
