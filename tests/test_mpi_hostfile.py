"""MPI hostfiles, OpenMPI's MCA settings (following each node's fabric) and the node-side
munge/slurm/mpi overlays."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest
import yaml

from labs.site import write_site
from labs.slurm import install_overlay
from provisioner.artifacts import layout, overlay_build, secrets
from provisioner.inventory import InventoryInvalid, parse_text
from provisioner.nodestate import NodeStateDB
from provisioner.nodestate.slurm import SlurmNode, parse_node_status
from provisioner.paths import Site, State
from provisioner.render.mpi import hostfile
from test_slurm_render import facts_for, inventory

SLOTS = inventory(g01={"mpi_slots": 3})


@pytest.fixture
def inv():
    return parse_text(SLOTS, "cluster.yaml")


def test_openmpi_and_mpich_formats_per_partition(inv):
    facts = {"c01": facts_for("c01"), "g01": facts_for("g01")}
    assert hostfile(inv, facts, "batch") == "c01 slots=8\nc02 slots=1\nc03 slots=1\ng01 slots=3\n"
    assert hostfile(inv, facts, "gpu", "mpich") == "g01:3\n"
    assert hostfile(inv, facts) == hostfile(inv, facts, "batch")  # nfs01 is in no partition
    with pytest.raises(ValueError, match="unknown hostfile format"):
        hostfile(inv, facts, None, "lam")


def mca_params(tmp_path, facts) -> dict[str, str]:
    """openmpi-mca-params.conf of every node of an mpi-only site, from the overlay builder."""
    inv = parse_text(inventory(default={"overlays": ["mpi"]}), "cluster.yaml")
    state = State(tmp_path / "state")
    overlay_build.build(state, Site(tmp_path / "site"), inv, list(inv.nodes), facts=facts)
    out = {}
    for n in inv.nodes:
        for e in overlay_build.read_archive(layout.overlay_archive(state, n.name)):
            if e.path == "etc/openmpi/openmpi-mca-params.conf":
                out[n.name] = e.data.decode()
    return out


def test_mca_params_follow_each_nodes_fabric(tmp_path):
    facts = {
        "c01": {**facts_for("c01"), "rdma": ["rxe0", "mlx5_0"]},
        "c02": {**facts_for("c02"), "rdma": []},
        "g01": {**facts_for("g01"), "rdma": ["../x"]},  # breaks the rules: counts as not reported
    }
    conf = mca_params(tmp_path, facts)
    for text in conf.values():  # every node keeps OpenMPI's TCP on the cluster network
        assert "btl_tcp_if_include = 10.5.0.0/24" in text and "oob_tcp_if_include = 10.5.0.0/24" in text
        assert "btl = ^uct,openib,ofi" in text and "mtl = ^ofi" in text
    assert "reported RDMA devices (mlx5_0, rxe0)" in conf["c01"] and "opal_common_ucx_devices = any" in conf["c01"]
    assert "pml = ^ucx" not in conf["c01"] and "osc = ^pt2pt" in conf["c01"]
    for node, why in (("c02", "no RDMA device"), ("c03", "no fabric yet"), ("g01", "no fabric yet")):
        assert f"{node} reported {why}: UCX and verbs stay off" in conf[node], conf[node]
        assert "pml = ^ucx\nosc = ^ucx,pt2pt\n" in conf[node] and "opal_common_ucx" not in conf[node]


def test_cli_hostfile(cli, tmp_path):
    write_site(cli.site, SLOTS)
    db = NodeStateDB(cli.state / "nodes.sqlite")
    db.set_facts("c02", {**facts_for("c02"), "cpus": 16})
    db.close()
    assert cli("mpi", "hostfile", "--partition", "batch", "--format", "mpich").stdout == "c01:1\nc02:16\nc03:1\ng01:3\n"
    assert cli("mpi", "hostfile", "--partition", "gpu").stdout == "g01 slots=3\n"
    res = cli("mpi", "hostfile", "--partition", "nope", check=False)
    assert res.returncode == 1
    assert "no node is in partition 'nope' (partitions: batch, gpu)" in res.stderr and "Traceback" not in res.stderr


# -- node-side overlays ------------------------------------------------------------------------------


@pytest.fixture
def rendered(inv, tmp_path):
    """c02's overlay archive from provisioner's builder, unpacked as on the node."""
    state = State(tmp_path / "state")
    key = secrets.munge_key(state)
    root = tmp_path / "root"
    install_overlay(state, Site(tmp_path / "site"), inv, "c02", root)
    return root, key


def test_munge_overlay_carries_the_cluster_key_for_munge_only(rendered):
    root, key = rendered
    path = root / "etc/munge/munge.key"
    assert path.read_bytes() == key
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o400
    assert st.st_uid == int(subprocess.run(["id", "-u", "munge"], capture_output=True, text=True).stdout)
    assert (
        os.readlink(root / "etc/systemd/system/multi-user.target.wants/munge.service")
        == "/lib/systemd/system/munge.service"
    )


def test_slurm_overlay_runs_slurmd_configless_and_reports_facts_first(rendered):
    root, _ = rendered
    assert (root / "etc/default/slurmd").read_text().splitlines()[-1] == 'SLURMD_OPTIONS="--conf-server 10.5.0.1:6817"'
    dropin = (root / "etc/systemd/system/slurmd.service.d/provisioner.conf").read_text()
    assert "ConditionPathExists=\n" in dropin and "Restart=on-failure" in dropin
    assert "After=provisioner-facts.service" in dropin
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert {p.name for p in wants.iterdir()} >= {"slurmd.service", "provisioner-facts.service"}
    assert (wants / "provisioner-facts.service").resolve() == root / "etc/systemd/system/provisioner-facts.service"
    script = root / "usr/local/sbin/provisioner-facts"
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    assert 'report="http://10.5.0.1:80/api/v1"' in script.read_text()
    assert "--local-port 600-1023" in script.read_text()
    subprocess.run(["shellcheck", "-s", "sh", str(script)], check=True)


def test_up_hostfile_keeps_inventory_order_and_only_the_nodes_up(inv):
    facts = {"c01": facts_for("c01")}
    assert hostfile(inv, facts, None, "mpich", {"g01", "c01", "nfs01"}) == "c01:8\ng01:3\n"
    assert hostfile(inv, facts, "gpu", "openmpi", set()) == ""


def test_shared_hostfile_setting_wants_an_absolute_path():
    data = yaml.safe_load(SLOTS)
    data["cluster"].setdefault("slurm", {})["hostfile"] = "shared/hosts"
    with pytest.raises(InventoryInvalid, match="'shared/hosts' must be an absolute path"):
        parse_text(yaml.safe_dump(data), "cluster.yaml")
    data["cluster"]["slurm"] |= {"hostfile": "/shared/hosts", "hostfile_format": "lam"}
    with pytest.raises(InventoryInvalid, match="'lam' must be 'openmpi' or 'mpich'"):
        parse_text(yaml.safe_dump(data), "cluster.yaml")


def test_sinfo_states_and_reasons_parse():
    text = "n1|idle|none\nn2|drained|hardware changed: RealMemory 8 -> 4\nn1|idle|none\nn3|down*|Not responding\n"
    assert parse_node_status(text) == {
        "n1": SlurmNode("idle", None),
        "n2": SlurmNode("drained", "hardware changed: RealMemory 8 -> 4"),
        "n3": SlurmNode("down*", "Not responding"),
    }
