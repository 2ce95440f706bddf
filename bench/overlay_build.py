#!/usr/bin/env python3
"""Overlay build at scale: N nodes (default 10,000) with the stock overlays.

Prints the full build time, the time to rebuild after one node's change (a per-node override
file), both against the goals (10 s, 0.5 s), and, as a reference, what the standard tools take
for the same archives: GNU cpio + gzip packing one extracted node tree, timed on a sample of
nodes and scaled to N.

Setup that is not measured: SSH host keys for N nodes would take ssh-keygen hours (RSA), so one
real set is generated and hard-linked into every node's key folder (with that node's
signed-for marker, so nothing is re-signed). The archives' contents are otherwise real.

    .venv/bin/python bench/overlay_build.py [--nodes 10000] [--jobs 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provisioner.artifacts import layout, overlay_build, secrets
from provisioner.inventory import load_inventory
from provisioner.paths import Site, State

OVERLAYS = ["base", "ssh", "munge", "slurm", "mpi"]


def inventory_yaml(n: int) -> str:
    net = ipaddress.IPv4Network("10.64.0.0/16") if n < 60000 else ipaddress.IPv4Network("10.0.0.0/8")
    macs = ", ".join(
        f"52:54:{(i >> 24) & 255:02x}:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}" for i in range(1, n + 1)
    )
    return f"""cluster:
  name: bench
  domain: bench.cluster
  network:
    subnet: {net}
    master: {net[1]}
    gateway: {net[1]}
    dns: [{net[1]}]
  nfs:
    exports:
      - {{path: /home, access: rw}}
  slurm: {{controller: master}}
profiles:
  default:
    image: debian12
    kernel_args: [console=ttyS0]
    overlays: [{", ".join(o for o in OVERLAYS if (Path(__file__).parent.parent / "overlays" / o).is_dir())}]
nodes:
  - name: node[{1:05d}-{n:05d}]
    ip: {net[256]}
    mac: [{macs}]
"""


def fake_secrets(state: State, inv) -> None:
    """One real key set, hard-linked per node (see the module docstring)."""
    first = inv.nodes[0]
    secrets.ensure_secrets(state, inv, [first])
    root = layout.secrets_dir(state)
    src = root / secrets.node_ssh_dir(first.name)
    files = [p for p in src.iterdir() if p.is_file() and not p.name.startswith("signed-for.")]
    for node in inv.nodes[1:]:
        d = root / secrets.node_ssh_dir(node.name)
        d.mkdir(mode=0o700)
        for f in files:
            os.link(f, d / f.name)
        (d / secrets.signed_for(inv.cluster, node)).write_text(secrets.principals(inv.cluster, node))


def standard_tools(state: State, nodes: list[str], total: int) -> float:
    """Seconds GNU cpio + gzip -6 would take for `total` archives, from a sample."""
    work = Path(tempfile.mkdtemp(prefix="bench-cpio-"))
    try:
        elapsed = 0.0
        for name in nodes:
            tree = work / name
            tree.mkdir()
            subprocess.run(
                f"zcat {layout.overlay_archive(state, name)} | cpio -idm --quiet", shell=True, cwd=tree, check=True
            )
            t = time.perf_counter()
            subprocess.run(
                "find . -mindepth 1 | sort | cpio -o -H newc --quiet | gzip -6 > ../out.cpio.gz",
                shell=True,
                cwd=tree,
                check=True,
            )
            elapsed += time.perf_counter() - t
        return elapsed / len(nodes) * total
    finally:
        shutil.rmtree(work)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=10000)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-overlay-"))
    try:
        site, state = Site(tmp / "site"), State(tmp / "state")
        site.root.mkdir()
        site.cluster_yaml.write_text(inventory_yaml(args.nodes))
        t = time.perf_counter()
        inv = load_inventory(site.cluster_yaml)
        load = time.perf_counter() - t
        fake_secrets(state, inv)

        full = overlay_build.build(state, site, inv, jobs=args.jobs)
        assert len(full.built) == args.nodes, full

        victim = inv.nodes[args.nodes // 2].name
        override = site.node_overrides(victim) / "etc" / "motd"
        override.parent.mkdir(parents=True)
        override.write_text(f"{victim}: reserved for benchmarking\n")
        one = overlay_build.build(state, site, inv, jobs=args.jobs)
        assert one.built == [victim], one.built[:5]

        other = inv.nodes[args.nodes // 3].name  # as if its entry in cluster.yaml got vars
        edited = dataclasses.replace(
            inv, nodes=tuple(dataclasses.replace(n, vars={"rack": "r42"}) if n.name == other else n for n in inv.nodes)
        )
        inv_one = overlay_build.build(state, site, edited, jobs=args.jobs)
        assert inv_one.built == [other], inv_one.built[:5]

        again = overlay_build.build(state, site, edited, jobs=args.jobs)
        assert again.built == []

        sample = [n.name for n in inv.nodes[:20]]
        std = standard_tools(state, sample, args.nodes)
        size = sum(layout.overlay_archive(state, n).stat().st_size for n in sample) / len(sample)

        print(
            f"nodes: {args.nodes}, jobs: {args.jobs}, overlays: {', '.join(inv.nodes[0].overlays)}, "
            f"archive ~{size / 1024:.0f} KiB (inventory load {load:.2f} s, not counted)"
        )
        print(f"full build:            {full.seconds:7.2f} s   goal 10 s    -> {full.seconds / 10:.2f} of the goal")
        print(
            f"one node changed:      {one.seconds:7.3f} s   goal 0.5 s   -> {one.seconds / 0.5:.2f} of the goal"
            "   (a per-node override file)"
        )
        print(
            f"one node changed:      {inv_one.seconds:7.3f} s   goal 0.5 s   -> {inv_one.seconds / 0.5:.2f} of the goal"
            "   (the node's vars in the inventory)"
        )
        print(f"nothing changed:       {again.seconds:7.3f} s")
        print(
            f"GNU cpio + gzip -6 (packing only, no rendering, scaled from {len(sample)} nodes): {std:.2f} s "
            f"-> provisioner full build takes {full.seconds / std:.2f}x that"
        )
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
