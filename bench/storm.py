#!/usr/bin/env python3
"""Boot storm: N simulated nodes boot at once through one `provisioner serve`, then through the
standard stack (dnsmasq for DHCP and TFTP with the same static hosts, nginx for the HTTP
files), in the same run, and the ratios are printed.

Each node (bench/storm_client.py) does what a real UEFI boot does: DHCP as the PXE ROM, the
boot file over TFTP, DHCP as iPXE, the iPXE script, kernel and initramfs over HTTP, DHCP as the
initramfs, then its secret overlay from its own address and a privileged port and its stage
and facts reports with its credential (the standard stack has no reports; it serves the overlay
as a plain file). Arrival patterns: all nodes at once, a ramp over --ramp seconds, and
(`--patterns relayed`) all at once with DHCP through --relays relay agents (giaddr; each
rack's switch relays, the answers come back unicast to it).

Sizes: the boot tree's real iPXE files, the host's Debian kernel (the image kernel) and an
initramfs of --initramfs-mb (the native one is ~2.7 MB); --scale shrinks kernel and initramfs
(the report says so) so 10,000 nodes fit a small machine's time. Setup that is not measured:
one real SSH key set hard-linked into every node (as bench/overlay_build.py).

    .venv/bin/python bench/storm.py [--nodes 1000] [--scale 1.0] [--ramp 30] [--patterns burst,ramp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from glob import glob
from ipaddress import IPv4Network
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

from bench.overlay_build import fake_secrets  # noqa: E402
from labs.net import Lab, terminate  # noqa: E402
from labs.site import node, site_yaml  # noqa: E402
from provisioner.artifacts import layout  # noqa: E402
from provisioner.inventory import load_inventory  # noqa: E402
from provisioner.paths import Site, State  # noqa: E402

SUBNET = IPv4Network("10.64.0.0/16")
SERVER = str(SUBNET[1])
CLIENT_IP = str(SUBNET[2])
FIRST_NODE = 256  # node addresses from 10.64.1.0
IMAGE = "storm"
HTTP_PORT = 8080
# The caps the standard stack is given below (dnsmasq tftp-max, nginx worker_connections): a site
# that boots thousands at once raises the defaults (1,000 and 1,024) so.
LIMITS = {"tftp_transfers": 10000, "http_connections": 20000}
STEPS = ("dhcp-pxe", "tftp", "dhcp-ipxe", "script", "kernel", "initramfs", "dhcp-initramfs", "overlay", "reports")


def mac_of(i: int) -> str:
    return f"52:54:{(i >> 24) & 255:02x}:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"


def make_site(root: Path, n: int, scale: float, initramfs_mb: float) -> tuple[Site, State, Path]:
    site, state = Site(root / "site"), State(root / "state")
    site.root.mkdir(parents=True)
    site.cluster_yaml.write_text(
        site_yaml(
            [node(f"node[00001-{n:05d}]", str(SUBNET[FIRST_NODE]), [mac_of(i) for i in range(1, n + 1)])],
            {"default": {"image": IMAGE, "overlays": ["base"]}},
            name="storm",
            subnet=str(SUBNET),
            ports={"http": HTTP_PORT},
            limits=LIMITS,
        )
    )
    version = state.root / "images" / IMAGE / "versions" / "v1"
    version.mkdir(parents=True)
    kernel = Path(sorted(glob("/boot/vmlinuz-*"))[-1]).read_bytes()
    (version / "vmlinuz").write_bytes(kernel[: max(4096, int(len(kernel) * scale))])
    (version / "initramfs.img").write_bytes(os.urandom(max(4096, int(initramfs_mb * scale * 1024 * 1024))))
    (state.root / "images" / IMAGE / "current").symlink_to("versions/v1")
    inv = load_inventory(site.cluster_yaml)
    fake_secrets(state, inv)
    exe = str(Path(sys.executable).parent / "provisioner")
    env = {**os.environ, "PROVISIONER_SITE": str(site.root), "PROVISIONER_STATE": str(state.root)}
    for cmd in (["boot", "install"], ["overlay", "build"]):
        subprocess.run([exe, *cmd], env=env, check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    nodes_file = root / "nodes.json"
    rows = []
    for nd in inv.nodes:
        iface = nd.interfaces[0]
        token = (layout.secrets_dir(state) / "credentials" / nd.name).read_text().strip()
        rows.append([nd.name, str(iface.ip), iface.mac, token])
    nodes_file.write_text(json.dumps(rows))
    return site, state, nodes_file


class Meter:
    """CPU seconds, peak memory and peak descriptors of a process tree, sampled every 0.2 s."""

    def __init__(self, roots: list[int]):
        self.roots = roots
        self.peak_rss = self.peak_fds = 0
        self.cpu = {pid: 0.0 for pid in roots}
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def tree(self) -> list[int]:
        parents: dict[int, list[int]] = {}
        for stat in glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
        out, todo = [], list(self.roots)
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(parents.get(pid, []))
        return out

    def sample(self) -> None:
        rss = fds = 0
        tick = os.sysconf("SC_CLK_TCK")
        for pid in self.tree():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                self.cpu[pid] = sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
                if pid not in self.names:
                    self.names[pid] = label(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))
                rss += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
                fds += len(os.listdir(f"/proc/{pid}/fd"))
            except (OSError, IndexError):
                continue
        self.peak_rss, self.peak_fds = max(self.peak_rss, rss), max(self.peak_fds, fds)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.sample()

    def __enter__(self) -> Meter:
        self.sample()
        self.start = dict(self.cpu)
        self.start_cpu = sum(self.cpu.values())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        self.seconds = sum(self.cpu.values()) - self.start_cpu

    def by_process(self) -> str:
        """CPU seconds by process kind during the storm (which one is the limit)."""
        kinds: dict[str, float] = {}
        for pid, cpu in self.cpu.items():
            name = self.names.get(pid, "?")
            kinds[name] = kinds.get(name, 0.0) + cpu - self.start.get(pid, 0.0)
        return ", ".join(f"{k} {v:.1f}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]) if v >= 0.05)


def label(argv: list[bytes]) -> str:
    """What a server process is: serve's service processes and TFTP workers by their role."""
    args = [a.decode(errors="replace") for a in argv if a]
    if "provisioner.servers.serve_child" in args:
        return args[args.index("provisioner.servers.serve_child") + 1]
    if "provisioner.servers.tftp_service" in args:
        return "tftp-worker"
    return Path(args[0].split()[0]).name.rstrip(":") if args else "?"  # "nginx: worker process"


