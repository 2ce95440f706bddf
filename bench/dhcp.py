#!/usr/bin/env python3
"""DHCP leases per second at 0% drop: provisioner's server against Kea (memfile) and dnsmasq,
same machine, same run, 10,000 static nodes.

A server namespace runs each server in turn on bridge br0 (10.96.0.1/16), with the same
10,000 MAC-to-address reservations; perfdhcp (package kea-admin) runs in a client namespace
as a relay (it binds port 67, so it cannot share the server's namespace) and picks clients
from the 10,000 MACs. The servers take turns; each one's offered rate climbs by --step until
it drops an exchange twice at a rate; its result is the highest rate of completed DORA
exchanges (leases per second) with no drop. Prints the rates and our ratios. Goal: at least Kea's rate. Root.

    .venv/bin/python bench/dhcp.py [--nodes 10000] [--period 4] [--servers ours,kea,dnsmasq]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from labs.net import Lab  # noqa: E402

SUBNET, SERVER, CLIENT = "10.96.0.0/16", "10.96.0.1", "10.96.0.2"
FIRST_NODE_IP = IPv4Address("10.96.1.1")


def nodes(n: int) -> list[tuple[str, str, str]]:
    """(name, mac, ip) of the benchmark's static nodes."""
    return [(f"n{k:05d}", f"02:00:00:00:{k >> 8 & 0xFF:02x}:{k & 0xFF:02x}", str(FIRST_NODE_IP + k)) for k in range(n)]


def write_inventory(site: Path, table: list[tuple[str, str, str]]) -> None:
    site.mkdir(parents=True, exist_ok=True)
    macs = ", ".join(m for _, m, _ in table)
    (site / "cluster.yaml").write_text(
        f"cluster:\n  name: bench\n  domain: bench.cluster\n  network:\n    interface: br0\n"
        f"    subnet: {SUBNET}\n    master: {SERVER}\n    gateway: {SERVER}\n    dns: [{SERVER}]\n"
        f"nodes:\n  - name: n[00000-{len(table) - 1:05d}]\n    ip: {table[0][2]}\n    mac: [{macs}]\n"
    )


def kea_config(tmp: Path, table: list[tuple[str, str, str]]) -> Path:
    conf = {
        "Dhcp4": {
            "interfaces-config": {"interfaces": ["br0"], "dhcp-socket-type": "udp"},
            "lease-database": {
                "type": "memfile",
                "persist": True,
                "name": str(tmp / "kea-leases4.csv"),
                "lfc-interval": 0,
            },
            "valid-lifetime": 3600,
            "option-data": [
                {"name": "routers", "data": SERVER},
                {"name": "domain-name-servers", "data": SERVER},
                {"name": "domain-name", "data": "bench.cluster"},
            ],
            "subnet4": [
                {
                    "id": 1,
                    "subnet": SUBNET,
                    "reservations": [{"hw-address": m, "ip-address": ip, "hostname": name} for name, m, ip in table],
                }
            ],
            "loggers": [
                {"name": "kea-dhcp4", "severity": "WARN", "output_options": [{"output": str(tmp / "kea.log")}]}
            ],
        }
    }
    path = tmp / "kea.json"
    path.write_text(json.dumps(conf))
    return path


def start(lab: Lab, name: str, tmp: Path, table: list[tuple[str, str, str]]) -> subprocess.Popen:
    env = {**os.environ, "KEA_PIDFILE_DIR": str(tmp), "KEA_LOCKFILE_DIR": str(tmp)}
    if name == "ours":
        cmd = [
            sys.executable,
            "-m",
            "provisioner.servers.dhcp",
            "--site",
            str(tmp / "site"),
            "--state",
            str(tmp / "state"),
            "--interface",
            "br0",
            "--listen",
            SERVER,
        ]
    elif name == "kea":
        cmd = ["kea-dhcp4", "-c", str(kea_config(tmp, table))]
    else:
        hosts = tmp / "dnsmasq.hosts"
        hosts.write_text("".join(f"{m},{ip},{n}\n" for n, m, ip in table))
        cmd = [
            "dnsmasq",
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--interface=br0",
            "--bind-interfaces",
            f"--dhcp-range={SERVER},static,255.255.0.0,1h",
            f"--dhcp-hostsfile={hosts}",
            f"--dhcp-leasefile={tmp / 'dnsmasq.leases'}",
            f"--pid-file={tmp / 'dnsmasq.pid'}",
            "--quiet-dhcp",
            f"--dhcp-option=option:router,{SERVER}",
        ]
    with open(tmp / f"{name}.log", "w") as log:
        proc = lab.server.popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 60
    while ":67 " not in lab.server.run(["ss", "-uln"]).stdout:
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit(f"{name} did not start:\n{(tmp / f'{name}.log').read_text()}")
        time.sleep(0.1)
    time.sleep(0.5)
    return proc


