#!/usr/bin/env python3
"""`provisioner power status` over many simulated BMCs with bounded fan-out, beside ipmitool
run in a shell loop over the same BMCs (goal: 1,000 BMCs in under 10 s).

Each BMC is one OpenIPMI ipmi_sim process on its own loopback port (RMCP+, user admin); the
site names one node per BMC and gives their password through a profile, as an admin would.
The time is that of the whole command, start-up and inventory included.

    .venv/bin/python bench/power.py [--bmcs 1000] [--fanout 64]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PASSWORD = "bench-Secret-42"
EMU = """mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
mc_enable 0x20
"""


def lan_conf(port: int) -> str:
    auths = "none md2 md5 straight"
    return f"""name "bench"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_callback {auths}
    allowed_auths_user {auths}
    allowed_auths_operator {auths}
    allowed_auths_admin {auths}
    guid a123456789abcdefa123456789abcdef
  endlan
  user 2 true "admin" "{PASSWORD}" admin 10 {auths}
"""


def start_bmcs(work: Path, count: int, first_port: int) -> list[subprocess.Popen]:
    (work / "sim.emu").write_text(EMU)
    procs = []
    for i in range(count):
        d = work / f"bmc{i}"
        (d / "state").mkdir(parents=True)
        (d / "lan.conf").write_text(lan_conf(first_port + i))
        procs.append(
            subprocess.Popen(
                ["ipmi_sim", "-c", str(d / "lan.conf"), "-f", str(work / "sim.emu"), "-s", str(d / "state"), "-n"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
    time.sleep(2)
    dead = [p for p in procs if p.poll() is not None]
    if dead:
        raise SystemExit(f"{len(dead)} ipmi_sim processes exited at start")
    return procs


def write_site(site: Path, count: int, first_port: int) -> None:
    nodes = [
        {"name": f"n{i:04d}", "ip": f"10.{80 + i // 60000}.{i // 250}.{i % 250 + 2}", "bmc": "127.0.0.1",
         "bmc_port": first_port + i, "profiles": ["rack"]}
        for i in range(count)
    ]  # fmt: skip
    doc = {
        "cluster": {"name": "bench", "network": {"subnet": "10.80.0.0/12"}},
        "profiles": {"rack": {"bmc_protocol": "ipmi", "bmc_user": "admin"}},
        "nodes": nodes,
    }
    site.mkdir(parents=True)
    (site / "cluster.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bmcs", type=int, default=1000)
    ap.add_argument("--fanout", type=int, default=64)
    ap.add_argument("--first-port", type=int, default=21000)
    args = ap.parse_args()
    exe = shutil.which("provisioner") or str(Path(sys.executable).with_name("provisioner"))
    work = Path(tempfile.mkdtemp(prefix="bmc-bench-power-"))
    procs: list[subprocess.Popen] = []
    try:
        procs = start_bmcs(work, args.bmcs, args.first_port)
        write_site(work / "site", args.bmcs, args.first_port)
        env = {**os.environ, "PROVISIONER_SITE": str(work / "site"), "PROVISIONER_STATE": str(work / "state")}
        subprocess.run([exe, "secrets", "set-bmc", "--profile", "rack"], input=PASSWORD + "\n", text=True,
                       env=env, check=True, capture_output=True)  # fmt: skip
        load_before = os.getloadavg()[0]
        t0 = time.monotonic()
        res = subprocess.run(
            [exe, "power", "status", "all", "--fanout", str(args.fanout)], env=env, capture_output=True, text=True
        )
        ours = time.monotonic() - t0
        ok = sum(1 for line in res.stdout.splitlines() if line.endswith(": off") or line.endswith(": on"))
        loop = (
            f"for p in $(seq {args.first_port} {args.first_port + args.bmcs - 1}); do "
            'ipmitool -I lanplus -H 127.0.0.1 -p "$p" -U admin -E -C 3 chassis power status; done'
        )
        t0 = time.monotonic()
        ref = subprocess.run(
            ["bash", "-c", loop], env={**env, "IPMI_PASSWORD": PASSWORD}, capture_output=True, text=True
        )
        theirs = time.monotonic() - t0
        ref_ok = ref.stdout.count("Chassis Power is")
        load_after = os.getloadavg()[0]
        print(f"machine: {platform.node()}, {os.cpu_count()} cores, {platform.platform()}")
        print(f"load average (1 min): {load_before:.1f} before, {load_after:.1f} after")
        print(f"BMCs: {args.bmcs} ipmi_sim on loopback, fan-out {args.fanout}")
        print(f"provisioner power status: {ours:7.2f} s  ({ok} answered; goal < 10 s)")
        print(f"ipmitool in a shell loop: {theirs:7.2f} s  ({ref_ok} answered)")
        print(f"ratio: ipmitool in a shell loop took {theirs / ours:.1f}x the time of provisioner power status")
        return 0 if ok == args.bmcs else 1
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        for p in procs:
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
