"""Redfish against sushy-tools' emulator driving real qemu guests through its libvirt driver
(our own libvirtd, TCG): `power on` starts the guest, `status` follows, `off` ends it. And the
serial console of a Redfish node: where its manager offers none (sushy-tools' own answers),
`console` says so and what to use, as where it offers SSH and Telnet only; where it offers
the console over IPMI, `console` attaches over IPMI serial-over-LAN to the same BMC address
(ipmi_sim carrying a qemu guest's serial line)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from labs.bmc import IpmiSim, Libvirtd, SushyEmulator, console_shows, read_until, sol_qemu
from labs.site import node, write_site
from provisioner.bmc import BmcError, Target, sol_target
from provisioner.bmc.console import read_log

pytestmark = [pytest.mark.qemu]

PASSWORD = "rf-lv-Secret-31"  # IPMI (ipmi_sim) passwords: up to 16 bytes
GUEST = "bmc-lv-n1"


@pytest.fixture(scope="module")
def libvirt_bmc(tmp_path_factory) -> Iterator[tuple[Libvirtd, SushyEmulator]]:
    """One libvirtd with one tiny guest (shut off) and the emulator in front of it."""
    work = tmp_path_factory.mktemp("bmc-redfish")
    lv = Libvirtd()
    try:
        lv.domain(GUEST)
        with SushyEmulator(work / "redfish", password=PASSWORD, libvirt_uri=lv.uri) as rf:
            yield lv, rf
    finally:
        lv.close()


def redfish_site(cli, port: int, address: str = "127.0.0.1") -> None:
    write_site(
        cli.site,
        nodes=[node("n1", "10.88.0.11", bmc=address, bmc_port=port, bmc_protocol="redfish-http")],
        name="rf",
        subnet="10.88.0.0/24",
        interface=None,
    )
    cli("secrets", "set-bmc", "n1", input=PASSWORD + "\n")


def until(what: str, fn, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < deadline, f"not {what} within {timeout} s"
        time.sleep(0.5)


def test_power_drives_a_libvirt_guest_through_redfish(cli, libvirt_bmc):
    lv, rf = libvirt_bmc
    redfish_site(cli, rf.port)
    assert cli("power", "status", "n1").stdout == "n1: off\n"
    assert lv.qemu_pid(GUEST) is None
    assert cli("power", "on", "n1").stdout == "n1: on\n"
    until("running", lambda: lv.qemu_pid(GUEST) is not None)
    assert lv.virsh("domstate", GUEST).stdout.strip() == "running"
    assert cli("power", "status", "n1", "--json").stdout.count('"state": "on"') == 1
    assert cli("power", "off", "n1").stdout == "n1: off\n"
    until("ended", lambda: lv.qemu_pid(GUEST) is None)
    assert lv.virsh("domstate", GUEST).stdout.strip() == "shut off"
    assert cli("power", "status", "n1").stdout == "n1: off\n"


def test_console_of_a_redfish_node_without_serial_console_says_what_to_use(cli, libvirt_bmc):
    _, rf = libvirt_bmc
    redfish_site(cli, rf.port)
    res = cli("console", "n1", check=False, input="")
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stderr.count("\n") == 1, res.stderr
    assert "offers no serial console" in res.stderr and "IPMI serial-over-LAN" in res.stderr, res.stderr
    assert PASSWORD not in res.stdout + res.stderr


def test_a_redfish_console_over_ssh_only_is_named_with_what_to_do(tmp_path):
    """A manager that offers the serial console over SSH and Telnet only: no IPMI to attach
    with, so the error names what it offers and where to log in."""
    with SushyEmulator(tmp_path / "rf", password=PASSWORD, serial_console=("SSH", "Telnet")) as rf:
        t = Target("n1", "redfish-http", "127.0.0.1", rf.port, "admin", PASSWORD)
        with pytest.raises(BmcError) as e:
            sol_target(t)
    assert "offers the serial console over SSH and Telnet, not IPMI serial-over-LAN" in str(e.value)
    assert "ssh admin@127.0.0.1" in str(e.value)


def loopback_with_free_623() -> str:
    """A loopback address of its own whose UDP port 623 (IPMI's) is free."""
    for _ in range(50):
        addr = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((addr, 623))
            except OSError:
                continue
        return addr
    raise AssertionError("no loopback address with UDP 623 free")


def test_console_of_a_redfish_node_that_offers_it_over_ipmi_attaches(cli, tmp_path):
    """A BMC whose Redfish manager offers the serial console over IPMI: `console` reads that
    and attaches over IPMI SOL to the same address (port 623, same account)."""
    addr = loopback_with_free_623()
    argv, conf = sol_qemu(["-boot", "reboot-timeout=5000"])
    with (
        IpmiSim(tmp_path / "sim", password=PASSWORD, machine=argv, extra_conf=conf, address=addr, port=623),
        SushyEmulator(tmp_path / "rf", password=PASSWORD, serial_console=("IPMI", "SSH"), address=addr) as rf,
    ):
        redfish_site(cli, rf.port, addr)
        # SeaBIOS finds nothing to boot and starts again after 5 s, printing its banner each
        # time: the console sees it whatever the timing of the power-on and of the attach
        ipmi = ["ipmitool", "-I", "lanplus", "-H", addr, "-U", "admin", "-E", "-C", "3", "chassis", "power", "on"]

        def power_on() -> bool:
            on = subprocess.run(ipmi, env={**os.environ, "IPMI_PASSWORD": PASSWORD}, capture_output=True)
            return on.returncode == 0

        console_shows(cli, "n1", lambda: until("powered on with ipmitool", power_on), b"SeaBIOS", 150)
        # serve's console service finds the console the same way and keeps the node's log
        env = {**os.environ, "PROVISIONER_SITE": str(cli.site), "PROVISIONER_STATE": str(cli.state)}
        serve = subprocess.Popen(
            [cli.exe, "serve", "--services", "console"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            read_until(serve, b"console attached", 60)
            deadline = time.monotonic() + 90
            while b"SeaBIOS" not in read_log(cli.state / "console", "n1"):
                assert time.monotonic() < deadline, "serve kept no console output of the Redfish node"
                time.sleep(1)
        finally:
            serve.terminate()
            serve.communicate(timeout=30)
