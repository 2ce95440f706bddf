#!/usr/bin/env python3
"""TFTP throughput: provisioner's server against tftpd-hpa, same machine, same run.

A server namespace holds both servers (tftpd-hpa on port 69, ours on 6969) over the same
30 MB file; a client namespace runs 1, 20 and 100 concurrent curl clients (blksize 1468)
against each, then one atftp client with windowsize 16 against each (tftpd-hpa ignores the
option, so it serves its single lock-step stream). Prints seconds, MB/s and our ratio.
Runs alternate between the two servers and the best of --repeat runs counts, so a burst
of load from elsewhere on the machine does not decide the result.
Goals: >= 1.2x at 20 and 100 clients, >= 4x for the windowsize client.

The clients share the machine's cores with the servers, so wall time measures them too. Each
server and each run's clients get a cgroup of their own, and the script prints the CPU
seconds of both and two derived ratios: "cpu" (tftpd-hpa's server CPU over ours: bytes per
CPU second, relative) and "ceiling", (clients + tftpd-hpa) / clients of the tftpd-hpa run, the
best ratio any server could reach here: one that cost no CPU at all. In lock-step (curl) a
block costs client time plus server time, serially for one client and on saturated cores
for many, so wall time follows their sum.

--floor adds a third server, bench/tftp_floor.c (compiled with gcc): the same shape as ours
(a process per CPU, epoll, a socket per transfer) in a hundred lines of C with no loss handling.
Its ratio is what the kernel and the clients leave to any server of that shape on this
machine: the part of a gap that is ours, and the part that is the machine's. Needs root.

    .venv/bin/python bench/tftp.py [--size-mb 30] [--clients 1,20,100] [--floor]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from labs.net import Lab  # noqa: E402

OURS, HPA, FLOOR = 6969, 69, 6970


def wait_port(ns, port: int) -> None:
    for _ in range(100):
        if f":{port} " in ns.run(["ss", "-uln"]).stdout:
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listening on udp port {port}")


class CpuMeter:
    """CPU seconds used by a group of processes and everything they fork (a cgroup v1
    cpuacct group)."""

    ROOT = Path("/sys/fs/cgroup/cpuacct")

    def __init__(self, name: str, pids: list[int]):
        self.path = self.ROOT / f"bench-tftp-{os.getpid()}-{name}"
        self.path.mkdir()
        for pid in pids:
            (self.path / "cgroup.procs").write_text(str(pid))

    def join(self) -> str:
        """A shell line that moves the shell running it (and what it starts) into the group."""
        return f"echo $$ > {self.path}/cgroup.procs"

    def seconds(self) -> float:
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def remove(self) -> None:
        self.path.rmdir()


def run_clients(client, cmd: str, n: int, meter: CpuMeter | None) -> float:
    """Wall time for n concurrent copies of a shell command (each must exit 0)."""
    script = f"for i in $(seq {n}); do ( {cmd} ) || echo FAIL & done; wait"
    if meter is not None:
        script = f"{meter.join()}; {script}"
    t0 = time.monotonic()
    out = client.run(["sh", "-c", script], timeout=1800).stdout
    dt = time.monotonic() - t0
    if "FAIL" in out:
        raise SystemExit(f"a client failed: {cmd}\n{out}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=30)
    ap.add_argument("--clients", default="1,20,100")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--floor", action="store_true", help="also run bench/tftp_floor.c, a minimal C server")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    exe = shutil.which("provisioner") or str(Path(sys.executable).parent / "provisioner")
    meters: dict[str, CpuMeter] = {}
    try:
        measure(args, exe, meters)
    finally:  # the lab (and every server in it) is gone by now: the groups are empty
        for meter in meters.values():
            meter.remove()


def measure(args: argparse.Namespace, exe: str, meters: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp, Lab(subnet="10.98.0.0/24") as lab:
        root = Path(tmp) / "root"
        root.mkdir()
        data = os.urandom(args.size_mb << 20)
        (root / "big.bin").write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        os.chmod(tmp, 0o755)
        client = lab.host(ip="10.98.0.2")
        srv = lab.server_ip
        hpa = lab.server.popen(
            ["in.tftpd", "-L", "-u", "root", "-s", str(root), "-a", f"{srv}:{HPA}"], stdout=subprocess.DEVNULL
        )
        wait_port(lab.server, HPA)
        lab.server.popen(
            [exe, "tftp", "--root", str(root), "--listen", srv, "--port", str(OURS)], stdout=subprocess.DEVNULL
        )
        wait_port(lab.server, OURS)
        ours_pids = [p for p in lab.server.pids() if p != hpa.pid]
        servers = {"tftpd-hpa": HPA, "provisioner": OURS}
        if args.floor:
            floor = Path(tmp) / "tftp_floor"
            subprocess.run(["gcc", "-O2", "-o", str(floor), str(REPO / "bench" / "tftp_floor.c")], check=True)
            lab.server.popen([str(floor), srv, str(FLOOR), str(root)], stdout=subprocess.DEVNULL)
            wait_port(lab.server, FLOOR)
            servers["floor"] = FLOOR
        if CpuMeter.ROOT.is_dir():
            meters.update(
                {
                    "tftpd-hpa": CpuMeter("hpa", [hpa.pid]),
                    "provisioner": CpuMeter("ours", ours_pids),
                    "clients": CpuMeter("clients", []),
                }
            )
            if args.floor:
                meters["floor"] = CpuMeter("floor", [p for p in lab.server.pids() if p not in [*ours_pids, hpa.pid]])
        for name, port in servers.items():
            check = client.run(["sh", "-c", f"curl -s tftp://{srv}:{port}/big.bin | sha256sum"]).stdout.split()[0]
            if check != digest:
                raise SystemExit(f"{name} sent wrong bytes")
        mb = len(data) / 1e6
        rows = []

        def best(make_cmd, n: int) -> dict[str, tuple[float, float, float]]:
            """(wall s, server CPU s, clients' CPU s) of the fastest run per server."""
            nan = float("nan")
            out = {name: (float("inf"), nan, nan) for name in servers}
            clients = meters.get("clients")
            for _ in range(args.repeat):
                for name, port in servers.items():
                    meter = meters.get(name)
                    cpu0 = meter.seconds() if meter else 0.0
                    ccpu0 = clients.seconds() if clients else 0.0
                    wall = run_clients(client, make_cmd(port), n, clients)
                    cpu = meter.seconds() - cpu0 if meter else nan
                    ccpu = clients.seconds() - ccpu0 if clients else nan
                    out[name] = min(out[name], (wall, cpu, ccpu))
            return out

        def curl(port: int) -> str:
            return f"curl -sf --tftp-blksize 1468 -o /dev/null tftp://{srv}:{port}/big.bin"

        def atftp(port: int) -> str:
            return (
                f"atftp --option 'windowsize 16' --option 'blksize 1468' -g -r big.bin "
                f"-l /dev/null {srv} {port} >/dev/null 2>&1"
            )

        for n in [int(x) for x in args.clients.split(",")]:
            rows.append((f"curl x{n}", best(curl, n), n * mb))
        rows.append(("atftp windowsize 16", best(atftp, 1), mb))
        print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; best of {args.repeat}")
        print("seconds: wall, then CPU of the server and of the clients (hpa = tftpd-hpa)")
        print(
            f"{'run':20} {'hpa':>6} {'ours':>6} {'hpa MB/s':>9} {'ours MB/s':>9} {'ratio':>6} {'hpa cpu':>8}"
            f" {'ours cpu':>8} {'cpu':>6} {'clients hpa':>11} {'clients ours':>12} {'ceiling':>7}"
        )
        for label, t, total in rows:
            (h, hcpu, hcl), (o, ocpu, ocl) = t["tftpd-hpa"], t["provisioner"]
            cpu_ratio = hcpu / ocpu if ocpu else float("nan")
            ceiling = (hcl + hcpu) / hcl if hcl else float("nan")
            print(
                f"{label:20} {h:6.2f} {o:6.2f} {total / h:9.1f} {total / o:9.1f} {h / o:5.2f}x {hcpu:8.2f}"
                f" {ocpu:8.2f} {cpu_ratio:5.2f}x {hcl:11.2f} {ocl:12.2f} {ceiling:6.2f}x"
            )
        if args.floor:
            print("floor (bench/tftp_floor.c, lock-step only: its windowsize run is a single stream too)")
            print(f"{'run':20} {'hpa':>6} {'floor':>6} {'ratio':>6} {'cpu':>6} {'clients':>8}   ours / floor")
            for label, t, _ in rows:
                (h, hcpu, _), (f, fcpu, fcl), o = t["tftpd-hpa"], t["floor"], t["provisioner"][0]
                cpu_ratio = hcpu / fcpu if fcpu else float("nan")
                print(f"{label:20} {h:6.2f} {f:6.2f} {h / f:5.2f}x {cpu_ratio:5.2f}x {fcl:8.2f}   {f / o:5.2f}x")


if __name__ == "__main__":
    main()
