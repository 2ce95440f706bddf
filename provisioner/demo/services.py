"""The master's DNS, NTP and log daemons in the demo, as `provisioner configure all` sets
them up (their system files below the master's work folder), the demo's user (a master's
accounts in a scratch tree, which `cluster.users` points at), and the check from inside each
node that it uses them and knows the user."""

from __future__ import annotations

import hashlib
import os
import re
import secrets as pysecrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ..actions import configure as configure_action
from ..actions import logs as logs_action
from ..actions.context import Context
from ..artifacts import secrets
from ..inventory import Inventory
from .host import MasterHost
from .procs import DemoFailure, Supervisor

Say = Callable[[str], None]

# The demo's user, as the master's tables would have them (ids in the demo's cluster.users range).
USER, UID, GROUP, GID = "alice", 2001, "research", 2100
USER_ID = f"uid={UID}({USER}) gid={UID}({USER}) groups={UID}({USER}),{GID}({GROUP})"


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


def write_accounts(root: Path, home: Path) -> Path:
    """A master's accounts with the demo's user below `root` (passwd, group, shadow with the
    hash of a random password, her authorized key), her home in the NFS-exported `home`, and
    two key pairs: one authorized, one to be certified by the site's user CA. Returns root."""
    etc, ssh = root / "etc", root / "home" / USER / ".ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    etc.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    (etc / "passwd").write_text(f"{USER}:x:{UID}:{UID}:Demo user:/home/{USER}:/bin/bash\n")
    (etc / "group").write_text(f"{USER}:x:{UID}:\n{GROUP}:x:{GID}:{USER}\n")
    if not (etc / "shadow").exists():
        hashed = subprocess.run(
            ["openssl", "passwd", "-6", "-stdin"],
            input=pysecrets.token_urlsafe(12),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        fd = os.open(etc / "shadow", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{USER}:{hashed}:20000:0:99999:7:::\n")
    for key in (user_key(root), user_key(root, certified=True)):
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key.name, "-f", str(key)], check=True)
    (ssh / "authorized_keys").write_text(Path(f"{user_key(root)}.pub").read_text())
    (home / USER).mkdir(mode=0o700, exist_ok=True)
    os.chown(home / USER, UID, UID)
    return root


def master_tables(accounts: Path, dest: Path) -> dict[str, Path]:
    """The master namespace's /etc/passwd and /etc/group: this machine's, plus the demo user
    and group of `accounts`, as if the admin had created her on the master; slurmctld and
    `srun` there then know her as a real master's would. Paths to mount, by path on the master."""
    dest.mkdir(parents=True, exist_ok=True)
    out = {}
    for table in ("passwd", "group"):
        host = Path("/etc", table).read_text()
        known = {line.split(":", 1)[0] for line in host.splitlines()}
        extra = [ln for ln in (accounts / "etc" / table).read_text().splitlines() if ln.split(":", 1)[0] not in known]
        (dest / table).write_text(host + "".join(f"{ln}\n" for ln in extra))
        os.chmod(dest / table, 0o644)
        out[f"etc/{table}"] = dest / table
    return out


def user_key(accounts: Path, certified: bool = False) -> Path:
    """The demo user's private key: the one in her authorized_keys, or the one the site's user
    CA certifies (`certified`; its certificate beside it, -cert.pub)."""
    return accounts / "home" / USER / ".ssh" / ("id_ca_ed25519" if certified else "id_ed25519")


def certify(ctx: Context, accounts: Path) -> Path:
    """The certified key's certificate from the site's user CA (`secrets sign-user`)."""
    key = user_key(accounts, certified=True)
    cert = Path(f"{key}-cert.pub")
    cert.write_text(secrets.sign_user(ctx.state, ctx.inventory().cluster, USER, Path(f"{key}.pub").read_text()))
    return cert


