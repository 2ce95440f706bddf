"""`provisioner init` on a master whose provisioning network is its own upstream network, and on
one with a network of its own: the starter names the nodes' gateway it chose and why, and
never gives a node the address of this host's router."""

import pytest

from provisioner.inventory import load_inventory

pytestmark = pytest.mark.netns

ROUTER = "10.99.0.2"  # the lowest free address: what `node add` handed out before


def init_and_add(lab, cli, site):
    run = [cli.exe, "--site", str(site)]
    init = lab.server.run([*run, "init", "--name", "c1"], check=False)
    assert init.returncode == 0, init.stderr
    add = lab.server.run([*run, "node", "add", "node01", "--mac", "52:54:00:7c:00:01"], check=False)
    assert add.returncode == 0, add.stderr
    return init.stdout, (site / "cluster.yaml").read_text(), load_inventory(site / "cluster.yaml")


def test_router_on_the_provisioning_network_is_named_and_kept_from_nodes(lab, cli, tmp_path):
    lab.server.run(["ip", "route", "add", "default", "via", ROUTER, "dev", "br0"])
    out, text, inv = init_and_add(lab, cli, tmp_path / "site")
    assert str(inv.cluster.network.gateway) == ROUTER
    assert f"Nodes' gateway: {ROUTER}. This host's own default router, on br0" in out
    assert f"    # Nodes' gateway: {ROUTER}. This host's own default router, on br0" in text
    node_ip = inv.nodes[0].interfaces[0].ip
    assert str(node_ip) == "10.99.0.3", node_ip


def test_a_network_of_its_own_gets_no_gateway(lab, cli, tmp_path):
    out, text, inv = init_and_add(lab, cli, tmp_path / "site")
    assert inv.cluster.network.gateway is None
    assert "Nodes' gateway: none. This host's default route does not leave by br0" in out
    assert "    # gateway: 10.99.0.1\n" in text  # what to uncomment once the master forwards
    assert str(inv.nodes[0].interfaces[0].ip) == "10.99.0.2"
