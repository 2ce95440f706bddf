"""End to end through `provisioner serve` alone: a qemu guest (TCG) network-boots with its
NIC's iPXE ROM from our DHCP, fetches its iPXE script, kernel and initramfs over our HTTP,
mounts the image over NFS (nfs-ganesha), takes its overlay from a privileged port and
switches root; `provisioner status --timeline` then shows the whole boot, stage by stage."""

import json
import subprocess
import time

import pytest
from busyroot import REPORT_INIT, console_values, make_root
from ganesha import Ganesha
from servelab import Serve

from provisioner.artifacts import layout
from provisioner.artifacts.images import import_image, nfs_roots
from provisioner.inventory import load_inventory
from provisioner.paths import State
from provisioner.render.nfs import exports_for

pytestmark = [pytest.mark.netns, pytest.mark.qemu]

MAC = "52:54:00:7b:00:01"
CLUSTER_YAML = f"""\
cluster:
  name: pxe
  domain: pxe.test
  network: {{interface: br0, subnet: 10.99.0.0/24, master: 10.99.0.1}}
  nfs: {{exports: []}}
  ports: {{http: 8080}}
  slurm: {{controller: master}}
profiles:
  default:
    image: tiny
    kernel_args: [console=ttyS0, panic=-1]
    overlays: [base]
nodes:
  - {{name: node01, ip: 10.99.0.11, mac: "{MAC}"}}
"""


def test_pxe_boot_through_serve_shows_every_stage(lab, tmp_path, cli):
    state = State(cli.state)
    import_image(state, "tiny", make_root(tmp_path / "src", REPORT_INIT))
    cli.site.mkdir(parents=True)
    (cli.site / "cluster.yaml").write_text(CLUSTER_YAML)
    cli("overlay", "build")
    assert layout.ipxe_script(state, "node01").is_file()
    cluster = load_inventory(cli.site / "cluster.yaml").cluster
    exports = exports_for(cluster, nfs_roots(state))
    console = tmp_path / "console.log"
    with Ganesha(lab.server, tmp_path / "ganesha", exports, lab.net, lab.server_ip), \
            Serve(lab, cli, services="dhcp,tftp,http", port=8080, extra=("--interface", "br0")) as srv:
        tap = lab.tap()
        with open(console, "wb") as out:
            qemu = lab.server.popen(["qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-nographic",
                                     "-monitor", "none", "-no-reboot", "-boot", "n",
                                     "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
                                     "-device", f"e1000,netdev=n0,mac={MAC}"], stdout=out, stderr=subprocess.STDOUT)
            deadline = time.time() + 300
            while time.time() < deadline and qemu.poll() is None and b"PVTEST done" not in console.read_bytes():
                time.sleep(0.5)
            if qemu.poll() is None:
                qemu.kill()
            qemu.wait()
        served = "\n".join(srv.lines)
    text = console.read_text(errors="replace")
    assert "PVTEST done" in text, text[-3000:] + "\n" + served[-3000:]
    assert console_values(text)["hostname"] == "node01"
    steps = json.loads(cli("status", "node01", "--timeline", "--json").stdout)
    stages = [s["stage"] for s in steps]
    assert stages[0] == "dhcp", stages
    for a, b in (("dhcp", "ipxe"), ("ipxe", "kernel"), ("kernel", "initramfs"), ("initramfs", "overlay")):
        assert stages.index(a) < stages.index(b), stages
    assert "switch_root" in stages, stages
    table = cli("status", "node01", "--timeline").stdout
    assert table.splitlines()[-1].startswith("total "), table
    assert "outcome=ok" in served and "path=/overlays/node01.cpio.gz" in served
