"""The initramfs's own messages reach the master before switch_root: a node whose NFS root
cannot be mounted says why in `provisioner logs NODE`, through busybox syslogd (UDP) to the
master's rsyslog set up by `provisioner configure logs`. A cheap busybox root in qemu (TCG)."""

import pytest

from labs.boot import BootLab
from labs.busyroot import REPORT_INIT, make_root
from labs.services import rsyslogd, until
from labs.site import node, site_yaml
from provisioner.artifacts import layout
from provisioner.artifacts.images import import_image, nfs_roots
from provisioner.paths import State

pytestmark = [pytest.mark.netns, pytest.mark.qemu]

MAC = "52:54:00:7a:00:03"
IP = "10.99.0.13"
REBOOTED = "reboot: Restarting system"


def test_failed_root_mount_is_in_the_masters_log(lab, cli, tmp_path):
    state = State(tmp_path / "images")
    import_image(state, "tiny", make_root(tmp_path / "tiny", REPORT_INIT))
    cli.site.mkdir(parents=True)
    (cli.site / "cluster.yaml").write_text(site_yaml([node("node03", IP, MAC)]))
    root = tmp_path / "root"
    cli("configure", "logs", "--root", root)
    rsyslogd(lab.server, root)
    with BootLab(lab, tmp_path / "lab") as bl:
        bl.start(nfs_roots(state), {MAC: IP})
        console = bl.boot(
            layout.image_kernel(state, "tiny"),
            layout.image_initramfs(state, "tiny"),
            bl.cmdline("node03", "missing", "v1"),
            MAC,
            until=REBOOTED,
            timeout=120,
        )
    assert "cannot mount the NFS root" in console, console[-2000:]

    def failed() -> str:
        text = cli("logs", "node03").stdout
        return text if "ERROR: cannot mount" in text else ""

    log = until(failed, 10)
    assert "provisioner: boot begins (node node03, 10.99.0.13" in log, log
    assert "ERROR: cannot mount the NFS root 10.99.0.1:/images/missing/versions/v1/rootfs" in log, log
    assert "provisioner: boot begins" in cli("logs", "node03", "--boot").stdout.splitlines()[0]
