"""The native initramfs when a boot cannot go on, in qemu (TCG): every failure prints one
clear `provisioner: ERROR:` line naming what failed, reports stage `failed` when the master is
reachable, and then reboots; a shell only with `provisioner.debug=1` (typed into over the
serial console here). The failed NFS mount without debug is in test_initramfs_boot.py."""

import re

import pytest

from labs.boot import HTTP_PORT, BootLab
from labs.busyroot import REPORT_INIT, make_root
from provisioner.artifacts import layout
from provisioner.artifacts.images import import_image, nfs_roots
from provisioner.paths import State

pytestmark = [pytest.mark.netns, pytest.mark.qemu]

MAC = "52:54:00:7a:00:02"
IP = "10.99.0.12"
NO_SHELL = "debug shell"
# The kernel's last word before qemu (-no-reboot) exits: the node rebooted, no shell held it.
REBOOTED = "reboot: Restarting system"


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    """Two images: `tiny` (a busybox root whose init reports and powers off) and `noinit`
    (the same root without /sbin/init)."""
    tmp = tmp_path_factory.mktemp("images")
    state = State(tmp / "state")
    import_image(state, "tiny", make_root(tmp / "tiny", REPORT_INIT))
    noinit = make_root(tmp / "noinit", REPORT_INIT)
    (noinit / "sbin" / "init").unlink()
    import_image(state, "noinit", noinit)
    return state


def boot(bl, state, image, cmdline, **kw):
    return bl.boot(layout.image_kernel(state, image), layout.image_initramfs(state, image), cmdline, MAC, **kw)


def failed_reports(bl):
    return [r["body"]["detail"] for r in bl.reports() if r["method"] == "POST" and r["body"]["stage"] == "failed"]


def error_lines(console):
    return [ln.strip() for ln in console.splitlines() if "provisioner: ERROR: " in ln]


def test_debug_gives_a_shell_on_the_console_after_the_error(lab, state, tmp_path):
    """provisioner.debug=1 and an NFS root that is not exported: the ERROR line, then a shell
    that runs what is typed on the serial console; exiting it reboots the node."""
    with BootLab(lab, tmp_path / "lab") as bl:
        bl.start(nfs_roots(state), {MAC: IP})
        console = boot(
            bl,
            state,
            "tiny",
            bl.cmdline("node02", "missing", "v1", debug="1"),
            until=REBOOTED,
            timeout=120,
            send=[("debug shell (provisioner.debug=1)", ""), ("# ", "echo PV$((6*7))\n"), ("PV42", "exit\n")],
        )
    err = console.find("provisioner: ERROR: cannot mount the NFS root 10.99.0.1:/images/missing/versions/v1/rootfs")
    shell = console.find("provisioner: debug shell (provisioner.debug=1); exit it to reboot")
    answer = re.search(r"^PV42\r?$", console, re.MULTILINE)
    assert 0 <= err < shell, console[-3000:]
    assert answer and answer.start() > shell, console[-3000:]
    assert REBOOTED in console[answer.end() :], console[-3000:]
    assert "rebooting in" not in console


def test_overlay_fetch_failure_names_the_url(lab, state, tmp_path):
    """The node's overlay is not on the master (404): the ERROR names the URL and the HTTP
    error, the master gets stage `failed`, and without debug the node reboots, no shell."""
    with BootLab(lab, tmp_path / "lab") as bl:
        bl.start(nfs_roots(state), {MAC: IP})
        console = boot(bl, state, "tiny", bl.cmdline("node02", "tiny"), until=REBOOTED, timeout=120)
        failed = failed_reports(bl)
    url = f"http://10.99.0.1:{HTTP_PORT}/overlays/node02.cpio.gz"
    errors = error_lines(console)
    assert any(f"cannot fetch the node overlay {url}: " in e and "404" in e for e in errors), console[-3000:]
    assert len(failed) == 1 and url in failed[0] and "404" in failed[0], failed
    assert "rebooting in 0s" in console and REBOOTED in console
    assert NO_SHELL not in console and "PVTEST" not in console


def test_overlay_that_is_not_an_archive_is_not_applied(lab, state, tmp_path):
    """The overlay URL answers 200 with something that is not a gzip cpio (a proxy's error
    page): the node must not boot on as if its files were there (`zcat | cpio` took cpio's
    status, and cpio is content with an empty stream): ERROR naming the URL, stage `failed`."""
    with BootLab(lab, tmp_path / "lab") as bl:
        bl.start(nfs_roots(state), {MAC: IP})
        (bl.web / "overlays" / "node02.cpio.gz").write_bytes(b"<html><body>502 Bad Gateway</body></html>\n")
        console = boot(bl, state, "tiny", bl.cmdline("node02", "tiny"), until=REBOOTED, timeout=120)
        failed = failed_reports(bl)
    url = f"http://10.99.0.1:{HTTP_PORT}/overlays/node02.cpio.gz"
    assert (
        f"provisioner: ERROR: the node overlay from {url} is not a gzip cpio archive: "
        "zcat: no gzip/bzip2/xz magic" in error_lines(console)
    ), console[-3000:]
    assert "overlay: applied" not in console and "PVTEST" not in console
    assert len(failed) == 1 and url in failed[0], failed
    assert REBOOTED in console and NO_SHELL not in console


def test_root_without_init_names_the_missing_init(lab, state, tmp_path):
    """The exported root mounts and the overlay applies, but the image has no /sbin/init:
    the ERROR names it (and init=), stage `failed`, reboot, no shell."""
    with BootLab(lab, tmp_path / "lab") as bl:
        bl.start(nfs_roots(state), {MAC: IP})
        bl.put_overlay("node02", {"etc/motd": b"hello\n"})
        console = boot(bl, state, "noinit", bl.cmdline("node02", "noinit"), until=REBOOTED, timeout=120)
        failed = failed_reports(bl)
    assert "provisioner: overlay: applied" in console, console[-3000:]
    assert "provisioner: ERROR: no /sbin/init in the image (set init=PATH)" in error_lines(console), console[-3000:]
    assert failed == ["no /sbin/init in the image (set init=PATH)"], failed
    assert REBOOTED in console and NO_SHELL not in console


def test_no_dhcp_answer_names_the_interfaces(lab, state, tmp_path):
    """Nobody answers DHCP (no server in the lab): within udhcpc's bounded tries the ERROR
    names the interface it tried, and the node reboots (nothing to report to), no shell."""
    with BootLab(lab, tmp_path / "lab") as bl:
        console = boot(bl, state, "tiny", bl.cmdline("node02", "tiny"), until=REBOOTED, timeout=90)
    assert "provisioner: ERROR: no DHCP lease on any interface (tried: eth0)" in error_lines(console), console[-3000:]
    assert REBOOTED in console and NO_SHELL not in console