class Profile:
    """py-spy (`pip install py-spy`) sampling every Python process of serve during a storm: the
    functions each spends its CPU in, by their own samples (idle threads not counted)."""

    def __init__(self, pids: list[int], root: Path):
        exe = Path(sys.executable).parent / "py-spy"
        self.runs = []
        for pid in pids:
            name = label(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))
            out = root / f"profile-{name}-{pid}.txt"
            cmd = [str(exe), "record", "-p", str(pid), "-r", "50", "-f", "raw", "-o", str(out), "--nonblocking"]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.runs.append((name, out, proc))

    def report(self, top: int = 6) -> None:
        """After serve stopped (py-spy writes its file when its process ends)."""
        for name, out, proc in self.runs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait()
            own: dict[str, int] = {}
            for line in out.read_text().splitlines() if out.exists() else []:
                stack, _, n = line.rpartition(" ")
                leaf = stack.rsplit(";", 1)[-1]
                leaf = leaf.split(" (")[0] + " (" + leaf.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
                own[leaf] = own.get(leaf, 0) + int(n)
            total = sum(own.values())
            if not total:
                continue
            best = sorted(own.items(), key=lambda kv: -kv[1])[:top]
            print(
                f"  {'':12} profile {name} ({total / 50:.0f} s busy): "
                + ", ".join(f"{f} {n / total:.0%}" for f, n in best)
            )


def wait_port(ns, proto: str, port: int, proc: subprocess.Popen, what: str) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited: {proc.stdout.read() if proc.stdout else ''}")
        if f":{port} " in ns.run(["ss", "-lnH" + ("u" if proto == "udp" else "t")]).stdout:
            return
        time.sleep(0.1)
    raise SystemExit(f"{what} never listened on {proto}/{port}")


