"""A Slurm cluster in namespaces: slurmctld on the lab's server namespace, one namespace per node.

Each host (controller or node) is a network namespace from labs.net plus its own UTS namespace
(hostname) and mount namespace, held open by a sleeping process. Inside it:
- the node's overlay archive, built by provisioner's overlay builder and unpacked, is laid
  over the real root with read-only overlayfs mounts (/etc, /usr...) as it lands on the image
  at boot, so a node runs with only the node-side overlay files (MUNGE key, slurmd defaults,
  units, facts script);
- /run, /tmp, /dev/shm, /var/lib/munge, /var/log/munge, /var/lib/slurm, /var/log/slurm are
  private directories under the lab's work dir (per-node TmpFS and shared memory, so PMIx
  steps of one job on several "nodes" of this one host do not collide; logs stay readable).
Daemons start the way their systemd units would: munged as user munge, slurmd from
/etc/default/slurmd's SLURMD_OPTIONS, restarted on failure like the overlay's drop-in says.

The master side is the real thing: `provisioner serve --services http` takes the nodes' facts
and `provisioner slurm apply --watch` folds them into slurm.conf, both in the controller's
namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from provisioner.artifacts import layout, overlay_build, secrets
from provisioner.artifacts.slurm_config import apply
from provisioner.atomic import locked
from provisioner.inventory import Inventory, load_inventory
from provisioner.nodestate import NodeStateDB
from provisioner.paths import Site, State
from provisioner.render.slurm import render

from .net import Lab
from .site import Entry, node_of, site_yaml, write_site

REPO = Path(__file__).resolve().parents[2]

PRIVATE = {  # dir -> (owner, mode)
    "run": ("root", 0o755),
    "run/munge": ("munge", 0o755),
    "tmp": ("root", 0o1777),
    "dev/shm": ("root", 0o1777),
    "var/lib/munge": ("munge", 0o711),
    "var/log/munge": ("munge", 0o700),
    "var/lib/slurm": ("slurm", 0o755),
    "var/lib/slurm/slurmctld": ("slurm", 0o755),
    "var/lib/slurm/slurmd": ("root", 0o755),
    "var/log/slurm": ("slurm", 0o755),
}
# Daemonized, as slurmctld.service runs it (its parent is then init, which reaps it).
START_SLURMCTLD = "slurmctld </dev/null >/dev/null 2>&1"
RESTART_SLURMCTLD = (
    "pid=$(cat /run/slurmctld.pid); kill $pid; while kill -0 $pid 2>/dev/null; do sleep 0.1; done; " + START_SLURMCTLD
)
PROVISIONER = shutil.which("provisioner") or str(Path(sys.executable).parent / "provisioner")
SINFO = ("sinfo", "-N", "-h", "-o", "%N %T")  # a line per node: name, state
# curl on a node, presenting the credential its overlay put in /etc/provisioner (as the facts script does)
NODE_CURL = ("sh", "-c", 'exec curl -H "Authorization: Bearer $(cat /etc/provisioner/credential)" "$@"', "curl")
BINDS = ("run", "tmp", "dev/shm", "var/lib/munge", "var/log/munge", "var/lib/slurm", "var/log/slurm")


def lab_site(nodes: Sequence[Entry], profiles: Mapping[str, Mapping[str, Any]] | None = None, **cluster: Any) -> str:
    """The Slurm lab's site: `nodes` on the lab network, every one in the default profile's
    munge, slurm and mpi overlays and partition batch unless `profiles` say otherwise;
    `cluster` adds cluster settings (users, slurm: {down_after: 6}...)."""
    return site_yaml(
        nodes,
        {"default": {"overlays": ["munge", "slurm", "mpi"], "partitions": ["batch"]}, **(profiles or {})},
        domain="lab.cluster",
        ports={"http": 8080},
        **cluster,
    )


def install_overlay(state: State, site: Site, inv: Inventory, node: str, dest: Path) -> None:
    """Build the node's overlay archive with provisioner's builder and unpack it into `dest`
    (modes, owners, symlinks as the node's initramfs lays them down)."""
    overlay_build.build(state, site, inv, [node_of(inv, node)])
    for e in overlay_build.read_archive(layout.overlay_archive(state, node)):
        out = dest / e.path
        out.parent.mkdir(parents=True, exist_ok=True)
        if stat.S_ISDIR(e.mode):
            out.mkdir(exist_ok=True)
        elif stat.S_ISLNK(e.mode):
            out.symlink_to(e.data.decode())
        else:
            out.write_bytes(e.data)
        if not stat.S_ISLNK(e.mode):
            os.chmod(out, stat.S_IMODE(e.mode))
        os.lchown(out, e.uid, e.gid)


class Host:
    """A hostname + mount namespace inside one of the lab's network namespaces."""

    def __init__(self, netns, name: str, work: Path, root: Path):
        self.name, self.work, self.root = name, work, root
        priv = work / "priv"
        for d, (owner, mode) in PRIVATE.items():
            (priv / d).mkdir(parents=True, exist_ok=True)
            os.chown(priv / d, pwd.getpwnam(owner).pw_uid, pwd.getpwnam(owner).pw_gid)
            os.chmod(priv / d, mode)
        script = ["set -e", f"hostname {name}"]
        for top in sorted(p.name for p in root.iterdir() if p.is_dir()):
            script.append(f"mount -t overlay overlay -o ro,lowerdir={root / top}:/{top} /{top}")
        # The private /tmp would hide a checkout (and its venv) that lives under /tmp, as a CI
        # clone may: carry it into the private /tmp (the recursive bind below keeps it).
        if REPO.is_relative_to("/tmp"):
            keep = priv / "tmp" / REPO.relative_to("/tmp")
            script += [f"mkdir -p {keep}", f"mount --bind {REPO} {keep}"]
        script += [f"mount --rbind {priv / d} /{d}" for d in BINDS]
        script += ["echo ready", "exec sleep infinity"]
        self.holder = netns.popen(
            ["unshare", "--uts", "--mount", "--propagation", "private", "--", "sh", "-c", "\n".join(script)]
        )
        line = self.holder.stdout.readline().decode()
        if line.strip() != "ready":
            raise RuntimeError(f"{name}: namespace setup failed: {line}{self.holder.stdout.read().decode()}")

    def prefix(self, cmd: Sequence[str]) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "--net", "--uts", "--mount", "--", *cmd]

    def run(
        self, cmd: Sequence[str] | str, check: bool = True, timeout: float = 60, **kw
    ) -> subprocess.CompletedProcess:
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        res = subprocess.run(self.prefix(cmd), capture_output=True, text=True, timeout=timeout, **kw)
        if check and res.returncode != 0:
            raise AssertionError(f"{self.name}: {' '.join(cmd)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
        return res

    def popen(self, cmd: Sequence[str] | str, log: str) -> subprocess.Popen:
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        with open(self.work / log, "ab") as out:
            return subprocess.Popen(self.prefix(cmd), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def start_munge(self) -> None:
        """As munge.service does: munged as user munge, forking, socket in /run/munge."""
        self.run(["setpriv", "--reuid=munge", "--regid=munge", "--init-groups", "/usr/sbin/munged"])

    def log(self, rel: str) -> str:
        p = self.work / "priv" / rel
        return p.read_text(errors="replace") if p.exists() else ""


def hosts_file(inv: Inventory) -> str:
    """What the base overlay gives every host: names resolve (MPICH and srun need it)."""
    s = inv.cluster.slurm
    lines = ["127.0.0.1 localhost", f"{s.address} {s.controller}"]
    lines += [f"{n.ip} {n.name}" for n in inv.nodes if n.ip]
    return "\n".join(lines) + "\n"


class SlurmLab:
    """slurmctld + munged on `lab.server`; nodes added with `node()`; facts received over HTTP."""

    def __init__(self, lab, inventory: Path, state: Path, work: Path, master_etc: Mapping[str, str] | None = None):
        self.lab, self.work = lab, work
        self.master_etc = dict(master_etc or {})  # files the controller sees in /etc (its passwd...)
        self.inv = load_inventory(inventory)
        self.state = State(state)
        self.db = NodeStateDB(self.state.db)
        self.conf_dir = work / "master" / "etc-slurm"
        self.conf_dir.mkdir(parents=True)
        secrets.munge_key(self.state)
        self.nodes: dict[str, Host] = {}
        self.slurmd: dict[str, subprocess.Popen] = {}
        root = self._root("master", None)
        self.ctl = Host(lab.server, self.inv.cluster.slurm.controller, work / "master", root)
        self.ctl.run(["mount", "--bind", str(self.conf_dir), "/etc/slurm"])
        self.ctl.start_munge()
        apply(render(self.inv, self.db.all_facts()), self.conf_dir, reconfigure=None)
        self.ctl.run(["sh", "-c", START_SLURMCTLD])
        self.wait(lambda: self.ctl.run(["scontrol", "ping"], check=False).stdout.count("UP") > 0, "slurmctld up")
        env = {"PROVISIONER_SITE": str(inventory.parent), "PROVISIONER_STATE": str(state)}
        self.env = env
        self.serve = self.ctl.popen(
            [
                "env",
                *(f"{k}={v}" for k, v in env.items()),
                PROVISIONER,
                "serve",
                "--services",
                "http",
                "--listen",
                str(self.inv.cluster.network.master),
            ],
            "serve.out",
        )
        self.watcher = self.ctl.popen(
            [
                "env",
                *(f"{k}={v}" for k, v in env.items()),
                PROVISIONER,
                "slurm",
                "apply",
                "--watch",
                "0.3",
                "--conf-dir",
                "/etc/slurm",
                "--restart-command",
                f"sh -c '{RESTART_SLURMCTLD}'",
            ],
            "watcher.out",
        )
        url = f"http://{self.inv.cluster.network.master}:{self.inv.cluster.ports.http}/metrics"
        self.wait(
            lambda: self.ctl.run(["curl", "-fs", "-o", "/dev/null", url], check=False).returncode == 0,
            "provisioner serve",
        )

    def _root(self, host: str, node: str | None) -> Path:
        """The host's layer over the real root: its overlay archive unpacked (the controller:
        the MUNGE key), plus /etc/hosts as a base overlay would give it."""
        root = self.work / host / "root"
        (root / "etc").mkdir(parents=True)
        if node is not None:
            install_overlay(self.state, Site(self.inv.path.parent), self.inv, node, root)
        else:
            key = root / "etc" / "munge" / "munge.key"
            key.parent.mkdir()
            key.write_bytes(secrets.munge_key(self.state))
            os.chmod(key, 0o400)
            os.chown(key, pwd.getpwnam("munge").pw_uid, pwd.getpwnam("munge").pw_gid)
            for name, text in self.master_etc.items():
                (root / "etc" / name).write_text(text)
        (root / "etc" / "hosts").write_text(hosts_file(self.inv))
        return root

    def node(self, name: str, munge_key: bytes | None = None) -> Host:
        """A node namespace with the node's rendered overlays (munge, slurm, mpi); a different
        `munge_key` replaces the rendered one (an intruder or a stale key)."""
        n = node_of(self.inv, name)
        ns = self.lab.host(ip=str(n.ip), mac=n.mac)
        root = self._root(name, name)
        if munge_key is not None:
            (root / "etc/munge/munge.key").write_bytes(munge_key)
        host = Host(ns, name, self.work / name, root)
        self.nodes[name] = host
        host.start_munge()
        return host

    def boot(self, name: str) -> Host:
        """A node as its units start it: munged, the facts report (Before=slurmd), slurmd."""
        host = self.node(name)
        self.report_facts(name)
        self.start_slurmd(name)
        return host

    def report_facts(self, name: str) -> None:
        """Run the node's facts script (as provisioner-facts.service does at boot)."""
        self.nodes[name].run(["/usr/local/sbin/provisioner-facts"])

    def post_facts(self, name: str, facts: Mapping[str, Any]) -> None:
        """`facts` sent from the node as its facts script would send them (a made-up report)."""
        url = f"http://{self.inv.cluster.network.master}:{self.inv.cluster.ports.http}/api/v1/facts"
        body = json.dumps(facts)
        headers = ("-H", "Content-Type: application/json")
        self.nodes[name].run([*NODE_CURL, "-fsS", "--local-port", "600-1023", *headers, "--data", body, url])

    def start_slurmd(self, name: str) -> None:
        """slurmd as the unit runs it: options from /etc/default/slurmd, restart on failure."""
        self.slurmd[name] = self.nodes[name].popen(
            ". /etc/default/slurmd; until slurmd -D -s $SLURMD_OPTIONS; do sleep 0.5; done", "slurmd.out"
        )

    def kill_slurmd(self, name: str, sig: int = signal.SIGKILL) -> None:
        """End the node's slurmd and the loop that restarts it, as a crash or a power cut would."""
        proc = self.slurmd.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=10)

    def provisioner(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """`provisioner ARGS` on the controller (where scontrol and sinfo reach slurmctld), on
        the lab's site and state, restarting slurmctld as the lab does."""
        return self.ctl.run(self.provisioner_cmd(*args), check=check, timeout=timeout)

    def provisioner_cmd(self, *args: str) -> list[str]:
        return ["env", *(f"{k}={v}" for k, v in self.env.items()), PROVISIONER, *args]

    def states(self) -> dict[str, str]:
        """Node -> state as sinfo shows it. A failing sinfo (slurmctld restarting) is asked again:
        an empty answer would pass for "the node is not there"."""
        deadline = time.time() + 15
        while True:
            res = self.ctl.run(SINFO, check=False)
            if res.returncode == 0:
                return dict(line.split() for line in res.stdout.splitlines() if line.strip())
            if time.time() > deadline:
                raise AssertionError(f"sinfo exited {res.returncode}: {res.stderr.strip()}")
            time.sleep(0.2)

    def show_node(self, name: str) -> dict[str, str]:
        """`scontrol show node NAME -o` as key -> value."""
        out = self.ctl.run(["scontrol", "-o", "show", "node", name], check=False).stdout
        return dict(w.split("=", 1) for w in out.split() if "=" in w)

    def settled_idle(self, names: Sequence[str]) -> bool:
        """Each node is idle, its facts are in slurm.conf, and no apply is in flight (its lock is
        free): the watcher's restart or reconfigure for them has ended and cannot change sinfo
        under a test (a restart's follow-up reconfigure can come after the nodes were idle once)."""
        with locked(self.conf_dir / ".provisioner"):
            conf = (self.conf_dir / "slurm.conf").read_text()
            return all(f"NodeName={n} CPUs=" in conf for n in names) and all(
                self.states().get(n) == "idle" for n in names
            )

    def wait_idle(self, names: Sequence[str], timeout: float = 90) -> None:
        self.wait(lambda: self.settled_idle(names), f"{names} idle, the watcher done", timeout)

    def wait(self, cond, what: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if cond():
                return
            time.sleep(0.2)
        tails = [
            f"--- slurmctld.log\n{self.ctl.log('var/log/slurm/slurmctld.log')[-2500:]}",
            f"--- watcher.out\n{(self.work / 'master' / 'watcher.out').read_text()[-1500:]}",
        ]
        tails += [f"--- {n}: slurmd.log\n{h.log('var/log/slurm/slurmd.log')[-1000:]}" for n, h in self.nodes.items()]
        sinfo = self.ctl.run(SINFO, check=False)
        raise AssertionError(
            f"timed out waiting for {what}; sinfo: {(sinfo.stdout + sinfo.stderr).strip()!r}\n" + "\n".join(tails)
        )


@contextlib.contextmanager
def slurm_cluster(site_text: str, master_etc: Mapping[str, str] | None = None) -> Iterator[SlurmLab]:
    """A controller for the site `site_text` (see lab_site) in a fresh lab (add nodes with `boot()`); every
    namespace, process and file is gone afterwards. The work dir is under /var/tmp, not /tmp:
    each node mounts its own /tmp. `master_etc` are /etc files the controller sees instead of
    the host's (a scratch passwd and group: the master's users)."""
    work = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="slurmlab-"))
    cluster_yaml = write_site(work / "site", site_text)
    lab = Lab()
    try:
        yield SlurmLab(lab, cluster_yaml, work / "state", work / "lab", master_etc)
    finally:
        lab.close()
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def booted_cluster(site_text: str, names: Sequence[str]) -> Iterator[SlurmLab]:
    """slurm_cluster with `names` booted and idle (a module fixture's whole body)."""
    if os.geteuid() != 0:
        pytest.fail("Slurm lab tests need root: run tests/run as root")
    with slurm_cluster(site_text) as sl:
        for name in names:
            sl.boot(name)
        sl.wait_idle(names)
        yield sl
