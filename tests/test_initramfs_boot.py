"""Boot the native initramfs in qemu (TCG) against an image exported by nfs-ganesha: DHCP,
NFS root read-only below, tmpfs above, the node's overlay (built by `provisioner overlay build`,
served by `provisioner serve`) fetched from a privileged port, stage reports,
switch_root into the image's own init."""

from pathlib import Path

import pytest

from labs.boot import HTTP_PORT, BootLab
from labs.busyroot import REPORT_INIT, console_values, make_root
from labs.site import node, site_yaml, write_site
from provisioner.artifacts import layout
from provisioner.artifacts.images import import_image, nfs_roots
from provisioner.inventory import load_inventory
from provisioner.nodestate import NodeStateDB
from provisioner.paths import State
from provisioner.render.nfs import exports_for

pytestmark = [pytest.mark.netns, pytest.mark.qemu]

MAC = "52:54:00:7a:00:01"


def site(home: Path) -> str:
    """node01 on the lab network with the pvtest overlay and `home` exported read-write."""
    return site_yaml(
        [node("node01", "10.99.0.11", MAC)],
        {"default": {"image": "tiny", "overlays": ["base", "pvtest"]}},
        name="boot",
        domain="boot.test",
        interface=None,
        ports={"http": HTTP_PORT},
        nfs={"exports": [{"path": str(home), "access": "rw"}]},
    )


@pytest.fixture
def image(tmp_path):
    src = make_root(tmp_path / "src", REPORT_INIT)
    state = State(tmp_path / "state")
    import_image(state, "tiny", src)
    return state


def test_boot_reaches_switch_root_with_overlay(lab, image, tmp_path, cli):
    """Against the real `provisioner serve --services http` in secure mode, with the exports
    `provisioner nfs exports` would render (image read-only, homes read-write, root squashed).
    The root is the unpinned one, /images/tiny/current/rootfs (as the DHCP root-path names
    it): the NFS client follows the `current` link inside the image's export."""
    state = image
    home = tmp_path / "home"
    home.mkdir(mode=0o1777)
    home.chmod(0o1777)
    cluster = load_inventory(write_site(cli.site, site(home))).cluster
    exports = exports_for(cluster, nfs_roots(state))
    # The overlay as the admin makes it: a site template, overridden by the node's own file.
    template = cli.site / "overlays" / "pvtest" / "etc" / "pvtest" / "override.j2"
    template.parent.mkdir(parents=True)
    template.write_text("{{ node.name }} from the template\n")
    own = cli.site / "nodes" / "node01" / "etc" / "pvtest" / "override"
    own.parent.mkdir(parents=True)
    own.write_text("node01 only\n")
    cli("overlay", "build")
    with BootLab(lab, tmp_path / "lab") as bl:
        bl.start({}, {MAC: "10.99.0.11"}, serve=(cli.exe, cli.site, state.root), exports=exports)
        console = bl.boot(
            layout.image_kernel(state, "tiny"),
            layout.image_initramfs(state, "tiny"),
            bl.cmdline("node01", "tiny") + f" pvtest.home=10.99.0.1:{home}",
            MAC,
            until="PVTEST done",
        )
    timeline = NodeStateDB(state.db).timeline("node01")
    assert "PVTEST done" in console, console[-3000:]
    got = console_values(console)
    assert (got["hostname"], got["etc_hostname"], got["override"]) == ("node01", "node01", "node01 only")
    assert got["image_file"] == "from-the-image"
    assert (got["upper"], got["lower"], got["pid"]) == ("writable", "readonly", "1")
    assert got["home"] == "writable"
    assert (home / "from-node").read_text() == "from node01\n"
    assert (home / "from-node").stat().st_uid != 0  # root is squashed on homes
    mounts = [ln for ln in console.splitlines() if ln.startswith("PVTEST mount ")]
    assert any(" / overlay " in m for m in mounts), mounts
    assert any(" nfs4 ro," in m and "/run/provisioner/lower" in m for m in mounts), mounts
    # the client resolved `current` once, at mount time: the node stays on that version
    assert any(m.startswith("PVTEST mount 10.99.0.1:/images/tiny/versions/v1/rootfs ") for m in mounts), mounts
    # Every report carried the credential from the overlay, network's (sent after the fetch) too.
    stages = [r["stage"] for r in timeline]
    assert [s for s in stages if s != "dhcp"] == ["network", "root", "overlay", "switch_root"], [
        dict(r) for r in timeline
    ]


def test_failed_nfs_mount_names_server_and_export(lab, image, tmp_path):
    state = image
    with BootLab(lab, tmp_path / "lab") as bl:
        bl.start(nfs_roots(state), {MAC: "10.99.0.11"})
        console = bl.boot(
            layout.image_kernel(state, "tiny"),
            layout.image_initramfs(state, "tiny"),
            bl.cmdline("node01", "missing", "v1"),
            MAC,
            until="rebooting in",
        )
        reports = bl.reports()
    assert (
        "provisioner: ERROR: cannot mount the NFS root 10.99.0.1:/images/missing/versions/v1/rootfs (NFS 4.2)"
        in console
    ), console[-3000:]
    assert "PVTEST" not in console
    assert "debug shell" not in console  # a shell only with provisioner.debug=1
    failed = [r["body"] for r in reports if r["method"] == "POST" and r["body"]["stage"] == "failed"]
    assert failed and "10.99.0.1:/images/missing/versions/v1/rootfs" in failed[0]["detail"]
