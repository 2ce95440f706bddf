"""Zero-touch join with a real iPXE (issue 18): a qemu guest whose MAC no inventory names,
under the default `mode: approve`, PXE-boots and gets the wait script instead of a 404; it
sleeps, asks DHCP again and chains again, holding no overlay and no node name, until the admin
runs `node approve`; its next try boots it as the new node with no power cycle. The tiny
busybox image keeps this boot short; the same join into real Slurm is test_e2e_demo.py's."""

from __future__ import annotations

import json

import pytest
import yaml

from labs.busyroot import console_values
from labs.pxe import PxeLab, pxe_site
from provisioner.artifacts import layout

pytestmark = [pytest.mark.netns, pytest.mark.qemu]

NEW = "52:54:00:cd:00:11"
INIT = """#!/bin/sh
echo "PVTEST hostname=$(hostname)"
echo "PVTEST done"
poweroff -f
"""
WAITING = f"{NEW} is not a node of pxe yet"


def test_an_unlisted_guest_waits_in_ipxe_until_approved_then_boots(lab, cli, tmp_path):
    pxe = PxeLab(lab, cli, tmp_path / "pxe", INIT)
    data = yaml.safe_load(pxe_site({"node01": "52:54:00:aa:00:01"}))
    data["cluster"]["network"]["dynamic_range"] = "10.99.0.200-10.99.0.220"
    data["cluster"]["discovery"] = {"names": "new[1-9]", "addresses": "10.99.0.50-10.99.0.59", "profiles": ["default"]}
    approved: list[int] = []

    def approve_after_two_waits(console: str) -> None:
        if approved or console.count(WAITING) < 2:
            return
        # twice round the wait script, and still outside: discovered, no entry, no archive
        found = {r["mac"]: r["adopted_as"] for r in json.loads(cli("node", "discovered", "--json").stdout)}
        assert found == {NEW: None}, found
        assert NEW not in cli("node", "list", "--json").stdout
        assert not layout.overlay_archive(pxe.state, "new1").exists()
        assert "new1" not in console
        cli("node", "approve", NEW)
        approved.append(console.count(WAITING))

    try:
        pxe.start(yaml.safe_dump(data, sort_keys=False))
        console = pxe.boot(NEW, "PVTEST done", timeout=400, watch=approve_after_two_waits)
    finally:
        pxe.close()
    assert approved, console[-3000:]
    assert console_values(console).get("hostname") == "new1", console[-3000:]
    # approved during a wait: at most one more round, then the node's own script
    assert console.count(WAITING) <= approved[0] + 1, console[-3000:]
    assert {"dhcp", "ipxe", "kernel", "initramfs", "switch_root"} <= set(pxe.stages("new1"))