def start_provisioner(lab, site: Site, state: State, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PROVISIONER_SITE": str(site.root), "PROVISIONER_STATE": str(state.root)}
    exe = str(Path(sys.executable).parent / "provisioner")
    proc = lab.server.popen([exe, "serve", "--listen", SERVER, "--log-level", "warning"], env=env, log=log)
    wait_port(lab.server, "tcp", HTTP_PORT, proc, "provisioner serve")
    wait_port(lab.server, "udp", 67, proc, "provisioner serve")
    return proc


def start_standard(lab, state: State, root: Path, nodes_file: Path) -> list[subprocess.Popen]:
    """dnsmasq (DHCP static hosts, PXE by client arch and iPXE user class, TFTP) and nginx,
    serving the same files at the same URLs."""
    rows = json.loads(nodes_file.read_text())
    www = root / "www"
    (www / "boot").mkdir(parents=True, exist_ok=True)
    (www / "overlays").mkdir(exist_ok=True)
    for name, _ip, mac, _token in rows:
        os.link(layout.ipxe_script(state, name), www / "boot" / f"{mac}.ipxe")
        os.link(layout.overlay_archive(state, name), www / "overlays" / f"{name}.cpio.gz")
    (www / "images").symlink_to(state.root / "images")
    hosts = root / "dhcp-hosts"
    hosts.write_text("".join(f"{mac},{ip},{name}\n" for name, ip, mac, _ in rows))
    tftp_root = layout.boot_dir(state)
    conf = root / "dnsmasq.conf"
    conf.write_text(
        f"""port=0
user=root
interface=br0
bind-interfaces
dhcp-range={SUBNET[FIRST_NODE]},static,{SUBNET.netmask}
dhcp-hostsfile={hosts}
dhcp-authoritative
dhcp-leasefile={root}/dnsmasq.leases
dhcp-match=set:efi64,option:client-arch,7
dhcp-userclass=set:ipxe,iPXE
dhcp-boot=tag:efi64,tag:!ipxe,snponly.efi,,{SERVER}
dhcp-boot=tag:ipxe,http://{SERVER}:{HTTP_PORT}/boot/${{mac}}.ipxe
dhcp-option=vendor:PXEClient,6,2b
enable-tftp
tftp-root={tftp_root}
tftp-max=10000
pid-file={root}/dnsmasq.pid
log-facility={root}/dnsmasq.log
"""
    )
    nginx = root / "nginx.conf"
    nginx.write_text(
        f"""worker_processes auto;
user root;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log warn;
events {{ worker_connections 20000; }}
worker_rlimit_nofile 40000;
http {{
    access_log off;
    sendfile on;
    keepalive_requests 1000;
    types {{ }}
    default_type application/octet-stream;
    client_body_temp_path {root}/nginx-tmp;
    server {{
        listen {SERVER}:{HTTP_PORT} backlog=4096;
        root {www};
    }}
}}
"""
    )
    (root / "nginx-tmp").mkdir(exist_ok=True)
    procs = [
        lab.server.popen(["dnsmasq", "-k", f"--conf-file={conf}"], log=root / "dnsmasq.out"),
        lab.server.popen(["nginx", "-c", str(nginx), "-g", "daemon off;"], log=root / "nginx.out"),
    ]
    wait_port(lab.server, "udp", 67, procs[0], "dnsmasq")
    wait_port(lab.server, "tcp", HTTP_PORT, procs[1], "nginx")
    return procs


def relay_addresses(n: int) -> list[str]:
    """The relay agents of a relayed storm (one per rack), at the top of the subnet: the
    inventory has one subnet, and DHCP answers a relay whose giaddr is in it."""
    return [str(SUBNET[-2 - k]) for k in range(n)]


def storm(
    client, root: Path, nodes_file: Path, full: bool, ramp: float, timeout: float, run: int, relays: list[str]
) -> dict:
    """One storm; `run` picks the nodes' privileged source port, so no run meets the last one's
    connections in TIME_WAIT; with `relays`, DHCP goes through those relay agents."""
    rows = json.loads(nodes_file.read_text())
    cfg = {
        "iface": "eth0",
        "server": SERVER,
        "http_port": HTTP_PORT,
        "ramp": ramp,
        "relays": relays,
        "port": 600 + run,
        "nodes": [[name, ip, mac, token if full else None] for name, ip, mac, token in rows],
    }
    path = root / f"storm-{'full' if full else 'std'}-{run}.json"
    path.write_text(json.dumps(cfg))
    res = client.run([sys.executable, "-P", str(HERE / "storm_client.py"), str(path)], timeout=timeout, check=False)
    if res.returncode != 0:
        raise SystemExit(f"the storm client failed:\n{res.stdout}{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def add_addresses(client, rows: list, relays: list[str]) -> None:
    """Every node's and relay agent's address on the client's one interface (`ip -batch`: one
    process, not N)."""
    batch = "".join(f"addr add {ip}/{SUBNET.prefixlen} dev eth0\n" for ip in [r[1] for r in rows] + relays)
    client.run(["ip", "-batch", "-"], input=batch)


def neighbours(ns, n: int) -> None:
    """The server's ARP table must hold every node (default gc_thresh3 is 1024)."""
    for i, v in (("1", n), ("2", 2 * n), ("3", 4 * n)):
        ns.run(["sysctl", "-qw", f"net.ipv4.neigh.default.gc_thresh{i}={max(v, 1024)}"], check=False)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def report(name: str, got: dict, meter: Meter) -> None:
    booted = got["booted"]
    print(
        f"  {name:12} booted {booted:6d}  failed {got['failed']:5d}  last node {got['last']:7.1f} s  "
        f"server CPU {meter.seconds / max(booted, 1) * 1000:6.1f} ms/node  "
        f"peak {meter.peak_rss / 2**20:6.0f} MB, {meter.peak_fds} fds, client CPU {got['client_cpu']:.0f} s"
    )
    print(f"  {'':12} CPU s by process: {meter.by_process()}")
    if got["failed"]:
        print(f"  {'':12} failures by step: {got['failures_by_step']}; e.g. {got['failures']}")
    steps = got["steps"]
    print(
        f"  {'':12} p50/p99 s: "
        + ", ".join(f"{s} {pct(steps[s], 0.5):.2f}/{pct(steps[s], 0.99):.2f}" for s in STEPS if s in steps)
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the real kernel and initramfs sizes")
    ap.add_argument("--initramfs-mb", type=float, default=2.7)
    ap.add_argument("--ramp", type=float, default=30.0, help="seconds the ramp pattern spreads the starts over")
    ap.add_argument("--patterns", default="burst,ramp", help="of burst, ramp, relayed (a burst through relay agents)")
    ap.add_argument("--relays", type=int, default=8, help="relay agents of the relayed pattern")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--profile", action="store_true", help="sample serve's processes with py-spy (pip install py-spy)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-storm-", dir="/var/tmp"))
    results: dict[tuple[str, str], dict] = {}
    try:
        t = time.monotonic()
        site, state, nodes_file = make_site(root, args.nodes, args.scale, args.initramfs_mb)
        rows = json.loads(nodes_file.read_text())
        kernel = (state.root / "images" / IMAGE / "versions/v1/vmlinuz").stat().st_size
        initrd = (state.root / "images" / IMAGE / "versions/v1/initramfs.img").stat().st_size
        print(
            f"storm: {args.nodes} nodes, kernel {kernel / 2**20:.1f} MB, initramfs {initrd / 2**20:.1f} MB"
            + (f" (scaled x{args.scale})" if args.scale != 1.0 else "")
            + f", boot file snponly.efi over TFTP; setup {time.monotonic() - t:.0f} s (not counted)"
        )
        with Lab(str(SUBNET)) as lab:
            client = lab.host(ip=CLIENT_IP)
            relays = relay_addresses(args.relays)
            add_addresses(client, rows, relays)
            neighbours(lab.server, args.nodes)
            for pattern in args.patterns.split(","):
                ramp = args.ramp if pattern == "ramp" else 0.0
                via = relays if pattern == "relayed" else []
                print(
                    f"{pattern}"
                    + (f" (starts spread over {ramp:.0f} s)" if ramp else " (all at once)")
                    + (f", DHCP through {len(via)} relay agents (giaddr)" if via else "")
                )
                proc = start_provisioner(lab, site, state, root / f"serve-{pattern}.log")
                profile = None
                try:
                    with Meter([proc.pid]) as meter:
                        if args.profile:
                            profile = Profile([p for p in meter.tree() if p != proc.pid], root)
                        got = results[(pattern, "provisioner")] = storm(
                            client, root, nodes_file, True, ramp, args.timeout, len(results), via
                        )
                finally:
                    terminate(proc, 30)
                report("provisioner", got, meter)
                if profile is not None:
                    profile.report()
                procs = start_standard(lab, state, root / f"std-{pattern}", nodes_file)
                try:
                    with Meter([p.pid for p in procs]) as meter:
                        std = results[(pattern, "standard")] = storm(
                            client, root, nodes_file, False, ramp, args.timeout, len(results), via
                        )
                finally:
                    for p in procs:
                        terminate(p, 30)
                report("dnsmasq+nginx", std, meter)
                if std["booted"] and got["booted"]:
                    print(
                        f"  ratio: provisioner takes {got['last'] / std['last']:.2f}x the standard stack's time "
                        f"for the last node (goal <= 0.8x); total boot p50 "
                        f"{statistics.median(got['totals']):.2f} s vs {statistics.median(std['totals']):.2f} s"
                    )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if all(r["failed"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
