"""Discovery and adoption: `provisioner node discovered|adopt`, and the automatic adoption
policy (cluster.discovery.adopt) of `provisioner serve` with a real PXE client: both go
through the core's adopt action (the daemon hands it to its DHCP server)."""

from __future__ import annotations

import json

import pytest
from labs.serve import Serve
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
        out = cli("node", "adopt", UNKNOWN.upper(), "node09").stdout
        assert f"adopted {UNKNOWN} as node09 (10.99.0.2)" in out
        text = (cli.site / "cluster.yaml").read_text()
        assert text.startswith("# the test cluster (this comment must survive CLI edits)")
        node = json.loads(cli("node", "show", "node09", "--json").stdout)[0]
        assert node["interfaces"][0]["mac"] == UNKNOWN
        assert json.loads(cli("node", "discovered", "--json").stdout) == []
        assert json.loads(cli("node", "discovered", "--all", "--json").stdout)[0]["adopted_as"] == "node09"
        # errors: known MAC, taken name, not a MAC
        for args, msg in (((UNKNOWN, "node10"), "already node node09"), (("52:54:00:cc:00:01", "node01"), "exists"),
                          (("nonsense", "x"), "not a MAC")):
            res = cli("node", "adopt", *args, check=False)
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


def test_auto_adoption_policy_names_new_nodes(lab, tmp_path, cli):
    write_site(cli.site, adopt="auto[1-2]")
    with Serve(lab, cli, services="dhcp", extra=("--interface", "br0")) as server:
        macs = ["52:54:00:dd:00:01", "52:54:00:dd:00:02", "52:54:00:dd:00:03"]
        got = [pxe_client(lab.host(mac=m), tmp_path, m, *EFI)["reply"] for m in macs]
        assert [bytes.fromhex(r["options"]["hostname"]).decode() if "hostname" in r["options"] else None
                for r in got] == ["auto1", "auto2", None]
        assert got[2]["yiaddr"] == "10.99.0.200"  # policy exhausted: a dynamic lease
        nodes = {n["name"]: n for n in json.loads(cli("node", "list", "--json").stdout)}
        assert [nodes[f"auto{i}"]["interfaces"][0]["mac"] for i in (1, 2)] == macs[:2]
        assert nodes["auto1"]["interfaces"][0]["ip"] == got[0]["yiaddr"]
        rows = {r["mac"]: r["adopted_as"] for r in json.loads(cli("node", "discovered", "--all", "--json").stdout)}
        assert rows == {macs[0]: "auto1", macs[1]: "auto2", macs[2]: None}
        assert (cli.site / "cluster.yaml").read_text().startswith("# the test cluster")
        server.wait_log('msg="could not adopt" mac=52:54:00:dd:00:03 error="every name of auto[1-2] is taken"')
    assert server.stop() == 0
    assert "Traceback" not in "\n".join(server.lines)