def perfdhcp(client, macs: Path, rate: int, period: int) -> tuple[float, int]:
    """(completed DORA exchanges per second, packets dropped) at one offered rate."""
    out = client.run(
        [
            "perfdhcp",
            "-4",
            "-r",
            str(rate),
            "-p",
            str(period),
            "-M",
            str(macs),
            "-l",
            CLIENT,
            "-d",
            "2",
            "-W",
            "2000000",
            SERVER,
        ],
        check=False,
        timeout=120 + period,
    ).stdout
    blocks = dict(re.findall(r"\*\*\*Statistics for: ([A-Z-]+)\*\*\*\n(.*?)(?=\*\*\*|\Z)", out, re.S))
    received = re.search(r"^received packets: (\d+)", blocks.get("REQUEST-ACK", ""), re.M)
    if received is None:
        raise SystemExit(f"unexpected perfdhcp output:\n{out}")
    drops = sum(int(m) for b in blocks.values() for m in re.findall(r"^drops: (\d+)", b, re.M))
    acks = int(received.group(1))
    return acks / period, drops


def attempt(lab, client, macs: Path, tmp: Path, table: list, name: str, rate: int, period: int) -> float | None:
    """Leases/s of one server at one offered rate, or None if it dropped an exchange twice
    (the machine is shared: one retry keeps a neighbour's burst from deciding the result)."""
    proc = start(lab, name, tmp, table)
    try:
        for _ in range(2):
            got, drops = perfdhcp(client, macs, rate, period)
            print(f"  {name:8} offered {rate:6d}/s  leases {got:8.1f}/s  drops {drops}", flush=True)
            if not drops:
                return got
        return None
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=10000)
    ap.add_argument("--period", type=int, default=4, help="seconds per rate step")
    ap.add_argument("--step", type=float, default=1.3, help="rate multiplier between steps")
    ap.add_argument("--servers", default="ours,kea,dnsmasq")
    ap.add_argument("--top", type=int, default=20000, help="highest rate tried")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    starts = {"ours": 1000, "kea": 1000, "dnsmasq": 100}
    table = nodes(args.nodes)
    with tempfile.TemporaryDirectory() as tmpdir, Lab(subnet=SUBNET) as lab:
        tmp = Path(tmpdir)
        write_inventory(tmp / "site", table)
        macs = tmp / "macs.txt"
        macs.write_text("".join(f"{m}\n" for _, m, _ in table))
        client = lab.host(ip=CLIENT)
        print(f"{args.nodes} static nodes, {args.period} s per step, perfdhcp as a relay from another namespace")
        # the servers take turns at each rate, so a busy spell on the shared machine hits all
        rates = {name: starts[name] for name in args.servers.split(",")}
        results = dict.fromkeys(rates, 0.0)
        while rates:
            for name in list(rates):
                got = attempt(lab, client, macs, tmp, table, name, rates[name], args.period)
                if got is None:
                    del rates[name]
                    continue
                results[name] = max(results[name], got)
                rates[name] = int(rates[name] * args.step)
                if rates[name] > args.top:
                    del rates[name]
    print()
    for name, rate in results.items():
        print(f"{name:8} {rate:8.0f} leases/s at 0% drop")
    if "ours" in results:
        for other in ("kea", "dnsmasq"):
            if results.get(other):
                print(f"ours/{other}: {results['ours'] / results[other]:.2f}x")


if __name__ == "__main__":
    main()
