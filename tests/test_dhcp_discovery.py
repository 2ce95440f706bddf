"""Discovery by the DHCP server alone and adoption by the admin: `provisioner node
discovered|approve` with a real PXE client (the policy's `mode: auto` through `provisioner
serve` is test_join.py's)."""

from __future__ import annotations

import json

import pytest

from test_dhcp_server import UNKNOWN, Server, pxe_client, write_site

pytestmark = pytest.mark.netns

EFI = ("--arch", "7", "--vendor", "PXEClient:Arch:00007:UNDI:003016")


def test_discovered_then_adopted_by_the_admin_keeping_comments(lab, tmp_path, cli):
    write_site(cli.site)
    server = Server(lab, cli.site, cli.state).start()
    try:
        ns = lab.host(mac=UNKNOWN)
        got = pxe_client(ns, tmp_path, UNKNOWN, *EFI)
        assert got["reply"]["yiaddr"] == "10.99.0.200"  # dynamic range
        assert [r["mac"] for r in json.loads(cli("node", "discovered", "--json").stdout)] == [UNKNOWN]
        assert UNKNOWN in cli("node", "discovered").stdout
        out = cli("node", "approve", UNKNOWN.upper(), "node09").stdout
        assert f"adopted {UNKNOWN} as node09 (10.99.0.2)" in out
        text = (cli.site / "cluster.yaml").read_text()
        assert text.startswith("# the test cluster (this comment must survive CLI edits)")
        node = json.loads(cli("node", "show", "node09", "--json").stdout)[0]
        assert node["interfaces"][0]["mac"] == UNKNOWN
        assert json.loads(cli("node", "discovered", "--json").stdout) == []
        assert json.loads(cli("node", "discovered", "--all", "--json").stdout)[0]["adopted_as"] == "node09"
        # errors: known MAC, taken name, not a MAC
        for args, msg in (
            ((UNKNOWN, "node10"), "already node node09"),
            (("52:54:00:cc:00:01", "node01"), "exists"),
            (("nonsense", "x"), "not a MAC"),
        ):
            res = cli("node", "approve", *args, check=False)
            assert res.returncode == 1 and msg in res.stderr and "Traceback" not in res.stderr
        # after a reload the server answers the adopted node with its static address
        server.stop()
        server.start()
        got = pxe_client(ns, tmp_path, UNKNOWN, *EFI)
        assert got["reply"]["yiaddr"] == node["interfaces"][0]["ip"]
        assert got["reply"]["options"]["hostname"] == b"node09".hex()
    finally:
        server.stop()
    assert "Traceback" not in server.text(), server.text()
