"""The native initramfs: deterministic bytes, a newc archive GNU cpio reads, modules resolved
from the image's own modules.dep (depmod run when it is missing), the initcpio/ runtime."""

import gzip
import subprocess
from pathlib import Path

import pytest

from labs.busyroot import host_kernel, make_root
from provisioner.artifacts.initramfs import InitramfsSpec, entries, render
from provisioner.artifacts.kmod import ModuleIndex, load_index, plain_module
from provisioner.errors import UserError
from provisioner.resources import INITCPIO


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_root(tmp_path_factory.mktemp("ir") / "rootfs", "#!/bin/sh\n")


def gnu_cpio_list(data: bytes) -> list[str]:
    res = subprocess.run(["cpio", "-t", "--quiet"], input=data, capture_output=True, check=True)
    return res.stdout.decode().split()


def test_same_inputs_same_bytes_and_gnu_cpio_lists_it(root):
    kver = host_kernel()
    dep = root / "lib" / "modules" / kver / "modules.dep"
    assert not dep.exists()
    first = render(InitramfsSpec(root, kver))
    assert dep.exists()  # depmod ran on the image's own module tree
    assert render(InitramfsSpec(root, kver)) == first
    names = gnu_cpio_list(gzip.decompress(first))
    for must in (
        "init",
        "bin/busybox",
        "bin/sh",
        "sbin/switch_root",
        "usr/bin/wget",
        "lib/provisioner/provisioner.sh",
        "lib/provisioner/udhcpc.script",
        "lib/provisioner/modules",
        "dev/console",
        f"lib/modules/{kver}/kernel/fs/nfs/nfsv4.ko",
        f"lib/modules/{kver}/kernel/fs/overlayfs/overlay.ko",
        f"lib/modules/{kver}/kernel/drivers/net/ethernet/intel/e1000/e1000.ko",
    ):
        assert must in names, must
    assert names.index("lib") < names.index("lib/provisioner") < names.index("lib/provisioner/provisioner.sh")


def test_runtime_is_the_initcpio_script(root, tmp_path):
    by_path = {e.path: e for e in entries(InitramfsSpec(root, host_kernel()))}
    assert by_path["lib/provisioner/provisioner.sh"].data == (INITCPIO / "provisioner.sh").read_bytes()
    assert by_path["init"].data == (INITCPIO / "init").read_bytes()
    assert by_path["init"].mode & 0o111


def test_modules_load_after_their_dependencies(root):
    kver = host_kernel()
    by_path = {e.path: e for e in entries(InitramfsSpec(root, kver))}
    order = [Path(p).name for p in by_path["lib/provisioner/modules"].data.decode().split()]
    for before, after in [
        ("sunrpc.ko", "nfs.ko"),
        ("nfs.ko", "nfsv4.ko"),
        ("virtio.ko", "virtio_net.ko"),
        ("failover.ko", "net_failover.ko"),
        ("net_failover.ko", "virtio_net.ko"),
    ]:
        assert order.index(before) < order.index(after), (before, after)
    assert len(order) == len(set(order))
    for p in by_path["lib/provisioner/modules"].data.decode().split():
        assert p.lstrip("/") in by_path


def test_zstd_compression_and_extra_modules(root):
    spec = InitramfsSpec(root, host_kernel(), compression="zstd", extra_modules=("overlay",))
    data = render(spec)
    assert render(spec) == data  # same inputs, same bytes here too
    raw = subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
    assert "init" in gnu_cpio_list(raw)


def test_missing_required_module_is_a_clear_error(root):
    with pytest.raises(UserError, match=r"not in the modules\.dep of kernel .*: no_such_driver"):
        render(InitramfsSpec(root, host_kernel(), extra_modules=("no-such-driver",)))
    with pytest.raises(UserError, match=r"no modules for kernel 0\.0\.0"):
        load_index(root, "0.0.0")


def test_module_index_resolution_rules():
    idx = ModuleIndex.parse(
        "kernel/a.ko: kernel/b.ko kernel/c-d.ko.xz\nkernel/b.ko: kernel/c-d.ko.xz\nkernel/c-d.ko.xz:\n",
        "kernel/builtin_one.ko\n",
    )
    assert idx.resolve(["a"]) == ["kernel/c-d.ko.xz", "kernel/b.ko", "kernel/a.ko"]
    assert idx.resolve(["builtin-one", "c_d"], ["absent_nic"]) == ["kernel/c-d.ko.xz"]


def test_compressed_modules_are_packed_plain(tmp_path):
    """An image whose modules are xz- and zstd-compressed (trixie, Void): the initramfs carries
    them uncompressed, as busybox insmod (no zstd) loads them, and its load list names those."""
    kver = host_kernel()
    root = make_root(tmp_path / "rootfs", "#!/bin/sh\n")
    mods = root / "lib" / "modules" / kver / "kernel"
    e1000 = next(mods.rglob("e1000.ko"))
    nfsv4 = next(mods.rglob("nfsv4.ko"))
    plain = {"e1000.ko": e1000.read_bytes(), "nfsv4.ko": nfsv4.read_bytes()}
    subprocess.run(["zstd", "-q", "--rm", str(e1000)], check=True)
    subprocess.run(["xz", "-q", str(nfsv4)], check=True)
    by_path = {e.path: e for e in entries(InitramfsSpec(root, kver))}
    listing = by_path["lib/provisioner/modules"].data.decode().split()
    assert listing and all(p.endswith(".ko") for p in listing), listing
    for name, data in plain.items():
        (path,) = [p for p in by_path if p.endswith(f"/{name}")]
        assert by_path[path].data == data and f"/{path}" in listing
    gz = tmp_path / "m.ko.gz"
    gz.write_bytes(gzip.compress(b"\x7fELF module"))
    assert plain_module(gz.name, gz.read_bytes()) == ("m.ko", b"\x7fELF module")
