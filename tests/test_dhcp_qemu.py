"""The real thing under qemu (TCG): firmware PXE-boots against our DHCP server, chain-loads
iPXE where needed, gets its node's script URL and fetches it over HTTP; the router
advertisement spares iPXE the IPv6 wait. An HTTP stub (and tftpd-hpa for the UEFI case) in
the server namespace serve the files. -nographic: with no VGA, SeaBIOS puts the ROM's
console on the serial port, which the test reads; OVMF writes to it anyway."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from labs import guest
from provisioner.demo.qemu import Guest, Nic
from test_dhcp_server import MACS, SERVER_IP, Server, _db_rows, write_site

pytestmark = [pytest.mark.netns, pytest.mark.qemu]

SCRIPT_URL = f"http://{SERVER_IP}:8080/boot/{MACS[0]}.ipxe"


UUID = "11223344-5566-7788-99aa-bbccddeeff00"


def boot(lab, tmp_path, firmware: str, mac: str) -> str:
    """Start the HTTP stub (and TFTP for UEFI) and qemu; return the serial console once the
    node's script ran, or what it showed when the time ran out."""
    www = tmp_path / "www"
    (www / "boot").mkdir(parents=True)
    (www / "boot" / f"{MACS[0]}.ipxe").write_text("#!ipxe\necho provisioner-script-reached\nshell\n")
    lab.server.popen(
        [sys.executable, "-m", "http.server", "8080", "--bind", SERVER_IP, "--directory", str(www)],
        log=tmp_path / "http.log",
        stderr=subprocess.STDOUT,
    )
    if firmware == "uefi-pxe":  # OVMF's own PXE (arch 7), then snponly.efi over TFTP
        tftp = tmp_path / "tftp"
        tftp.mkdir()
        shutil.copy("/usr/lib/ipxe/snponly.efi", tftp)
        lab.server.popen(
            ["in.tftpd", "-L", "-s", str(tftp), "-a", f"{SERVER_IP}:69"],
            log=tmp_path / "tftp.log",
            stderr=subprocess.STDOUT,
        )
    # "bios-ipxe-rom": qemu's e1000 option ROM is iPXE itself, user class iPXE at once
    node = Guest(
        Nic(lab.tap(), mac),
        "uefi" if firmware == "uefi-pxe" else "bios",
        memory_mb=256,
        uuid=UUID,
        efi_vars=tmp_path / "vars.fd",
    )
    return guest.boot(
        node, tmp_path / "serial.log", ("provisioner-script-reached", ".ipxe... No such"), 300, ns=lab.server
    )


@pytest.mark.parametrize("firmware", ["bios-ipxe-rom", "uefi-pxe"])
def test_firmware_boots_to_its_ipxe_script(lab, tmp_path, firmware):
    write_site(tmp_path / "site")
    server = Server(lab, tmp_path / "site", tmp_path / "state").start()
    try:
        console = boot(lab, tmp_path, firmware, MACS[0])
        assert f"Filename: {SCRIPT_URL}" in console, console
        assert "provisioner-script-reached" in console, console
        assert "GET /boot/52%3A54%3A00%3Aaa%3A00%3A01.ipxe" in (tmp_path / "http.log").read_text()  # ':' escaped
        assert "Root path" not in console  # no SAN-boot attempt
        if firmware == "uefi-pxe":
            assert "NBP filename is snponly.efi" in console, console
    finally:
        server.stop()
    details = {
        d
        for n, s, d in _db_rows(tmp_path / "state", "SELECT node, stage, detail FROM events")
        if (n, s) == ("node01", "dhcp")
    }
    if firmware == "bios-ipxe-rom":
        assert details == {"10.99.0.11 ipxe arch 0"}, details
    else:  # iPXE's own request is noted too unless it came within the stage writer's repeat window
        assert "10.99.0.11 pxe arch 7" in details and details <= {"10.99.0.11 pxe arch 7", "10.99.0.11 ipxe arch 7"}
    assert "Traceback" not in server.text(), server.text()


def test_unknown_uefi_node_is_discovered_with_its_smbios_uuid(lab, tmp_path):
    write_site(tmp_path / "site")
    server = Server(lab, tmp_path / "site", tmp_path / "state").start()
    unknown = "52:54:00:bb:00:07"
    try:
        console = boot(lab, tmp_path, "uefi-pxe", unknown)
        assert "NBP filename is snponly.efi" in console, console
        assert f"Filename: http://{SERVER_IP}:8080/boot/{unknown}.ipxe" in console, console
    finally:
        server.stop()
    assert _db_rows(tmp_path / "state", "SELECT mac, arch, uuid, ip FROM discovered") == [
        (unknown, 7, UUID, "10.99.0.200")
    ]
