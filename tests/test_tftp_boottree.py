"""The boot tree resolver (shared by TFTP and HTTP), request parsing and option negotiation,
and `provisioner boot install` from the Debian packages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labs.site import numbered, site_yaml
from provisioner.artifacts import layout
from provisioner.inventory import parse_text
from provisioner.paths import State
from provisioner.servers.boottree import BootTree, PathRefused, StaticTree, clean_path
from provisioner.servers.tftp import packets as P


def inventory(subnet: str = "10.77.0.0/24", node01: str | None = None) -> str:
    """node01 and node02 at .11 and .12 of `subnet` (node01 at `node01` if given)."""
    nodes = numbered(2, subnet)
    if node01:
        nodes[0]["ip"] = node01
    return site_yaml(nodes, {"default": {"image": "debian12"}}, name="t", domain="t.cluster", subnet=subnet)


INVENTORY = inventory()


def make_state(tmp_path) -> State:
    """A state dir with rendered configs for node01/02, one image and a static tree."""
    state = State(tmp_path / "state")
    for node in ("node01", "node02"):
        for fn, text in ((layout.ipxe_script, "ipxe"), (layout.pxelinux_config, "pxe"), (layout.grub_config, "grub")):
            path = fn(state, node)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{text} {node}")
    version = state.images / "debian12" / "versions" / "v1"
    version.mkdir(parents=True)
    (version / "vmlinuz").write_bytes(b"kernel")
    (version / "initramfs.img").write_bytes(b"initrd")
    (state.images / "debian12" / "current").symlink_to("versions/v1")
    layout.boot_dir(state).mkdir(parents=True)
    (layout.boot_dir(state) / "undionly.kpxe").write_bytes(b"ipxe")
    (layout.boot_dir(state) / "boot.ipxe").write_text("default script")
    return state


@pytest.fixture
def tree(tmp_path):
    return BootTree(make_state(tmp_path), parse_text(INVENTORY, "cluster.yaml"))


def text(path) -> str | None:
    return path.read_text() if path is not None else None


def test_per_node_files_follow_the_client_address(tree):
    assert text(tree("10.77.0.11", "boot.ipxe")) == "ipxe node01"
    assert text(tree("10.77.0.12", "boot.ipxe")) == "ipxe node02"
    assert text(tree("10.77.0.12", "grub.cfg")) == "grub node02"
    assert text(tree("10.77.0.12", "/grub/grub.cfg")) == "grub node02"
    assert text(tree("10.77.0.99", "boot.ipxe")) == "default script"  # unknown: static tree
    assert tree.node_for("10.77.0.11") == "node01" and tree.node_for("10.77.0.99") is None


def test_reload_follows_a_new_inventory(tree):
    moved = parse_text(inventory(node01="10.77.0.31"), "cluster.yaml")
    tree.reload(moved)
    assert text(tree("10.77.0.31", "boot.ipxe")) == "ipxe node01"
    assert text(tree("10.77.0.11", "boot.ipxe")) == "default script"


def test_pxelinux_config_by_the_mac_in_the_name(tree):
    assert text(tree("10.77.0.200", "pxelinux.cfg/01-52-54-00-00-00-02")) == "pxe node02"
    assert tree("10.77.0.11", "pxelinux.cfg/01-52-54-00-00-00-99") is None
    assert tree("10.77.0.11", "pxelinux.cfg/C0A80001") is None


def test_image_kernel_and_initramfs(tree):
    assert tree("10.77.0.11", "images/debian12/vmlinuz").read_bytes() == b"kernel"
    assert tree("10.77.0.11", "images/debian12/initramfs.img").read_bytes() == b"initrd"
    assert tree("10.77.0.11", "images/nope/vmlinuz") is None


def test_static_tree_and_its_safety(tree, tmp_path):
    assert tree("10.77.0.11", "undionly.kpxe").read_bytes() == b"ipxe"
    assert tree("10.77.0.11", "/undionly.kpxe").read_bytes() == b"ipxe"
    (tmp_path / "outside").write_text("x")
    os.symlink(tmp_path / "outside", layout.boot_dir(tree.state) / "out")
    for bad in ("../nodes/node01/boot.ipxe", "a/../../x", "out", "a\0b", "x" * 300, "", "/"):
        with pytest.raises(PathRefused):
            tree("10.77.0.11", bad)
    assert tree("10.77.0.11", "/etc/passwd") is None  # a leading slash stays inside the root


def test_static_tree_is_a_directory_server(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f").write_text("f")
    static = StaticTree(tmp_path)
    found = static("1.2.3.4", "sub/f")
    assert found is not None and found.read_text() == "f"
    assert static("1.2.3.4", "sub") is None
    assert clean_path("./a//b/") == "a/b"


def test_negotiation():
    n = P.negotiate({"blksize": "70000", "windowsize": "500", "timeout": "256", "tsize": "0"}, 1234)
    assert (n.blksize, n.windowsize, n.timeout) == (65464, P.MAX_WINDOW, None)
    assert n.oack == b"\0\x06blksize\x0065464\0windowsize\x0064\0tsize\x001234\0"
    assert P.negotiate({}, 10).oack is None
    assert P.negotiate({"blksize": "7"}, 10).oack is None
    assert P.negotiate({"timeout": "3"}, 10).timeout == 3.0


@given(st.binary(max_size=600))
def test_parse_request_raises_only_bad_packet(data):
    try:
        req = P.parse_request(data)
    except P.BadPacket:
        return
    assert req.mode in ("octet", "netascii")


def test_boot_install_copies_the_debian_bootloaders(cli):
    res = cli("boot", "install")
    boot = cli.state / "boot"
    for name in (
        "undionly.kpxe",
        "ipxe.efi",
        "snponly.efi",
        "pxelinux.0",
        "ldlinux.c32",
        "grubx64.efi",
        "efi64/syslinux.efi",
        "efi64/ldlinux.e64",
    ):
        assert (boot / name).is_file(), name
    assert (boot / "undionly.kpxe").read_bytes() == Path("/usr/lib/ipxe/undionly.kpxe").read_bytes()
    assert "installed" in res.stdout
    again = cli("boot", "install")
    assert "installed" not in again.stdout.replace("unchanged", "")
