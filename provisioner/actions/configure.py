"""`provisioner configure dns|ntp|logs`: the master's system daemons, from the inventory.

Each daemon gets its configuration rendered (render/dns, ntp, logs), checked by its own
checker before it is installed (a failing check leaves every previous file in place and says
why), written atomically to its usual place, and reloaded: through systemd where it is PID 1,
else by signalling the pid in the daemon's pid file. The inventory's nodes live in data files
each daemon re-reads on SIGHUP (dnsmasq's hosts and servers, rsyslog's lookup table), so adding
or removing a node is a reload that drops nothing; a change of the daemon's configuration
itself (the cluster's network, upstream servers) needs a restart.

Where the files go is `Places`: every system path under `root` (default /), the data under
the state directory. A configured daemon is recorded with its root, so `overlay build` and
node add/rm re-run exactly what the admin configured, writing only what changed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from ..atomic import atomic_write, private_dir
from ..errors import UserError
from ..inventory.model import Inventory
from ..render.dns import DnsFiles, render_dnsmasq, render_hosts, render_servers
from ..render.logs import LogFiles, render_rotate, render_rsyslog, render_table
from ..render.ntp import NtpFiles, render_chrony
from .context import Context, Say, quiet

SERVICES = ("dns", "ntp", "logs")


@dataclass(frozen=True)
class Places:
    """Where one master's daemons read their files: system paths below `root`, the rendered
    data below the state directory."""

    root: Path
    state: Path

    def sys(self, path: str) -> Path:
        return self.root / path

    @property
    def data(self) -> Path:
        return self.state / "configure"

    @property
    def logdir(self) -> Path:
        return self.state / "logs"

    def dns(self) -> DnsFiles:
        return DnsFiles(
            self.sys("etc/dnsmasq.d/provisioner.conf"),
            # Not in the root-only state: dnsmasq re-reads them after dropping privileges.
            self.sys("var/lib/provisioner-dns/hosts"),
            self.sys("var/lib/provisioner-dns/servers"),
            self.sys("run/dnsmasq/dnsmasq.pid"),
        )

    def ntp(self) -> NtpFiles:
        return NtpFiles(
            self.sys("etc/chrony/chrony.conf"),
            self.sys("var/lib/chrony/chrony.drift"),
            self.sys("run/chrony/chronyd.pid"),
            self.sys("run/chrony/chronyd.sock"),
        )

    def logs(self) -> LogFiles:
        return LogFiles(
            self.sys("etc/rsyslog.d/provisioner.conf"),
            self.data / "rsyslog-nodes.json",
            self.data / "rsyslog-rotate.sh",
            self.logdir,
            self.sys("run/rsyslogd.pid"),
        )


@dataclass(frozen=True)
class Daemon:
    """One daemon's rendered files: its configuration (checked by `check`, a restart to take
    effect), the data files it re-reads on SIGHUP, and how to run and reload it."""

    service: str
    unit: str  # the systemd unit
    conf: tuple[Path, str]
    data: tuple[tuple[Path, str, int], ...]  # path, text, mode
    program: str  # its process name
    check: Callable[[Path], list[str]]  # argv checking a candidate configuration file
    pidfile: Path
    start: str  # how to start it by hand (said when it is not running)
    reloads: bool  # SIGHUP re-reads the data files
    dirs: tuple[tuple[Path, int], ...] = ()  # folders the daemon expects, with their modes


@dataclass(frozen=True)
class Outcome:
    service: str
    changed: tuple[str, ...]
    action: str  # unchanged | reloaded | restarted | restart needed | not running

    def line(self) -> str:
        what = ", ".join(self.changed) if self.changed else "nothing changed"
        return f"{self.service}: {what}; {self.action}"


def resolv_servers(path: Path) -> tuple[IPv4Address, ...]:
    """The nameservers of a resolv.conf (IPv4 ones; none if it is missing)."""
    out = []
    try:
        text = path.read_text()
    except OSError:
        return ()
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                out.append(IPv4Address(words[1]))
            except ValueError:
                continue
    return tuple(out)


def daemon(service: str, inv: Inventory, places: Places) -> Daemon:
    cluster = inv.cluster
    if service == "dns":
        f = places.dns()
        upstream = cluster.dns.upstream or resolv_servers(places.sys("etc/resolv.conf"))
        upstream = tuple(s for s in upstream if s != cluster.network.master)
        return Daemon(
            "dns",
            "dnsmasq",
            (f.conf, render_dnsmasq(cluster, f)),
            ((f.hosts, render_hosts(cluster, inv.nodes), 0o644), (f.servers, render_servers(upstream), 0o644)),
            "dnsmasq",
            lambda conf: ["dnsmasq", "--test", f"--conf-file={conf}"],
            f.pidfile,
            f"dnsmasq --conf-file={f.conf}",
            True,
        )
    if service == "ntp":
        n = places.ntp()
        return Daemon(
            "ntp",
            "chrony",
            (n.conf, render_chrony(cluster, n)),
            (),
            "chronyd",
            lambda conf: ["chronyd", "-p", "-f", str(conf)],
            n.pidfile,
            f"chronyd -f {n.conf}",
            False,
            # chronyd disables its command socket in a folder others may open.
            ((n.driftfile.parent, 0o755), (n.socket.parent, 0o750)),
        )
    if service == "logs":
        g = places.logs()
        try:
            conf = render_rsyslog(cluster, g)
        except ValueError as e:
            raise UserError(str(e)) from None
        return Daemon(
            "logs",
            "rsyslog",
            (g.conf, conf),
            ((g.table, render_table(inv.nodes), 0o644), (g.rotate, render_rotate(g, cluster.logs.max_mb), 0o755)),
            "rsyslogd",
            lambda conf: ["rsyslogd", "-N1", "-f", str(conf)],
            g.pidfile,
            f"rsyslogd -f {g.conf} -i {g.pidfile}",
            True,
        )
    raise UserError(f"unknown service {service!r} (one of {', '.join(SERVICES)}, all)")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _check(d: Daemon) -> None:
    """Run the daemon's checker on the candidate configuration, written beside the real one;
    raise UserError with its words (naming the real path) if it refuses."""
    path, text = d.conf
    candidate = path.with_name(f".{path.name}.candidate")
    atomic_write(candidate, text, mode=0o644)
    try:
        try:
            res = subprocess.run(d.check(candidate), capture_output=True, text=True, timeout=60)
        except FileNotFoundError as e:
            raise UserError(f"{d.service}: cannot check the configuration: {e.filename} is not installed") from None
    finally:
        candidate.unlink(missing_ok=True)
    if res.returncode != 0:
        said = (res.stderr + res.stdout).replace(str(candidate), str(path)).strip()
        raise UserError(f"{d.service}: {d.check(path)[0]} refused the new {path}, the previous one stays:\n{said}")


def _systemd(places: Places) -> bool:
    return places.root == Path("/") and Path("/run/systemd/system").is_dir()


def _pid(d: Daemon) -> int | None:
    """The daemon's pid from its pid file, if that process is still the daemon (a stale file's
    pid may belong to anything by now)."""
    try:
        pid = int(d.pidfile.read_text().split()[0])
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError, IndexError):
        return None
    return pid if comm == d.program else None


def _reload(d: Daemon, places: Places, restart: bool) -> str:
    if _systemd(places):
        cmd = (
            ["systemctl", "restart", d.unit]
            if restart
            else ["systemctl", "kill", "-s", "HUP", "--kill-whom=main", d.unit]
        )
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise UserError(f"{d.service}: {' '.join(cmd)} failed: {res.stderr.strip()}")
        return "restarted" if restart else "reloaded"
    pid = _pid(d)
    if pid is None:
        return f"not running (start it: {d.start})"
    if restart or not d.reloads:
        return f"restart needed: its configuration changed (pid {pid}, no service manager here)"
    os.kill(pid, signal.SIGHUP)
    return "reloaded"


def render(ctx: Context, service: str, root: Path = Path("/")) -> list[tuple[Path, str]]:
    """What `configure SERVICE` would write, file by file."""
    d = daemon(service, ctx.inventory(), Places(root, ctx.state.root))
    return [d.conf, *((p, t) for p, t, _ in d.data)]


def configure(ctx: Context, service: str, root: Path = Path("/")) -> Outcome:
    """Render, check, install and reload one daemon's files; record it for `refresh`."""
    places = Places(root, ctx.state.root)
    d = daemon(service, ctx.inventory(), places)
    conf_path, conf_text = d.conf
    conf_changed = _read(conf_path) != conf_text
    data = [(p, t, m) for p, t, m in d.data if _read(p) != t]
    if not conf_changed and not data:
        _record(places, service)
        return Outcome(service, (), "unchanged")
    private_dir(places.data)
    before = [(p, _read(p), m) for p, _, m in data]
    for p, t, m in data:
        p.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write(p, t, mode=m)
    try:
        if conf_changed:
            _check(d)
    except UserError:
        for p, old, m in before:
            if old is None:
                p.unlink(missing_ok=True)
            else:
                atomic_write(p, old, mode=m)
        raise
    if conf_changed:
        for p in (conf_path.parent, d.pidfile.parent):
            p.mkdir(parents=True, exist_ok=True)
        for p, mode in d.dirs:
            p.mkdir(parents=True, exist_ok=True)
            p.chmod(mode)
        atomic_write(conf_path, conf_text, mode=0o644)
    changed = tuple(str(p) for p, _, _ in data) + ((str(conf_path),) if conf_changed else ())
    _record(places, service)
    return Outcome(service, changed, _reload(d, places, restart=conf_changed))