def ssh_as_user(master: MasterHost, ip: str, key: Path, cert: Path | None = None) -> subprocess.CompletedProcess:
    """`id` on the node at `ip` as the demo user, logged in over SSH from the master."""
    opts = ["-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
    opts += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=60"]
    if cert is not None:
        opts += ["-o", f"CertificateFile={cert}"]
    return master.run(["ssh", *opts, f"{USER}@{ip}", "id"], timeout=180)


def chrony_socket(master: MasterHost) -> Path:
    return master.work / "sysroot/run/chrony/chronyd.sock"


def node_script(inv: Inventory) -> str:
    """What each node runs: its DNS answers for the master's name and address (`getent -s dns`,
    past its /etc/hosts), timesyncd's server, a `logger` line; the demo user's ids, the mode
    and owners of /etc/shadow, a digest of her entry there, and whether she can read it."""
    master, name = inv.cluster.network.master, inv.cluster.slurm.controller
    return (
        f"read -r n < /proc/sys/kernel/hostname; getent -s dns hosts {name}; getent -s dns hosts {master}; "
        "timedatectl timesync-status | sed -n 's/^ *Server: /ntp /p'; "
        'logger -t demo "logger check from $n"; echo "host $n"; '
        f"echo \"user $(id {USER})\"; stat -c 'shadow %a %U:%G' /etc/shadow; "
        f'echo "entry $(getent shadow {USER} | cut -d: -f2 | sha256sum)"; '
        f"setpriv --reuid={USER} --regid={USER} --init-groups head -c1 /etc/shadow >/dev/null 2>&1 && "
        f"echo 'shadow readable by {USER}'; true"
    )


def check(ctx: Context, master: MasterHost, inv: Inventory, say: Say) -> None:
    """One srun on every node, then the demo user's SSH logins from the master; one line per
    service and node, or DemoFailure naming what failed."""
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
    accounts = Path(inv.cluster.users.root)
    cert = certify(ctx, accounts)
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
        problems += [f"{node.name}: {p}" for p in _user_problems(master, accounts, node.name, str(node.ip), text, cert)]
        if not problems:
            seen = "listed" if str(node.ip) in clients else "not yet listed"
            lines += [
                f"{node.name}: dns {name} -> {addr} -> {answers[1]} (dnsmasq on the master)",
                f"{node.name}: ntp from {addr}, chrony on the master ({node.ip} {seen} in chronyc clients)",
                f"{node.name}: logs: its `logger` line is in `provisioner logs {node.name}` ({log})",
                f"{node.name}: users: {USER_ID} as on the master, in her own `srun` too; she logs in over ssh with her "
                "authorized key and with a certificate of the site's user CA; /etc/shadow 640 "
                "root:shadow, her entry as on the master",
            ]
    if res.returncode != 0 or problems or len(tasks) != len(names):
        raise DemoFailure(
            f"service check (srun exit {res.returncode}): {'; '.join(problems)}\n{res.stdout}{res.stderr}"
        )
    for line in lines:
        say(line)


def _user_problems(master: MasterHost, accounts: Path, node: str, ip: str, text: str, cert: Path) -> list[str]:
    """What is wrong with the demo user on the node (`text`: its node_script output): her ids,
    her shadow entry, a job she submits with `srun` on the master, her SSH logins."""
    out = []
    if f"user {USER_ID}" not in text.splitlines():
        out.append(f"{USER} is not {USER_ID} there")
    if "shadow 640 root:shadow" not in text.splitlines():
        out.append("/etc/shadow is not 0640 root:shadow")
    entry = (accounts / "etc/shadow").read_text().split(":")[1] + "\n"  # as `cut` prints it
    if f"entry {hashlib.sha256(entry.encode()).hexdigest()}  -" not in text.splitlines():
        out.append(f"{USER}'s /etc/shadow entry is not the master's")
    if f"shadow readable by {USER}" in text:
        out.append(f"{USER} can read /etc/shadow")
    as_user = ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups"]
    job = master.run([*as_user, "srun", "--mpi=none", "-D", "/tmp", "-N1", "-w", node, "id"], timeout=180)
    if job.returncode != 0 or job.stdout.strip() != USER_ID:
        out.append(f"{USER}'s own srun does not run as {USER_ID}: {job.stdout.strip()} {job.stderr.strip()[-300:]}")
    for how, key, with_cert in (
        ("her key", user_key(accounts), None),
        ("a certificate", user_key(accounts, True), cert),
    ):
        res = ssh_as_user(master, ip, key, with_cert)
        if res.returncode != 0 or res.stdout.strip() != USER_ID:
            out.append(f"{USER} cannot log in over ssh with {how}: {res.stdout.strip()} {res.stderr.strip()[-300:]}")
    return out


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
