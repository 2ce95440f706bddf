"""Slurm, MUNGE and MPI against the real daemons: a controller running the generated files and
nodes in namespaces started with only their node-side overlay files (see labs/slurm.py).

One cluster for the module (bring-up is the slow part); tests that change it put it back.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from labs.site import numbered
from labs.slurm import PROVISIONER, RESTART_SLURMCTLD, booted_cluster, lab_site

pytestmark = [pytest.mark.netns, pytest.mark.daemons]

INVENTORY = lab_site(
    [*numbered(3), *(n | {"profiles": ["late"]} for n in numbered(5)[3:])],
    {"late": {"overlays": ["munge", "slurm", "mpi"], "partitions": ["late"]}},
)
NODES = ["node01", "node02", "node03"]

HELLO = r"""
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int rank, size, len; char name[MPI_MAX_PROCESSOR_NAME];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank); MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_processor_name(name, &len);
    int sum = 0; MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    printf("hello %d/%d on %s sum=%d\n", rank, size, name, sum);
    MPI_Finalize();
    return 0;
}
"""


@pytest.fixture(scope="module")
def cluster():
    with booted_cluster(INVENTORY, NODES) as sl:
        yield sl


@pytest.fixture(scope="module")
def hello(cluster):
    """hello world compiled with each MPI's own mpicc."""
    out = {}
    for mpi in ("openmpi", "mpich"):
        exe = cluster.work / f"hello-{mpi}"
        src = cluster.work / "hello.c"
        src.write_text(HELLO)
        subprocess.run([f"mpicc.{mpi}", "-o", str(exe), str(src)], check=True, capture_output=True)
        out[mpi] = exe
    return out


def _hosts_of(output: str) -> list[str]:
    return sorted(re.findall(r"^hello \d+/3 on (\S+) sum=3$", output, re.M))


def test_nodes_join_and_srun_runs_on_the_inventory_names(cluster):
    states = cluster.states()
    assert all(states.get(n) == "idle" for n in NODES), states
    res = cluster.ctl.run(["srun", "-N3", "hostname"])
    assert sorted(res.stdout.split()) == NODES


def test_nodename_line_is_what_slurmd_C_prints_on_the_node(cluster):
    conf = (cluster.conf_dir / "slurm.conf").read_text()
    for name in NODES:
        printed = cluster.nodes[name].run(["slurmd", "-C"]).stdout.splitlines()[0]
        line = next(ln for ln in conf.splitlines() if ln.startswith(f"NodeName={name} "))
        assert line == f"{printed} NodeAddr={cluster.inv.node(name).ip}"
    shown = cluster.show_node("node02")
    hw = dict(w.split("=") for w in printed.split())
    assert (shown["CPUTot"], shown["RealMemory"]) == (hw["CPUs"], hw["RealMemory"])


def test_openmpi_hello_over_srun_pmix(cluster, hello):
    res = cluster.ctl.run(["srun", "--mpi=pmix", "-N3", "--ntasks-per-node=1", str(hello["openmpi"])])
    assert _hosts_of(res.stdout) == NODES, res.stdout + res.stderr


def test_mpich_hello_over_srun_pmi2(cluster, hello):
    res = cluster.ctl.run(["srun", "--mpi=pmi2", "-N3", "--ntasks-per-node=1", str(hello["mpich"])])
    assert _hosts_of(res.stdout) == NODES, res.stdout + res.stderr


def test_mpirun_with_the_generated_hostfile_inside_an_allocation(cluster, hello):
    hostfile = cluster.work / "hostfile"
    env = {**os.environ, "PROVISIONER_SITE": str(cluster.inv.path.parent), "PROVISIONER_STATE": str(cluster.state.root)}
    text = subprocess.run(
        [PROVISIONER, "mpi", "hostfile", "--partition", "batch"], env=env, check=True, capture_output=True, text=True
    ).stdout
    cpus = cluster.db.facts("node01")["cpus"]
    assert text.splitlines() == [f"{n} slots={cpus}" for n in NODES]
    hostfile.write_text(text)
    res = cluster.ctl.run(
        [
            "salloc",
            "-N3",
            "-w",
            ",".join(NODES),
            "mpirun",
            "--allow-run-as-root",
            "--hostfile",
            str(hostfile),
            "-np",
            "3",
            "--map-by",
            "node",
            str(hello["openmpi"]),
        ]
    )
    assert _hosts_of(res.stdout) == NODES, res.stdout + res.stderr


