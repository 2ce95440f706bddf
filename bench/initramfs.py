#!/usr/bin/env python3
"""Initramfs build: `provisioner`'s native builder against Debian's own mkinitramfs
(initramfs-tools), same kernel, same machine, in the same run. Prints build seconds (best of
N rounds), compressed size, and the ratios. The native image carries only what a diskless
boot needs (busybox, NIC/NFS/overlay modules); mkinitramfs packs its MODULES=most default.

    .venv/bin/python bench/initramfs.py [--rounds 3] [--kernel VERSION]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from provisioner.artifacts.initramfs import InitramfsSpec, kernel_versions, render  # noqa: E402


def best(fn, rounds: int) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(rounds):
        t = time.perf_counter()
        size = fn()
        times.append(time.perf_counter() - t)
    return min(times), size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kernel", default=None)
    args = ap.parse_args()
    kver = args.kernel or kernel_versions(Path("/"))[-1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "initrd.img"

        def native() -> int:
            return len(render(InitramfsSpec(Path("/"), kver)))

        def debian() -> int:
            subprocess.run(["mkinitramfs", "-o", str(out), kver], check=True, capture_output=True)
            return out.stat().st_size

        results = {}
        for name, fn in (("provisioner", native), ("mkinitramfs", debian)):
            results[name] = best(fn, args.rounds)
    for name, (secs, size) in results.items():
        print(f"{name:12s} {secs:7.2f} s  {size / 1e6:6.1f} MB")
    (ns, nz), (ds, dz) = results["provisioner"], results["mkinitramfs"]
    print(f"time ratio provisioner/mkinitramfs: {ns / ds:.2f}   size ratio: {nz / dz:.2f}   (kernel {kver})")


if __name__ == "__main__":
    main()
