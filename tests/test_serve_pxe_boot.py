"""End to end through `provisioner serve` alone: a qemu guest (TCG) network-boots with its
NIC's iPXE ROM from our DHCP, fetches its iPXE script, kernel and initramfs over our HTTP,
mounts the image over NFS (nfs-ganesha), takes its overlay from a privileged port and
switches root; `provisioner status --timeline` then shows the whole boot, stage by stage.
Then the image is rebuilt while everything keeps running, nfs-ganesha untouched (no new
exports, no reload): the next boot gets the new version's kernel, initramfs and root."""

import json

import pytest

from labs import guest
from labs.busyroot import REPORT_INIT, console_values, make_root
from labs.ganesha import Ganesha
from labs.pxe import pxe_site
from labs.serve import Serve
from labs.site import write_site
from provisioner.artifacts import layout
from provisioner.artifacts.images import nfs_roots
from provisioner.demo.qemu import Guest, Nic
from provisioner.inventory import load_inventory
from provisioner.nodestate import NodeStateDB
from provisioner.paths import State
from provisioner.render.nfs import exports_for

pytestmark = [pytest.mark.netns, pytest.mark.qemu]

MAC = "52:54:00:7b:00:01"


def boot(lab, console, srv) -> str:
    """PXE-boot node01 until its init reports (or it powers off); its console text."""
    text = guest.boot(Guest(Nic(lab.tap(), MAC)), console, "PVTEST done", 300, ns=lab.server)
    assert "PVTEST done" in text, text[-3000:] + "\n" + "\n".join(srv.lines)[-3000:]
    return text


def test_pxe_boot_through_serve_shows_every_stage_and_a_rebuild_needs_no_nfs_reload(lab, tmp_path, cli):
    state = State(cli.state)
    src = make_root(tmp_path / "src", REPORT_INIT)
    cluster_yaml = write_site(cli.site, pxe_site({"node01": MAC}))
    assert "1 node(s) now boot tiny v1" in cli("image", "import", "tiny", src).stdout
    assert layout.ipxe_script(state, "node01").is_file()
    cluster = load_inventory(cluster_yaml).cluster
    exports = exports_for(cluster, nfs_roots(state))
    with (
        Ganesha(lab.server, tmp_path / "ganesha", exports, lab.net, lab.server_ip) as nfs,
        Serve(lab, cli, services="dhcp,tftp,http", port=8080, extra=("--interface", "br0")) as srv,
    ):
        text = boot(lab, tmp_path / "console-v1.log", srv)
        served = "\n".join(srv.lines)
        first = console_values(text)
        assert (first["hostname"], first["image_file"]) == ("node01", "from-the-image")
        steps = json.loads(cli("status", "node01", "--timeline", "--json").stdout)
        stages = [s["stage"] for s in steps]
        assert stages[0] == "dhcp", stages
        for a, b in (("dhcp", "ipxe"), ("ipxe", "kernel"), ("kernel", "initramfs"), ("initramfs", "overlay")):
            assert stages.index(a) < stages.index(b), stages
        assert "switch_root" in stages, stages
        table = cli("status", "node01", "--timeline").stdout
        assert table.splitlines()[-1].startswith("total "), table
        assert "outcome=ok" in served and "path=/overlays/node01.cpio.gz" in served
        assert (
            "path=/images/tiny/versions/v1/vmlinuz" in served and "10.99.0.1:/images/tiny/versions/v1/rootfs " in text
        )

        # Rebuild: a new root (another marker) while serve and nfs-ganesha run on untouched.
        (src / "etc" / "image-file").write_text("from-v2\n")
        assert nfs.proc is not None
        conf, pid = nfs.conf.read_bytes(), nfs.proc.pid
        seen = len(NodeStateDB(state.db).transfers("node01"))
        assert "1 node(s) now boot tiny v2" in cli("image", "import", "tiny", src).stdout
        again = boot(lab, tmp_path / "console-v2.log", srv)
        assert nfs.conf.read_bytes() == conf and nfs.proc.pid == pid and nfs.proc.poll() is None
    assert console_values(again)["image_file"] == "from-v2", again[-3000:]
    lower = [ln for ln in again.splitlines() if ln.startswith("PVTEST mount ") and " /run/provisioner/lower " in ln]
    assert lower and lower[0].startswith("PVTEST mount 10.99.0.1:/images/tiny/versions/v2/rootfs "), lower
    got = [(r["protocol"], r["path"], r["outcome"]) for r in NodeStateDB(state.db).transfers("node01")][seen:]
    http = [p for proto, p, outcome in got if proto == "http" and outcome == "ok"]
    assert "/images/tiny/versions/v2/vmlinuz" in http and "/images/tiny/versions/v2/initramfs.img" in http, got
    assert not [p for p in http if "/v1/" in p], got