def test_node_without_facts_waits_out_of_every_partition_then_joins(cluster):
    """The chosen behaviour: listed State=FUTURE in no partition, so no job lands on a 1-CPU
    placeholder, its slurmd running; when its facts arrive it joins with no hand edit."""
    node = cluster.node("node04")
    cluster.start_slurmd("node04")
    conf = (cluster.conf_dir / "slurm.conf").read_text()
    assert "NodeName=node04 State=FUTURE NodeAddr=10.99.0.14\n" in conf
    assert "PartitionName=late Default=NO" in conf
    cluster.wait(lambda: "started" in node.log("var/log/slurm/slurmd.log"), "slurmd on node04 running")
    assert "Partitions" not in cluster.show_node("node04")
    assert "node04" not in cluster.states()
    assert cluster.slurmd["node04"].poll() is None
    cluster.report_facts("node04")
    cluster.wait_idle(["node04"])
    assert cluster.ctl.run(["srun", "-p", "late", "hostname"]).stdout.split() == ["node04"]


def test_node_with_the_wrong_munge_key_is_refused(cluster):
    cluster.node("node05", munge_key=os.urandom(1024))
    cluster.report_facts("node05")  # HTTP facts are not MUNGE's business: it gets into slurm.conf
    cluster.wait(
        lambda: "NodeName=node05 CPUs=" in (cluster.conf_dir / "slurm.conf").read_text(), "node05 facts applied"
    )
    cluster.start_slurmd("node05")
    cluster.wait(
        lambda: "Munge decode failed: Invalid credential" in cluster.ctl.log("var/log/slurm/slurmctld.log"),
        "slurmctld refusing node05's credential",
    )
    assert cluster.show_node("node05")["State"].startswith("UNKNOWN")
    assert cluster.states().get("node05") != "idle"
    assert "node05" not in cluster.ctl.run(["srun", "-N3", "hostname"]).stdout


def test_a_change_of_facts_drains_the_node_until_accepted(cluster):
    """node01 reports other hardware (as after a memory upgrade): slurm.conf keeps what it
    holds and the node is drained naming the change; `slurm accept` takes it, and the real
    hardware again is one more accept (test_slurm_leave.py covers the drift guard in full)."""
    real = cluster.db.facts("node01")
    line = real["slurmd_C"].replace(f"RealMemory={real['memory_mb']}", "RealMemory=2000")
    cluster.post_facts("node01", {**real, "slurmd_C": line, "memory_mb": 2000})
    cluster.wait(lambda: cluster.show_node("node01").get("Reason", "").startswith("hardware"), "node01 drained")
    drained = f"hardware changed: RealMemory {real['memory_mb']} -> 2000"
    assert drained in cluster.ctl.run(["sinfo", "-h", "-n", "node01", "-o", "%E"]).stdout
    assert f"RealMemory={real['memory_mb']} NodeAddr=10.99.0.11\n" in (cluster.conf_dir / "slurm.conf").read_text()
    accept = (
        "slurm",
        "accept",
        "node01",
        "--conf-dir",
        "/etc/slurm",
        "--restart-command",
        f"sh -c '{RESTART_SLURMCTLD}'",
    )
    cluster.provisioner(*accept)
    cluster.wait(lambda: cluster.show_node("node01").get("RealMemory") == "2000", "RealMemory=2000 in slurmctld")
    assert f"{line} NodeAddr=10.99.0.11\n" in (cluster.conf_dir / "slurm.conf").read_text()
    cluster.report_facts("node01")
    cluster.wait(lambda: cluster.show_node("node01").get("Reason", "").startswith("hardware"), "drained again")
    cluster.provisioner(*accept)
    cluster.wait(lambda: cluster.show_node("node01").get("RealMemory") == str(real["memory_mb"]), "real memory back")
    cluster.wait_idle(NODES)