def _record_file(state: Path) -> Path:
    return state / "configure" / "configured.json"


def _recorded(state: Path) -> dict[str, str]:
    try:
        data = json.loads(_record_file(state).read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items() if k in SERVICES} if isinstance(data, dict) else {}


def _record(places: Places, service: str) -> None:
    done = _recorded(places.state)
    if done.get(service) != str(places.root):
        done[service] = str(places.root)
        private_dir(places.data)
        atomic_write(_record_file(places.state), json.dumps(done, indent=1, sort_keys=True) + "\n", mode=0o644)


def configured(ctx: Context) -> dict[str, Path]:
    """The daemons `configure` set up on this master, with their roots."""
    return {k: Path(v) for k, v in _recorded(ctx.state.root).items()}


def refresh(ctx: Context, say: Say = quiet) -> list[Outcome]:
    """Re-run `configure` for every daemon configured before (after the inventory changed):
    only files whose text changed are written, and a daemon is reloaded only then. A failure
    is said, not raised: the inventory change that called it has already happened."""
    out = []
    for service, root in configured(ctx).items():
        try:
            o = configure(ctx, service, root)
        except UserError as e:
            say(f"warning: configure {service}: {e}")
            continue
        if o.changed:
            say(o.line())
        out.append(o)
    return out


def log_dir(ctx: Context) -> Path:
    """Where rsyslog files the nodes' logs (one directory per node)."""
    return Places(Path("/"), ctx.state.root).logdir
