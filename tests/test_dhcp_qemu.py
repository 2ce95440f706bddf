"""The real thing: qemu's iPXE ROM (ipxe-qemu, TCG) PXE-boots against our DHCP server, gets
its node's script URL, and fetches it over HTTP; the router advertisement spares it the
IPv6 wait. An HTTP stub in the server namespace records the request. -nographic: with no
VGA, SeaBIOS puts the ROM's console on the serial port, which the test reads."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from test_dhcp_server import MACS, SERVER_IP, Server, _db_rows, write_site

pytestmark = [pytest.mark.netns, pytest.mark.qemu]


def test_ipxe_rom_gets_lease_and_fetches_its_script(lab, tmp_path):
    write_site(tmp_path / "site")
    server = Server(lab, tmp_path / "site", tmp_path / "state").start()
    www = tmp_path / "www"
    (www / "boot").mkdir(parents=True)
    (www / "boot" / f"{MACS[0]}.ipxe").write_text("#!ipxe\necho provisioner-script-reached\nshell\n")
    http_log = tmp_path / "http.log"
    lab.server.popen([sys.executable, "-m", "http.server", "8080", "--bind", SERVER_IP, "--directory", str(www)],
                     stdout=open(http_log, "w"), stderr=subprocess.STDOUT)
    serial = tmp_path / "serial.log"
    tap = lab.tap()
    lab.server.popen(["qemu-system-x86_64", "-machine", "accel=tcg", "-m", "128", "-nographic",
                      "-boot", "n", "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
                      "-device", f"e1000,netdev=n0,mac={MACS[0]}", "-serial", f"file:{serial}", "-monitor", "none"],
                     stdout=open(tmp_path / "qemu.log", "w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while time.time() < deadline and "provisioner-script-reached" not in (serial.read_text() if serial.exists() else ""):
        time.sleep(0.5)
    console = serial.read_text() if serial.exists() else ""
    try:
        assert f"Filename: http://{SERVER_IP}:8080/boot/{MACS[0]}.ipxe" in console, console
        assert "provisioner-script-reached" in console, console
        assert "GET /boot/52%3A54%3A00%3Aaa%3A00%3A01.ipxe" in http_log.read_text()  # iPXE escapes ':'
        assert "Root path" not in console  # no SAN-boot attempt
    finally:
        server.stop()
    stages = _db_rows(tmp_path / "state", "SELECT node, stage, detail FROM events")
    assert ("node01", "dhcp", "10.99.0.11 ipxe arch 0") in stages
    assert "Traceback" not in server.text(), server.text()
