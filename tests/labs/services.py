"""The master's system daemons as `provisioner configure --root ROOT` set them up, run in a
lab namespace (dnsmasq, chronyd, rsyslogd), and waiting helpers for their answers."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def start(ns, argv: Sequence[str], ready: Callable[[], bool], timeout: float = 15.0) -> subprocess.Popen:
    """Start a daemon in `ns` (the lab kills it with the namespace) and wait until `ready`."""
    proc = ns.popen(list(argv))
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"{argv[0]} exited: {proc.communicate()[0].decode(errors='replace')}"
        assert time.monotonic() < deadline, f"{argv[0]} did not get ready"
        time.sleep(0.1)
    return proc


def until(fn: Callable[[], T], timeout: float = 10.0) -> T:
    """fn's first true answer within `timeout`, else its last one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.1)
    return fn()


def rsyslogd(ns, root: Path) -> subprocess.Popen:
    """rsyslogd with the configuration `configure logs --root root` wrote, listening on 514."""
    pidfile = root / "run/rsyslogd.pid"
    return start(
        ns,
        ["rsyslogd", "-n", "-f", str(root / "etc/rsyslog.d/provisioner.conf"), "-i", str(pidfile)],
        lambda: pidfile.exists() and "514" in ns.run(["ss", "-ltnH", "sport = :514"]).stdout,
    )


def dnsmasq(ns, root: Path) -> subprocess.Popen:
    """dnsmasq with `configure dns --root root`'s configuration; as root, since pytest's
    tmp_path (0700) is closed to dnsmasq's own user."""
    conf = root / "etc/dnsmasq.d/provisioner.conf"
    return start(ns, ["dnsmasq", "-k", f"--conf-file={conf}", "--user=root"], (root / "run/dnsmasq/dnsmasq.pid").exists)


def chronyd(ns, root: Path) -> subprocess.Popen:
    """chronyd with `configure ntp --root root`'s configuration; -x: never touch this
    machine's clock, which every namespace shares."""
    conf = root / "etc/chrony/chrony.conf"
    return start(ns, ["chronyd", "-d", "-x", "-u", "root", "-f", str(conf)], (root / "run/chrony/chronyd.sock").exists)
