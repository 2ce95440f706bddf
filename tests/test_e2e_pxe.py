"""Whole boots through `provisioner serve`: firmware DHCP, bootloader, kernel and initramfs,
NFS root plus the node's overlay. The legacy PXELINUX path (TFTP only), UEFI firmware through
snponly.efi, and an overlay edit that reaches the node at its next boot."""

import os
import textwrap

import pytest

from labs.busyroot import console_values
from labs.pxe import PxeLab, pxe_site

pytestmark = [pytest.mark.netns, pytest.mark.qemu]

MAC1 = "52:54:00:7b:00:01"

INIT = """#!/bin/sh
echo "PVTEST hostname=$(hostname)"
echo "PVTEST motd=$(cat /etc/motd 2>/dev/null)"
grep -E ' / | /run/provisioner/lower ' /proc/mounts | sed 's/^/PVTEST mount /'
echo "PVTEST done"
poweroff -f
"""


@pytest.fixture
def pxe(lab, cli, tmp_path):
    p = PxeLab(lab, cli, tmp_path / "pxe", INIT)
    yield p
    p.close()


def mounts(console: str) -> list[str]:
    return [ln for ln in console.splitlines() if ln.startswith("PVTEST mount ")]


def test_legacy_pxelinux_loads_everything_over_tftp(pxe):
    """Firmware that cannot run iPXE: the profile sends it PXELINUX, which takes its per-node
    config, the kernel and the initramfs over TFTP; the node then mounts its NFS root. (The
    guest's ROM is iPXE, so the profile names PXELINUX for iPXE clients too, by TFTP URL.)"""
    pxe.start(pxe_site({"node01": MAC1}, boot_files={"bios": "pxelinux.0", "ipxe": "tftp://10.99.0.1/pxelinux.0"}))
    console = pxe.boot(MAC1, "PVTEST done")
    values = console_values(console)
    assert values.get("hostname") == "node01", console[-3000:]
    assert any(" nfs4 ro," in m for m in mounts(console)), console[-3000:]
    got = pxe.transfers("node01")
    tftp = [path for proto, path, outcome in got if proto == "tftp" and outcome == "ok"]
    assert "pxelinux.0" in tftp
    assert "pxelinux.cfg/01-52-54-00-7b-00-01" in tftp
    assert "images/tiny/versions/v1/vmlinuz" in tftp and "images/tiny/versions/v1/initramfs.img" in tftp
    assert not [p for proto, p, _ in got if proto == "http" and p.startswith("/images/")], got
    assert {"dhcp", "bootloader", "kernel", "initramfs", "root", "switch_root"} <= set(pxe.stages("node01"))


def test_uefi_firmware_boots_through_snponly_efi(pxe):
    """OVMF's own PXE asks for a boot file for x86-64 UEFI (arch 7), gets snponly.efi over
    TFTP; that iPXE chains to the node's script over HTTP and boots the kernel."""
    pxe.start(pxe_site({"node01": MAC1}))
    console = pxe.boot(MAC1, "PVTEST done", firmware="uefi", timeout=360)
    assert console_values(console).get("hostname") == "node01", console[-3000:]
    got = pxe.transfers("node01")
    assert ("tftp", "snponly.efi", "ok") in got, got
    http = [path for proto, path, outcome in got if proto == "http" and outcome == "ok"]
    assert "/images/tiny/versions/v1/vmlinuz" in http and "/images/tiny/versions/v1/initramfs.img" in http, got


def test_overlay_edit_reaches_the_node_at_next_boot(pxe, cli, tmp_path):
    pxe.start(pxe_site({"node01": MAC1}))
    first = console_values(pxe.boot(MAC1, "PVTEST done"))
    assert first.get("hostname") == "node01" and first.get("motd") == ""
    editor = tmp_path / "editor.sh"
    editor.write_text(
        textwrap.dedent("""\
        #!/bin/sh
        echo "edited for node01 only" > "$1"
    """)
    )
    editor.chmod(0o755)
    cli("overlay", "edit", "node01", "etc/motd", env={"EDITOR": str(editor), "VISUAL": str(editor)})
    assert (cli.site / "nodes" / "node01" / "etc" / "motd").read_text() == "edited for node01 only\n"
    cli("overlay", "build")
    second = console_values(pxe.boot(MAC1, "PVTEST done"))
    assert second.get("motd") == "edited for node01 only", second
    assert os.path.exists(cli.state)
