"""A real node boots while one attacker host floods `provisioner serve` (issue 17.2): a qemu
guest (TCG) PXE-boots the legacy way, PXELINUX taking its config, kernel and initramfs over
TFTP, while the attacker sends read requests with hostile options (timeout=255, an odd block
size, windowsize 64) at 1,000 a second and holds 200 HTTP connections, two thirds of them
sending their headers a byte at a time. The boot under the flood takes less than twice the
time of the same boot without it (both after a first boot that warms the caches), and
serve's descriptors stay within the caps."""

import time

import pytest

from labs.busyroot import console_values
from labs.flood import HttpFlood, Sampler, TftpFlood, fds
from labs.pxe import HTTP_PORT, PxeLab, pxe_site

pytestmark = [pytest.mark.netns, pytest.mark.qemu]

MAC = "52:54:00:7b:00:01"
SERVER = "10.99.0.1"
INIT = """#!/bin/sh
echo "PVTEST hostname=$(hostname)"
echo "PVTEST done"
poweroff -f
"""


def timed_boot(pxe: PxeLab) -> float:
    t0 = time.monotonic()
    console = pxe.boot(MAC, "PVTEST done")
    took = time.monotonic() - t0
    assert console_values(console).get("hostname") == "node01", console[-3000:]
    return took


def test_a_node_boots_under_a_flood_in_less_than_twice_its_time(lab, cli, tmp_path):
    pxe = PxeLab(lab, cli, tmp_path / "pxe", INIT)
    try:
        pxe.start(pxe_site({"node01": MAC}, boot_files={"bios": "pxelinux.0", "ipxe": "tftp://10.99.0.1/pxelinux.0"}))
        assert pxe.serve is not None
        pid = pxe.serve.proc.pid
        attacker = lab.host(ip="10.99.0.66")
        base_fds = fds(pid)
        timed_boot(pxe)  # warm: qemu, firmware and the image in the page cache
        with (
            Sampler(pid) as sampler,
            TftpFlood(attacker, (SERVER, 69), "images/tiny/vmlinuz", rate=1000) as tftp,
            HttpFlood(attacker, (SERVER, HTTP_PORT), conns=200) as http,
        ):
            flooded = timed_boot(pxe)
        normal = timed_boot(pxe)
        print(
            f"boot {normal:.1f} s, under flood {flooded:.1f} s; TFTP {tftp.rate():.0f} requests/s "
            f"{dict(tftp.answers)}, HTTP {http.rate():.0f} connections/s {dict(http.answers)}; "
            f"serve peak {sampler.peak_rss:.0f} MB, {sampler.peak_fds:.0f} fds (from {base_fds})"
        )
        assert flooded < 2 * normal, (flooded, normal)
        assert tftp.rate() > 500 and tftp.answers["error"] > 1000, (tftp.rate(), tftp.answers)
        assert http.answers["503"] > 0 and http.answers["closed"] > 0, http.answers
        assert sampler.peak_fds < base_fds + 2 * (64 + 64) + 2 * 16 + 32  # the caps: HTTP, refusals, TFTP
        assert pxe.serve.proc.poll() is None
        tftp_ok = [p for proto, p, outcome in pxe.transfers("node01") if proto == "tftp" and outcome == "ok"]
        assert "images/tiny/versions/v1/initramfs.img" in tftp_ok, tftp_ok
    finally:
        pxe.close()
