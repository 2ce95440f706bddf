"""A small boot storm through bench/storm.py, so the benchmark's path stays working: a hundred
simulated nodes boot at once, on a ramp and at once through DHCP relay agents, through
`provisioner serve` and through dnsmasq + nginx, every step of each node a real packet or
request (see bench/storm_client.py)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "storm.py"


@pytest.mark.netns
@pytest.mark.daemons
def test_a_small_storm_boots_every_node_through_both_stacks():
    res = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--nodes",
            "100",
            "--scale",
            "0.25",
            "--ramp",
            "5",
            "--patterns",
            "burst,ramp,relayed",
            "--relays",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    runs = re.findall(r"^  (provisioner|dnsmasq\+nginx) +booted +(\d+) +failed +(\d+)", out, re.M)
    assert len(runs) == 6, out
    assert all(booted == "100" and failed == "0" for _, booted, failed in runs), out
    # every step measured for provisioner, the overlay and reports included; a ratio per pattern
    for step in ("dhcp-pxe", "tftp", "dhcp-ipxe", "script", "kernel", "initramfs", "overlay", "reports"):
        assert f" {step} " in out, (step, out)
    assert len(re.findall(r"ratio: provisioner takes [\d.]+x", out)) == 3, out
    assert "DHCP through 4 relay agents (giaddr)" in out
    assert "scaled x0.25" in out
    assert not list(Path("/var/tmp").glob("bench-storm-*"))  # its work directory is gone
