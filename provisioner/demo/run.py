"""The demo, stage by stage: build, network, master daemons, virtual nodes, Slurm.

Every stage prints what it does and how long it took; a failing stage raises DemoFailure
naming itself with the relevant log lines. Everything started is stopped and removed at the
end, success or not; the work directory (site, state, logs, image cache) stays for a look.
"""

from __future__ import annotations

import functools
import os
import pwd
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..actions.context import Context
from ..actions.images import build_image
from ..actions.nfs import nfs_exports
from ..actions.overlays import build_overlays
from ..actions.slurm import apply_slurm
from ..artifacts import bootloaders, secrets
from ..artifacts.images import versions
from ..artifacts.initramfs import build_initramfs
from ..inventory import Inventory
from ..nodestate import NodeStateDB
from ..paths import Site, State
from . import rollout as demo_rollout
from . import services as demo_services
from . import site as demo_site
from .host import MasterHost
from .netns import DemoNet
from .procs import PROVISIONER, DemoFailure, Supervisor
from .qemu import Guest, Nic
from .runtime import RuntimeCheck

IMAGE_CACHE = Path("/var/cache/provisioner/images")
# slurmctld daemonizes as its unit runs it; `slurm apply` restarts it by the pid file in the
# master's private /run (a name-based kill would hit every slurmctld on this machine).
START_SLURMCTLD = "slurmctld </dev/null >/dev/null 2>&1"
RESTART_SLURMCTLD = (
    "pid=$(cat /run/slurmctld.pid); kill $pid; while kill -0 $pid 2>/dev/null; do sleep 0.1; done; " + START_SLURMCTLD
)
# One job step on every node at once (srun -l labels its lines by task): what the default image
# set promises, OpenMPI as `mpirun` and MPICH, and the machine ID, which must differ between
# nodes sharing one root. Shell builtins but for the two MPI commands: every fork is slow
# under TCG. sshd is checked from the master meanwhile (ssh-keyscan, see check_nodes).
NODE_CHECK = """read -r n < /proc/sys/kernel/hostname; read -r mid < /etc/machine-id
o=$(mpirun --version 2>&1); m=$(mpichversion 2>&1)
printf '%s\\n' "host $n" "machine-id $mid" "$o" "$m"
"""


# The default `Demo.echo`: progress lines appear as they happen, even through a pipe.
PRINT: Callable[[str], None] = functools.partial(print, flush=True)


