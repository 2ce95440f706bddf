"""A profile's `initramfs_modules` (the NIC drivers of its hardware) reach the initramfs of the
image its nodes boot, each after the modules it depends on; a module the image's kernel lacks
is a one-line error naming it and the nodes that asked, and the initramfs nodes boot stays."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

from labs.busyroot import host_kernel, make_root
from labs.site import node, write_site
from provisioner.artifacts import layout
from provisioner.paths import State


def site(cli, ib_modules: list[str]) -> None:
    write_site(
        cli.site,
        nodes=[node("ib[01-02]", "10.99.0.11", profiles=["default", "ib"]), node("eth01", "10.99.0.21")],
        profiles={"default": {"image": "tiny"}, "ib": {"initramfs_modules": ib_modules}},
    )


def packed(state: State) -> list[str]:
    """Module file names in the image's initramfs, in the order the runtime loads them."""
    data = gzip.decompress(layout.image_initramfs(state, "tiny").read_bytes())
    listing = subprocess.run(
        ["cpio", "-i", "--quiet", "--to-stdout", "lib/provisioner/modules"], input=data, capture_output=True, check=True
    ).stdout.decode()
    return [Path(p).name for p in listing.split()]


def test_profile_modules_reach_the_initramfs_in_dependency_order(cli, tmp_path):
    root = make_root(tmp_path / "root", "#!/bin/sh\n", modules=("mlx5_core",))
    site(cli, ["mlx5_core"])
    cli("image", "import", "tiny", root)
    state = State(cli.state)
    order = packed(state)
    for before in ("mlxfw.ko", "psample.ko", "pci-hyperv-intf.ko"):
        assert order.index(before) < order.index("mlx5_core.ko"), order
    assert "nfsv4.ko" in order and "overlay.ko" in order

    # Without the setting the image's initramfs carries no such driver.
    site(cli, [])
    cli("initramfs", "build", "tiny")
    assert "mlx5_core.ko" not in packed(state)


def test_a_module_the_kernel_lacks_is_named_and_the_initramfs_stays(cli, tmp_path):
    root = make_root(tmp_path / "root", "#!/bin/sh\n", modules=("mlx5_core",))
    site(cli, ["mlx5_core"])
    cli("image", "import", "tiny", root)
    state = State(cli.state)
    before = layout.image_initramfs(state, "tiny").read_bytes()

    site(cli, ["mlx5_core", "no-such-nic"])
    res = cli("initramfs", "build", "tiny", check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip() == (
        f"Error: image tiny: kernel {host_kernel()} has no module no_such_nic (not in its modules.dep); "
        "initramfs_modules of ib01 (profile:ib), ib02 (profile:ib)"
    )
    assert layout.image_initramfs(state, "tiny").read_bytes() == before
    # A new version that cannot carry it is not made: nodes keep booting the one they had.
    res = cli("image", "import", "tiny", root, check=False)
    assert res.returncode == 1 and "has no module no_such_nic" in res.stderr
    assert [v["version"] for v in json.loads(cli("image", "list", "--json").stdout)] == ["v1"]
