"""The master's path: the same image and the same runtime, the lower layer from a local disk
(provisioner.root=dev:DEVICE:SUBDIR) instead of NFS, no network, no overlay download."""

import subprocess

import pytest

from labs.busyroot import REPORT_INIT, console_values, make_root
from labs.guest import boot
from provisioner.artifacts import layout
from provisioner.artifacts.images import import_image
from provisioner.artifacts.initramfs import build_initramfs
from provisioner.demo.qemu import DirectBoot, Guest
from provisioner.paths import State

pytestmark = pytest.mark.qemu

DISK_MODULES = ("virtio_blk", "ext4", "crc32c_generic")


def test_master_boots_the_image_from_local_storage(tmp_path):
    state = State(tmp_path / "state")
    import_image(state, "tiny", make_root(tmp_path / "src", REPORT_INIT, modules=DISK_MODULES))
    initrd = build_initramfs(state, "tiny", extra_modules=DISK_MODULES)
    disk = tmp_path / "state.img"
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-L", "state", "-d", str(state.root), str(disk), "128M"], check=True)
    append = (
        "console=ttyS0 panic=-1 provisioner.node=master provisioner.retry=0 "
        "provisioner.root=dev:/dev/vda:/images/tiny/current/rootfs"
    )
    guest = Guest(direct=DirectBoot(layout.image_kernel(state, "tiny"), initrd, append), disks=(disk,))
    console = boot(guest, tmp_path / "console.log", "PVTEST done", 240)
    assert "PVTEST done" in console, console[-3000:]
    got = console_values(console)
    assert (got["hostname"], got["etc_hostname"], got["image_file"]) == ("master", "master", "from-the-image")
    assert (got["upper"], got["lower"], got["pid"]) == ("writable", "readonly", "1")
    assert "provisioner: root: dev:/dev/vda:/images/tiny/current/rootfs (read-only)" in console