@dataclass
class Demo:
    work: Path
    nodes: int = 1
    unlisted: int = 0  # guests whose MACs no node entry names: they join under cluster.discovery
    discovery: str = "auto"  # its mode
    timeout: float = 600
    mirror: str | None = None
    kernel_args: tuple[str, ...] = ()
    reboot: bool = False  # guests reboot (and PXE-boot again) instead of exiting: rollouts
    rollout: bool = False  # at the end, the rollouts of demo/rollout.py (guests then reboot)
    echo: Callable[[str], None] = PRINT
    t0: float = field(default_factory=time.monotonic)
    sup: Supervisor = field(init=False)
    net: DemoNet | None = None
    master: MasterHost | None = None
    # Wall-clock marks of this run (for bench/boot.py): guests started, every node idle.
    booted_at: float = 0.0
    idle_at: float = 0.0

    def __post_init__(self) -> None:
        self.site = Site(self.work / "site")
        self.state = State(self.work / "state")
        # The demo does what the CLI does, through the same actions (facts, build metrics).
        self.ctx = Context(self.site, self.state)
        self.logs = self.work / "logs"
        self.sup = Supervisor(self.logs)
        self.unlisted_macs = [demo_site.unlisted_mac(i) for i in range(1, self.unlisted + 1)]
        self.hosts = self.work / "master" / "hosts"
        if self.rollout:
            self.reboot = True
            self.kernel_args = (*self.kernel_args, demo_rollout.RETRY_ARG)

    # -- output ----------------------------------------------------------------------------------
    def say(self, stage: str, message: str) -> None:
        self.echo(f"[{time.monotonic() - self.t0:6.1f}s] {stage:<10} {message}")

    def stage(self, name: str, message: str, fn: Callable[[], object]) -> object:
        self.say(name, message)
        started = time.monotonic()
        try:
            result = fn()
        except Exception as e:  # every stage failure is reported with its stage name
            raise DemoFailure(f"stage {name} failed: {e}") from e
        self.say(name, f"done in {time.monotonic() - started:.1f} s")
        return result

    # -- build -------------------------------------------------------------------------------------
    def write_site(self) -> Inventory:
        home = self.work / "home"
        home.mkdir(parents=True, exist_ok=True)
        self.site.root.mkdir(parents=True, exist_ok=True)
        accounts = demo_services.write_accounts(self.work / "accounts", home)
        self.site.cluster_yaml.write_text(
            demo_site.cluster_yaml(self.nodes, str(home), self.kernel_args, self.discovery, str(accounts))
        )
        return self.ctx.inventory()

    def build_image(self) -> None:
        wanted = sorted(demo_site.IMAGE_PACKAGES)
        current = [v for v in versions(self.state, demo_site.IMAGE) if v.current]
        if current and current[0].meta.get("packages") == wanted:
            self.say("image", f"{demo_site.IMAGE} {current[0].version} is up to date")
            # Cheap and deterministic: picks up changes to the initramfs runtime (initcpio/).
            build_initramfs(self.state, demo_site.IMAGE)
            return
        switch = build_image(
            self.ctx,
            demo_site.IMAGE,
            packages=demo_site.IMAGE_PACKAGES,
            mirror=self.mirror,
            cache_dir=IMAGE_CACHE,
            progress=lambda m: self.say("image", m),
        )
        switch.check()
        if switch.message:
            self.say("image", switch.message)

    def build_artifacts(self) -> None:
        bootloaders.install(self.state)
        report = build_overlays(self.ctx)
        self.say("overlays", f"built {len(report.built)}, unchanged {len(report.unchanged)}")

    # -- master side ---------------------------------------------------------------------------------
    def start_network(self) -> None:
        self.net = DemoNet(f"pvdemo{os.getpid()}", demo_site.MASTER)
        self.net.create()

    def start_master(self, inv: Inventory) -> None:
        assert self.net is not None
        mwork = self.work / "master"
        # slurmctld's saved state (jobs, node states) from an earlier run would only confuse this one.
        shutil.rmtree(mwork, ignore_errors=True)
        conf = mwork / "etc-slurm"
        conf.mkdir(parents=True, exist_ok=True)
        apply_slurm(self.ctx, conf, reconfigure=None)
        self.write_hosts(inv)
        tables = demo_services.master_tables(Path(inv.cluster.users.root), mwork / "etc")
        self.master = MasterHost(
            self.net, inv.cluster.slurm.controller, mwork, {"etc/slurm": conf, "etc/hosts": self.hosts, **tables}
        )
        key = self.master.priv / "etc/munge/munge.key"
        key.write_bytes(secrets.munge_key(self.state))
        munge = pwd.getpwnam("munge")
        os.chown(key, munge.pw_uid, munge.pw_gid)
        os.chmod(key, 0o400)
        m = self.master
        self.sup.start(
            "munged",
            m.enter(["setpriv", "--reuid=munge", "--regid=munge", "--init-groups", "/usr/sbin/munged", "--foreground"]),
            ready=lambda: (m.priv / "run/munge/munge.socket.2").exists(),
            timeout=20,
        )
        self.start_nfs()
        env = {"PROVISIONER_SITE": str(self.site.root), "PROVISIONER_STATE": str(self.state.root)}
        started = m.run(["sh", "-c", START_SLURMCTLD])
        if started.returncode != 0:
            raise DemoFailure(f"slurmctld did not start:\n{self.tail(self.slurmctld_log)}")
        self.sup.wait_for(
            "slurmctld", lambda: "UP" in m.run(["scontrol", "ping"]).stdout, 30, lambda: self.tail(self.slurmctld_log)
        )
        self.start_serve()
        self.sup.start(
            "slurm-apply",
            m.enter(
                [
                    PROVISIONER,
                    "slurm",
                    "apply",
                    "--watch",
                    "1",
                    "--conf-dir",
                    "/etc/slurm",
                    "--restart-command",
                    f"sh -c '{RESTART_SLURMCTLD}'",
                ]
            ),
            env=env,
        )

    def start_serve(self) -> None:
        assert self.master is not None
        env = {"PROVISIONER_SITE": str(self.site.root), "PROVISIONER_STATE": str(self.state.root)}
        self.sup.start(
            "serve",
            self.master.enter([PROVISIONER, "serve", "--interface", "br0", "--slurm-interval", "1"]),
            env=env,
            ready=r"ready.*services=",
            timeout=30,
        )

    def write_hosts(self, inv: Inventory) -> None:
        """The master's /etc/hosts (bind-mounted: rewritten in place as nodes join)."""
        self.hosts.write_text(
            "127.0.0.1 localhost\n"
            + f"{inv.cluster.slurm.address} {inv.cluster.slurm.controller}\n"
            + "".join(f"{n.ip} {n.name}\n" for n in inv.nodes)
        )

    def start_nfs(self) -> None:
        assert self.net is not None
        gw = self.work / "ganesha"
        (gw / "recovery").mkdir(parents=True, exist_ok=True)
        conf = gw / "ganesha.conf"
        conf.write_text(nfs_exports(self.ctx, "ganesha", gw / "recovery"))
        log = gw / "ganesha.log"
        script = (
            "mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -p /run/ganesha && "
            f"exec ganesha.nfsd -F -f {conf} -L {log} -p /run/ganesha/pid -N NIV_EVENT"
        )
        self.sup.start(
            "nfs",
            self.net.enter(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script]),
            ready=lambda: log.exists() and "NFS SERVER INITIALIZED" in log.read_text(errors="replace"),
            timeout=40,
        )

    # -- nodes -------------------------------------------------------------------------------------
    def guests(self, inv: Inventory) -> dict[str, str]:
        """Console name -> MAC of every guest: the listed nodes by name, then the unlisted."""
        listed = {n.name: n.mac for n in inv.nodes if n.mac is not None and n.mac not in self.unlisted_macs}
        return listed | {f"unlisted{i}": mac for i, mac in enumerate(self.unlisted_macs, 1)}

    def boot_vms(self, inv: Inventory) -> None:
        self.booted_at = time.time()
        for name, mac in self.guests(inv).items():
            self.boot_guest(name, mac)

    def boot_guest(self, name: str, mac: str) -> None:
        """One guest on a tap of its own; its console goes to logs/NAME-console.log."""
        assert self.net is not None
        tap = self.net.add_tap()
        console = self.logs / f"{name}-console.log"
        guest = Guest(
            Nic(tap, mac),
            memory_mb=1024,
            serial=console,
            uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, mac)),
            no_reboot=not self.reboot,
        )
        self.sup.start(f"qemu-{name}", self.net.enter(guest.argv()))

    def joined(self, inv: Inventory) -> list[str]:
        """The listed nodes and the unlisted guests adopted so far, by node name."""
        adopted = (inv.by_mac(mac) for mac in self.unlisted_macs)
        return [n.name for n in inv.nodes if n.mac not in self.unlisted_macs] + [n.name for n in adopted if n]

    def wait_idle(self, inv: Inventory) -> Inventory:
        """Wait until every guest is an idle Slurm node (the unlisted ones once adopted);
        returns the inventory as it is then."""
        db = NodeStateDB(self.state.db)
        seen: dict[str, int] = {}
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            inv = self.ctx.fresh().inventory() if self.unlisted_macs else inv
            names = self.joined(inv)
            for name in names:
                events = db.timeline(name)
                if name not in seen:  # earlier runs' events stay in the database; show this run's only
                    seen[name] = sum(1 for ev in events if ev["at"] < self.booted_at)
                    node = inv.node(name)
                    if node is not None and node.mac in self.unlisted_macs:
                        self.say("join", f"{node.mac}, in no node entry, adopted as {name} ({node.ip})")
                        self.write_hosts(inv)
                for ev in events[seen[name] :]:
                    detail = f" ({ev['detail']})" if ev["detail"] else ""
                    self.say("boot", f"{name}: {ev['stage']}{detail}")
                seen[name] = len(events)
            states = self.sinfo()
            if len(names) == len(self.guests(inv)) and all(states.get(n) == "idle" for n in names):
                self.idle_at = time.time()
                return inv
            for proc in self.sup.procs:
                if proc.popen.poll() is not None and proc.name != "slurm-apply":
                    raise DemoFailure(f"{proc.name} exited with status {proc.popen.returncode}:\n{proc.tail()}")
            time.sleep(1)
        last = {n: events[-1]["stage"] if (events := db.timeline(n)) else "none" for n in self.joined(inv)}
        waiting = [mac for mac in self.unlisted_macs if inv.by_mac(mac) is None]
        consoles = "\n".join(f"{n} console:\n{self.tail(self.logs / f'{n}-console.log')}" for n in self.guests(inv))
        raise DemoFailure(
            f"nodes not idle after {self.timeout:.0f} s; last stages {last}; not adopted {waiting}; "
            f"sinfo {self.sinfo()}\n{consoles}\nserve log:\n{self.tail(self.logs / 'serve.log')}\n"
            f"slurmctld log:\n{self.tail(self.slurmctld_log)}"
        )

    def boot_cluster(self) -> Inventory:
        """Site, image, artifacts, network, master daemons, guests, until every node is idle
        (the caller runs `cleanup`, also when this fails); the inventory then."""
        inv = self.write_site()
        self.build_image()
        self.build_artifacts()
        self.start_network()
        self.start_master(inv)
        self.boot_vms(inv)
        return self.wait_idle(inv)

    @property
    def slurmctld_log(self) -> Path:
        assert self.master is not None
        return self.master.priv / "var/log/slurm/slurmctld.log"

    def sinfo(self) -> dict[str, str]:
        assert self.master is not None
        out = self.master.run(["sinfo", "-N", "-h", "-o", "%N %T"]).stdout
        return dict(line.split()[:2] for line in out.splitlines() if len(line.split()) >= 2)

    def srun(self, inv: Inventory) -> None:
        assert self.master is not None
        for node in inv.nodes:
            res = self.master.run(["srun", "-w", node.name, "hostname"], timeout=240)
            got = res.stdout.strip()
            if res.returncode != 0 or got != node.name:
                raise DemoFailure(
                    f"srun -w {node.name} hostname printed {got!r} (exit {res.returncode}):\n{res.stderr}"
                )
            self.say("slurm", f"srun -w {node.name} hostname -> {got}")

    def check_nodes(self, inv: Inventory) -> None:
        """What the default image set promises, on the booted nodes: one srun finds OpenMPI
        (`mpirun`) and MPICH and each node's machine ID; meanwhile ssh-keyscan from the master
        finds each node's sshd serving the node's own host key (the ssh overlay's, not one
        baked into the shared image)."""
        assert self.master is not None
        names = {n.name: str(n.ip) for n in inv.nodes}
        scan = subprocess.Popen(
            self.master.enter(["ssh-keyscan", "-T", "30", "-t", "ed25519", *names.values()]),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            res = self.master.run(
                [
                    "srun",
                    "-l",
                    "--mpi=none",
                    "-N",
                    str(len(names)),
                    "--ntasks-per-node=1",
                    "-w",
                    ",".join(names),
                    "sh",
                    "-c",
                    NODE_CHECK,
                ],
                timeout=240,
            )
            offered = {}
            for line in scan.communicate(timeout=60)[0].splitlines():
                if not line.startswith("#") and len(line.split()) >= 3:
                    addr, ktype, key = line.split()[:3]
                    offered[addr] = f"{ktype} {key}"
        finally:
            if scan.poll() is None:
                scan.kill()
                scan.wait()
        tasks: dict[str, list[str]] = {}
        for line in res.stdout.splitlines():
            m = re.match(r"\s*(\d+): ?(.*)", line)
            if m:
                tasks.setdefault(m.group(1), []).append(m.group(2))
        got: dict[str, dict[str, str]] = {}
        for lines in tasks.values():
            text = "\n".join(lines)
            host = re.search(r"^host (\S+)", text, re.M)
            found = {
                "machine-id": re.search(r"^machine-id ?(.*)", text, re.M),
                "openmpi": re.search(r"^mpirun \(Open MPI\) (\S+)", text, re.M),
                "mpich": re.search(r"^MPICH Version:\s*(\S+)", text, re.M),
            }
            if host:
                got[host.group(1)] = {k: m.group(1).strip() for k, m in found.items() if m}
        problems = []
        for name, ip in names.items():
            facts = got.get(name, {})
            own = secrets.read_secret(self.state, f"{secrets.node_ssh_dir(name)}/ssh_host_ed25519_key.pub")
            mid = facts.get("machine-id", "")
            if not facts.get("openmpi"):
                problems.append(f"{name}: mpirun is not Open MPI (mpirun --version)")
            if not facts.get("mpich"):
                problems.append(f"{name}: no MPICH (mpichversion)")
            if offered.get(ip) != " ".join(own.decode().split()[:2]):
                problems.append(
                    f"{name}: sshd on {ip} offers {offered.get(ip, 'no ed25519 host key')!r}, not the node's own"
                )
            if not re.fullmatch(r"[0-9a-f]{32}", mid) or any(got[n].get("machine-id") == mid for n in got if n != name):
                problems.append(f"{name}: machine-id {mid!r} is not its own")
        if res.returncode != 0 or problems:
            raise DemoFailure(
                f"node check (srun exit {res.returncode}): {'; '.join(problems) or 'see output'}\n"
                f"{res.stdout}{res.stderr}"
            )
        for name, facts in got.items():
            self.say(
                "check",
                f"{name}: Open MPI {facts['openmpi']}, MPICH {facts['mpich']}, sshd with its own "
                f"host key, machine-id {facts['machine-id'][:8]}...",
            )

    def check_runtime(self, inv: Inventory) -> None:
        """Overlay edits reach a running node with no reboot, safely (runtime.py)."""
        RuntimeCheck(self, inv.nodes[0].name).run()

    def start_services(self) -> None:
        assert self.master is not None
        demo_services.start(self.ctx, self.master, self.sup, lambda m: self.say("services", m))

    def check_services(self, inv: Inventory) -> None:
        assert self.master is not None
        demo_services.check(self.ctx, self.master, inv, lambda m: self.say("check", m))

    @staticmethod
    def tail(path: Path, lines: int = 30) -> str:
        try:
            return "\n".join("    " + ln for ln in path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "    (no log)"

    # -- whole run -------------------------------------------------------------------------------
    def run(self, boot: bool = True) -> None:
        inv = self.stage("site", f"writing {self.site.cluster_yaml}", self.write_site)
        assert isinstance(inv, Inventory)
        if not boot:
            subprocess.run([PROVISIONER, "--site", str(self.site.root), "--state", str(self.state.root), "plan"])
            return
        self.stage("image", f"image {demo_site.IMAGE} (debootstrap, cached in {IMAGE_CACHE})", self.build_image)
        self.stage("overlays", "bootloaders, secrets, overlays and boot configs", self.build_artifacts)
        try:
            self.stage("network", "namespace with bridge br0 and a tap per node", self.start_network)
            self.stage("master", "munged, nfs-ganesha, slurmctld, provisioner serve", lambda: self.start_master(inv))
            self.stage("services", "configure all: dnsmasq, chronyd, rsyslogd", self.start_services)
            guests = len(self.guests(inv))
            unlisted = f", {self.unlisted} of them in no node entry" if self.unlisted else ""
            self.stage(
                "boot", f"qemu (TCG) x{guests}{unlisted}, PXE with the stock iPXE ROM", lambda: self.boot_vms(inv)
            )
            joined = self.stage("join", "waiting for sinfo to show every node idle", lambda: self.wait_idle(inv))
            assert isinstance(joined, Inventory)
            self.stage("slurm", "srun on each node", lambda: self.srun(joined))
            self.stage(
                "check",
                "one srun on every node (OpenMPI, MPICH, machine-id); ssh-keyscan each sshd",
                lambda: self.check_nodes(joined),
            )
            self.stage(
                "services",
                "from each node: DNS, NTP, logs through the master; the demo user",
                lambda: self.check_services(joined),
            )
            self.stage(
                "runtime",
                "overlay edits reach a running node: drop, reload, hand edit, bad archives, master away",
                lambda: self.check_runtime(joined),
            )
            if self.rollout:
                names = [n.name for n in joined.nodes]
                self.stage(
                    "rollout",
                    "v2 over every node through Slurm reboots, then a broken v3 with a canary",
                    lambda: demo_rollout.show(self, demo_site.IMAGE, names),
                )
            for node in joined.nodes:
                subprocess.run(
                    [
                        PROVISIONER,
                        "--site",
                        str(self.site.root),
                        "--state",
                        str(self.state.root),
                        "status",
                        node.name,
                        "--timeline",
                    ]
                )
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        self.sup.stop_all()
        if self.master:
            self.master.stop()
        if self.net:
            self.net.destroy()
        self.say("cleanup", "stopped every process, removed the namespace")
