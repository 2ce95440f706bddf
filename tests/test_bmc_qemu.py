"""`provisioner power` drives a qemu guest through OpenIPMI's ipmi_sim, its BMC: ipmi_sim's
chassis_control program starts and stops qemu. Power on makes the guest PXE-boot from a real
`provisioner serve` into its NFS root; status follows; power off ends it."""

from __future__ import annotations

import time

import pytest
import yaml

from labs.bmc import IpmiSim
from labs.pxe import PxeLab, pxe_site
from provisioner.demo.qemu import Guest, Nic

pytestmark = [pytest.mark.netns, pytest.mark.qemu]

MAC = "52:54:00:7b:20:01"
PASSWORD = "bmc-qemu-Secret-99"
# The guest stays up after its report, so that `power status` can see it on.
INIT = """#!/bin/sh
echo "PVTEST hostname=$(hostname)"
echo "PVTEST done"
sleep 3600
"""


def wait_for(path, needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if needle in text:
            return text
        time.sleep(1)
    raise AssertionError(f"{needle!r} not on the console within {timeout} s:\n{text[-3000:]}")


def test_power_on_pxe_boots_the_guest_and_off_ends_it(lab, cli, tmp_path):
    console = tmp_path / "console.log"
    guest = Guest(Nic(lab.tap(), MAC), "bios", serial=console)
    pxe = PxeLab(lab, cli, tmp_path / "pxe", INIT)
    sim = IpmiSim(tmp_path / "sim", password=PASSWORD, machine=lab.server.prefix(guest.prepare()))
    try:
        site = yaml.safe_load(pxe_site({"node01": MAC}, bmc_port=sim.port, bmc_user="admin"))
        site["nodes"][0]["bmc"] = "127.0.0.1"
        pxe.start(yaml.safe_dump(site, sort_keys=False))
        cli("secrets", "set-bmc", "node01", input=PASSWORD + "\n")
        assert cli("power", "status", "node01").stdout == "node01: off\n"
        assert cli("power", "pxe", "node01").stdout == "node01: pxe (next boot)\n"
        assert cli("power", "on", "node01").stdout == "node01: on\n"
        assert sim.machine_pid() is not None
        text = wait_for(console, "PVTEST done", 300)
        assert "PVTEST hostname=node01" in text
        assert {"dhcp", "kernel", "initramfs", "switch_root"} <= set(pxe.stages("node01"))
        assert cli("power", "status", "node01").stdout == "node01: on\n"
        assert cli("power", "off", "node01").stdout == "node01: off\n"
        assert sim.machine_pid() is None
        assert cli("power", "status", "node01").stdout == "node01: off\n"
        assert sim.events() == ["start pxe", "stop"]
    finally:
        sim.close()
        pxe.close()
