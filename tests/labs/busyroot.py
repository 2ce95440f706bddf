"""A tiny bootable root for image and boot tests: busybox, the host's own kernel and just the
modules the initramfs needs (no modules.dep, so the builder must run depmod), and an /sbin/init
the test chooses. No debootstrap needed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from provisioner.artifacts.initramfs import NIC_MODULES, REQUIRED_MODULES
from provisioner.artifacts.kmod import load_index, modules_dir

BUSYBOX = Path("/bin/busybox")

# An /sbin/init for boot tests: print what they check, then power off (qemu -no-reboot exits).
REPORT_INIT = """#!/bin/sh
echo "PVTEST hostname=$(hostname)"
echo "PVTEST etc_hostname=$(cat /etc/hostname)"
echo "PVTEST override=$(cat /etc/pvtest/override 2>/dev/null)"
echo "PVTEST image_file=$(cat /etc/image-file)"
touch /written-above && echo "PVTEST upper=writable"
if touch /run/provisioner/lower/x 2>/dev/null; then echo "PVTEST lower=writable"; else echo "PVTEST lower=readonly"; fi
grep -E ' / | /run/provisioner/lower ' /proc/mounts | sed 's/^/PVTEST mount /'
home=$(sed -n 's/.*pvtest.home=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
if [ -n "$home" ]; then
    mkdir -p /mnt/home
    if mount -t nfs4 -o vers=4.2 "$home" /mnt/home && echo "from $(hostname)" > /mnt/home/from-node; then
        echo "PVTEST home=writable"
    else
        echo "PVTEST home=failed"
    fi
fi
echo "PVTEST pid=$$"
echo "PVTEST done"
poweroff -f
"""


def console_values(console: str) -> dict[str, str]:
    """The `PVTEST key=value` lines REPORT_INIT printed."""
    return {
        ln.split("=", 1)[0][len("PVTEST ") :]: ln.split("=", 1)[1].strip()
        for ln in console.splitlines()
        if ln.startswith("PVTEST ") and "=" in ln
    }


def host_kernel() -> str:
    """The newest kernel installed on the host with both /boot/vmlinuz and its modules."""
    found = sorted(
        p.name[len("vmlinuz-") :]
        for p in Path("/boot").glob("vmlinuz-*")
        if modules_dir(Path("/"), p.name[len("vmlinuz-") :]) is not None
    )
    assert found, "no /boot/vmlinuz-* with modules on this host (install linux-image-amd64)"
    return found[-1]


def make_root(
    dest: Path, init: str, kver: str | None = None, hostname: str = "image", modules: tuple[str, ...] = ()
) -> Path:
    """Assemble the root in `dest` with `init` as /sbin/init and the initramfs's default
    modules plus `modules`; returns `dest`."""
    kver = kver or host_kernel()
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "run", "tmp", "root", "boot", "usr/bin", "usr/sbin"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    applets = subprocess.run([str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    for a in applets:
        link = dest / a
        if a != "bin/busybox" and not os.path.lexists(link) and a != "sbin/init":
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    (dest / "sbin" / "init").write_text(init)
    (dest / "sbin" / "init").chmod(0o755)
    (dest / "etc" / "hostname").write_text(f"{hostname}\n")
    (dest / "etc" / "image-file").write_text("from-the-image\n")
    (dest / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (dest / "etc" / "group").write_text("root:x:0:\n")
    (dest / "etc" / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    shutil.copy2(f"/boot/vmlinuz-{kver}", dest / "boot" / f"vmlinuz-{kver}")
    host_mods = modules_dir(Path("/"), kver)
    assert host_mods is not None, f"no modules for {kver} on this host"
    index = load_index(Path("/"), kver)
    for rel in index.resolve(REQUIRED_MODULES + list(modules), NIC_MODULES):
        target = dest / "lib" / "modules" / kver / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(host_mods / rel, target)
    for f in ("modules.builtin", "modules.order", "modules.builtin.modinfo"):
        if (host_mods / f).exists():
            shutil.copy2(host_mods / f, dest / "lib" / "modules" / kver / f)
    return dest
