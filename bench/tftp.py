#!/usr/bin/env python3
"""TFTP throughput: provisioner's server against tftpd-hpa, same machine, same run.

A server namespace holds both servers (tftpd-hpa on port 69, ours on 6969) over the same
30 MB file; a client namespace runs 1, 20 and 100 concurrent curl clients (blksize 1468)
against each, then one atftp client with windowsize 16 against each (tftpd-hpa ignores the
option, so it serves its single lock-step stream). Prints seconds, MB/s and our ratio.
Runs alternate between the two servers and the best of --repeat runs counts, so a burst
of load from elsewhere on the machine does not decide the result.
Goals: >= 1.2x at 20 and 100 clients, >= 4x for the windowsize client. Also prints each
server's own CPU seconds (its cgroup) and the ratio of those (tftpd-hpa's over ours: the
bytes each CPU second of ours serves, relative), since the clients share the machine's two
cores and wall time alone measures them too. Needs root.

    .venv/bin/python bench/tftp.py [--size-mb 30] [--clients 1,20,100]
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

from netlab import Lab  # noqa: E402

OURS, HPA = 6969, 69


def wait_port(ns, port: int) -> None:
    for _ in range(100):
        if f":{port} " in ns.run(["ss", "-uln"]).stdout:
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listening on udp port {port}")


class CpuMeter:
    """CPU seconds used by a server and every process it forks (a cgroup v1 cpuacct group):
    the clients run on the same machine, so wall time alone also measures them."""

    ROOT = Path("/sys/fs/cgroup/cpuacct")

    def __init__(self, name: str, pids: list[int]):
        self.path = self.ROOT / f"bench-tftp-{os.getpid()}-{name}"
        self.path.mkdir()
        for pid in pids:
            (self.path / "cgroup.procs").write_text(str(pid))

    def seconds(self) -> float:
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def remove(self) -> None:
        self.path.rmdir()


def run_clients(client, cmd: str, n: int) -> float:
    """Wall time for n concurrent copies of a shell command (each must exit 0)."""
    script = f'for i in $(seq {n}); do ( {cmd} ) || echo FAIL & done; wait'
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
        hpa = lab.server.popen(["in.tftpd", "-L", "-u", "root", "-s", str(root), "-a", f"{srv}:{HPA}"],
                               stdout=subprocess.DEVNULL)
        wait_port(lab.server, HPA)
        ours = lab.server.popen([exe, "tftp", "--root", str(root), "--listen", srv, "--port", str(OURS)],
                                stdout=subprocess.DEVNULL)
        wait_port(lab.server, OURS)
        ours_pids = [p for p in lab.server.pids() if p != hpa.pid]
        if CpuMeter.ROOT.is_dir():
            meters.update({"tftpd-hpa": CpuMeter("hpa", [hpa.pid]), "provisioner": CpuMeter("ours", ours_pids)})
        check = client.run(["sh", "-c", f"curl -s tftp://{srv}:{OURS}/big.bin | sha256sum"]).stdout.split()[0]
        if check != digest:
            raise SystemExit("our server sent wrong bytes")
        mb = len(data) / 1e6
        rows = []

        def best(make_cmd, n: int) -> dict[str, tuple[float, float]]:
            """(wall s, server CPU s) of the fastest run per server."""
            out = {"tftpd-hpa": (float("inf"), 0.0), "provisioner": (float("inf"), 0.0)}
            for _ in range(args.repeat):
                for name, port in (("tftpd-hpa", HPA), ("provisioner", OURS)):
                    meter = meters.get(name)
                    cpu0 = meter.seconds() if meter else 0.0
                    wall = run_clients(client, make_cmd(port), n)
                    cpu = meter.seconds() - cpu0 if meter else float("nan")
                    out[name] = min(out[name], (wall, cpu))
            return out

        def curl(port: int) -> str:
            return f"curl -sf --tftp-blksize 1468 -o /dev/null tftp://{srv}:{port}/big.bin"

        def atftp(port: int) -> str:
            return (f"atftp --option 'windowsize 16' --option 'blksize 1468' -g -r big.bin "
                    f"-l /dev/null {srv} {port} >/dev/null 2>&1")

        for n in [int(x) for x in args.clients.split(",")]:
            rows.append((f"curl x{n}", best(curl, n), n * mb))
        rows.append(("atftp windowsize 16", best(atftp, 1), mb))
        print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; best of {args.repeat}")
        print(f"{'run':22} {'tftpd-hpa s':>12} {'ours s':>8} {'hpa MB/s':>9} {'ours MB/s':>10} {'ratio':>6}"
              f" {'hpa cpu s':>10} {'ours cpu s':>11} {'cpu ratio':>10}")
        for label, t, total in rows:
            (h, hcpu), (o, ocpu) = t["tftpd-hpa"], t["provisioner"]
            print(f"{label:22} {h:12.2f} {o:8.2f} {total / h:9.1f} {total / o:10.1f} {h / o:5.2f}x"
                  f" {hcpu:10.2f} {ocpu:11.2f} {hcpu / ocpu if ocpu else float('nan'):9.2f}x")


if __name__ == "__main__":
    main()
