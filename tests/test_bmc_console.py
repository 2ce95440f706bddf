"""The serial console through the BMC: `provisioner console NODE` over IPMI serial-over-LAN
(ipmi_sim carrying a qemu guest's serial line), `~.` detaches; `serve --services console` keeps
a bounded, rotated log per node, which `console NODE --log` shows."""

from __future__ import annotations

import os
import stat
import subprocess
import time

import pytest

from labs.bmc import IpmiSim, console_shows, read_until, sol_qemu
from labs.site import node, write_site
from provisioner.bmc.console import ConsoleLog, read_log
from provisioner.nodestate import NodeStateDB

pytestmark = [pytest.mark.netns, pytest.mark.qemu]

PASSWORD = "sol-Secret-1234"


@pytest.fixture
def sol_site(cli, tmp_path):
    argv, conf = sol_qemu()
    sim = IpmiSim(tmp_path / "sim", password=PASSWORD, machine=argv, extra_conf=conf)
    try:
        write_site(
            cli.site,
            nodes=[node("n1", "10.86.0.11", bmc="127.0.0.1", bmc_port=sim.port)],
            name="sol",
            subnet="10.86.0.0/24",
            interface=None,
        )
        cli("secrets", "set-bmc", "n1", input=PASSWORD + "\n")
        yield sim
    finally:
        sim.close()


def env_of(cli) -> dict[str, str]:
    return {**os.environ, "PROVISIONER_SITE": str(cli.site), "PROVISIONER_STATE": str(cli.state)}


def test_console_attaches_and_detaches_then_serve_keeps_the_log(cli, sol_site):
    def power_on() -> None:
        time.sleep(6)  # the CLI starts and the SOL session opens before the guest prints
        cli("power", "on", "n1")

    console_shows(cli, "n1", power_on, b"SeaBIOS", 90)
    cli("power", "off", "n1")

    serve = subprocess.Popen(
        [cli.exe, "serve", "--services", "console"],
        env=env_of(cli),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        read_until(serve, b"console attached", 60)
        cli("power", "on", "n1")
        deadline = time.monotonic() + 90
        while b"SeaBIOS" not in read_log(cli.state / "console", "n1"):
            assert time.monotonic() < deadline, "serve kept no console output"
            time.sleep(1)
        assert "SeaBIOS" in cli("console", "n1", "--log").stdout
        log = cli.state / "console" / "n1.log"
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
        assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700
        # A boot that stopped after DHCP: its timeline points at the console log.
        NodeStateDB(cli.state / "nodes.sqlite").record_stage("n1", "dhcp", "10.86.0.11")
        shown = cli("status", "n1", "--timeline").stdout
        assert f"console: {log} (provisioner console n1 --log)" in shown, shown
    finally:
        serve.terminate()
        out = serve.communicate(timeout=30)[0]
    assert PASSWORD.encode() not in out
    cli("power", "off", "n1")


def test_console_errors_are_one_line(cli, tmp_path):
    write_site(cli.site, nodes=[node("n1", "10.86.0.11")], name="sol", subnet="10.86.0.0/24", interface=None)
    res = cli("console", "n1", check=False)
    assert res.returncode == 1 and res.stderr.strip() == (
        "Error: n1: no BMC address in the inventory (`bmc:` in its node entry)"
    )
    assert cli("console", "n1", "--log").stdout == ""


def test_console_log_is_bounded(tmp_path):
    log = ConsoleLog(tmp_path / "console", "n1", max_bytes=1000)
    for i in range(100):
        log.write(f"line {i:04d} ".encode() * 10)
    kept = read_log(tmp_path / "console", "n1")
    assert len(kept) <= 2000 and kept.endswith(b"line 0099 ")
    assert sorted(p.name for p in (tmp_path / "console").iterdir()) == ["n1.log", "n1.log.1"]
