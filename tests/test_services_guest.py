"""The services nodes rely on, checked from inside one qemu guest (TCG) booted from
`provisioner serve` by the demo's machinery, with dnsmasq, chronyd and rsyslogd on the master
as `provisioner configure all` set them up: names (a node added while the guest runs resolves
there, forward and reverse, through the master), time (timesyncd's server is the master's
chrony) and logs (`logger` on the guest is in `provisioner logs node01`, after the lines its
initramfs sent)."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from provisioner.demo.run import PROVISIONER, Demo
from provisioner.demo.services import chrony_socket

pytestmark = [pytest.mark.netns, pytest.mark.qemu, pytest.mark.daemons]

NODE02 = "10.77.0.12"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("svc-demo")
    said: list[str] = []
    d = Demo(work, nodes=1, timeout=900, echo=said.append)
    inv = d.write_site()
    d.build_image()
    d.build_artifacts()
    try:
        d.start_network()
        d.start_master(inv)
        d.start_services()
        d.boot_vms(inv)
        d.wait_idle(inv)
        yield d, inv, said
    finally:
        d.cleanup()


def on_node(d: Demo, script: str) -> str:
    assert d.master is not None
    res = d.master.run(["srun", "--mpi=none", "-w", "node01", "sh", "-c", script], timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout


def cli(d: Demo, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PROVISIONER_SITE": str(d.site.root), "PROVISIONER_STATE": str(d.state.root)}
    return subprocess.run([PROVISIONER, *args], capture_output=True, text=True, env=env, timeout=120)


def test_demo_says_one_line_per_service(demo):
    d, inv, said = demo
    d.check_services(inv)
    text = "\n".join(said)
    assert re.search(r"check +node01: dns master -> 10\.77\.0\.1 -> master\.demo\.cluster", text), text[-3000:]
    assert re.search(r"check +node01: ntp from 10\.77\.0\.1, chrony on the master", text), text[-3000:]
    assert re.search(r"check +node01: logs: its `logger` line is in `provisioner logs node01`", text), text[-3000:]


def test_a_node_added_resolves_on_the_guest_forward_and_reverse(demo):
    d, _, _ = demo
    added = cli(d, "node", "add", "node02", "--ip", NODE02)
    assert added.returncode == 0 and "dns:" in added.stdout and "reloaded" in added.stdout, added
    try:
        deadline = time.monotonic() + 30
        out = ""
        while time.monotonic() < deadline:
            out = on_node(d, f"getent -s dns hosts node02; getent -s dns hosts {NODE02}; true")
            if "node02.demo.cluster" in out and out.count(NODE02) >= 2:
                break
            time.sleep(1)
        assert re.search(rf"^{NODE02}\s+node02\.demo\.cluster", out, re.M), out
        assert len(re.findall(rf"^{NODE02}\s+node02\.demo\.cluster", out, re.M)) == 2, out
    finally:
        cli(d, "node", "rm", "node02")


def test_the_guest_keeps_time_from_the_masters_chrony(demo):
    d, _, _ = demo
    out = on_node(d, "timedatectl timesync-status")
    assert re.search(r"Server: 10\.77\.0\.1\b", out), out
    assert d.master is not None
    clients = d.master.run(["chronyc", "-h", str(chrony_socket(d.master)), "-n", "clients"]).stdout
    assert "10.77.0.11" in clients, clients


def test_logger_on_the_guest_is_in_provisioner_logs(demo):
    d, _, _ = demo
    on_node(d, "logger -t svctest 'a line from the guest'")
    deadline = time.monotonic() + 20
    while "a line from the guest" not in (log := cli(d, "logs", "node01").stdout) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "svctest" in log and "a line from the guest" in log, log[-3000:]
    boot = cli(d, "logs", "node01", "--boot").stdout.splitlines()
    assert "provisioner: boot begins (node node01" in boot[0], boot[:5]
    assert any("switching to the image's init" in line for line in boot), boot[:40]
