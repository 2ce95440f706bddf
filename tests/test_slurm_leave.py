"""Nodes leaving and changing, against the real daemons (see labs/slurm.py): retire with a job
running, a node that stops answering set DOWN and back by itself, the hardware drift guard and
`slurm accept`, the hostfile of the nodes that are up.

One cluster for the module; the tests run in file order and each says what it leaves.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from labs.site import numbered
from labs.slurm import RESTART_SLURMCTLD, booted_cluster, lab_site
from provisioner.artifacts import layout
from provisioner.inventory import load_inventory

pytestmark = [pytest.mark.netns, pytest.mark.daemons]

DOWN_AFTER = 6
HOSTFILE = "/tmp/leave-mpi.hosts"  # in the controller's private /tmp
INVENTORY = lab_site(numbered(4), slurm={"down_after": DOWN_AFTER, "hostfile": HOSTFILE})
NODES = ["node01", "node02", "node03"]
CONTROLLER = ("--conf-dir", "/etc/slurm", "--restart-command", f"sh -c '{RESTART_SLURMCTLD}'")
BUSY = ("allocated", "mixed")


@pytest.fixture(scope="module")
def cluster():
    with booted_cluster(INVENTORY, NODES) as sl:
        yield sl


def hostfile(cl) -> str:
    path = cl.ctl.work / "priv" / HOSTFILE.lstrip("/")
    return path.read_text() if path.exists() else ""


def listed(text: str) -> list[str]:
    return [line.split()[0] for line in text.splitlines()]


def reason(cl, name: str) -> str | None:
    line = cl.ctl.run(["sinfo", "-h", "-N", "-n", name, "-o", "%E"]).stdout.strip()
    return None if line in ("", "none") else line


def accepted(cl) -> dict:
    path = layout.accepted_hardware(cl.state)
    return json.loads(path.read_text()) if path.exists() else {}


def conf(cl) -> str:
    return (cl.conf_dir / "slurm.conf").read_text()


def post_facts(cl, name: str, memory: int) -> str:
    """`name` reports its real hardware with RealMemory `memory` (as after a DIMM went); the line."""
    real = cl.db.facts(name)
    line = real["slurmd_C"].replace(f"RealMemory={real['memory_mb']}", f"RealMemory={memory}")
    cl.post_facts(name, {**real, "slurmd_C": line, "memory_mb": memory})
    return line.splitlines()[0]


def test_shared_hostfile_and_up_list_follow_what_slurm_can_run_on(cluster):
    cluster.wait(lambda: listed(hostfile(cluster)) == NODES, "the shared hostfile listing the nodes")
    cpus = cluster.db.facts("node01")["cpus"]
    assert hostfile(cluster) == "".join(f"{n} slots={cpus}\n" for n in NODES)
    assert cluster.provisioner("mpi", "hostfile", "--up").stdout == hostfile(cluster)
    cluster.ctl.run(["scontrol", "update", "NodeName=node03", "State=DRAIN", "Reason=admin: fan"])
    assert (
        cluster.provisioner("mpi", "hostfile", "--up", "--format", "mpich").stdout == f"node01:{cpus}\nnode02:{cpus}\n"
    )
    assert listed(cluster.provisioner("mpi", "hostfile").stdout) == [*NODES, "node04"]  # the inventory's
    cluster.wait(lambda: listed(hostfile(cluster)) == NODES[:2], "node03 out of the shared hostfile")
    assert reason(cluster, "node03") == "admin: fan"  # an admin's drain is left alone
    cluster.ctl.run(["scontrol", "update", "NodeName=node03", "State=RESUME"])
    cluster.wait(lambda: listed(hostfile(cluster)) == NODES, "node03 back in the shared hostfile")


def test_a_node_that_stops_answering_goes_down_and_comes_back_by_itself(cluster):
    assert f"SlurmdTimeout={DOWN_AFTER}\n" in conf(cluster) and "ReturnToService=2\n" in conf(cluster)
    cluster.kill_slurmd("node02")  # SIGKILL: a crash
    killed = time.monotonic()
    cluster.wait(lambda: cluster.states().get("node02", "").startswith("down"), "node02 DOWN", timeout=90)
    took = time.monotonic() - killed
    # SlurmdTimeout, plus the ping round and message timeout of slurmctld's ping (28 s seen here)
    assert DOWN_AFTER - 1 <= took <= DOWN_AFTER + 60, took
    print(f"node02 DOWN {took:.1f} s after its slurmd was killed (SlurmdTimeout={DOWN_AFTER})")
    assert reason(cluster, "node02") == "Not responding"
    cluster.wait(lambda: listed(hostfile(cluster)) == ["node01", "node03"], "node02 out of the shared hostfile")
    cluster.start_slurmd("node02")  # it boots again
    cluster.wait(lambda: cluster.states().get("node02") == "idle", "node02 idle again", timeout=60)
    assert reason(cluster, "node02") is None
    cluster.wait(lambda: listed(hostfile(cluster)) == NODES, "node02 back in the shared hostfile")


def test_a_node_back_from_a_crash_with_less_memory_stays_drained(cluster):
    """Its report (sent before slurmd starts) drains it while Slurm still has it DOWN, so
    ReturnToService does not put it back in service when its slurmd registers."""
    cluster.kill_slurmd("node02")
    cluster.wait(lambda: cluster.states().get("node02", "").startswith("down"), "node02 DOWN", timeout=90)
    mem = cluster.db.facts("node02")["memory_mb"]
    post_facts(cluster, "node02", 2000)
    want = f"hardware changed: RealMemory {mem} -> 2000"
    cluster.wait(lambda: reason(cluster, "node02") == want, "node02 drained for its memory")
    cluster.start_slurmd("node02")
    cluster.wait(lambda: cluster.states().get("node02") == "drained", "node02 registered, still drained", timeout=60)
    assert reason(cluster, "node02") == want
    cluster.report_facts("node02")
    cluster.wait(lambda: cluster.states().get("node02") == "idle", "node02 resumed")


def test_hardware_drift_drains_the_node_until_it_is_back_or_accepted(cluster):
    real = cluster.db.facts("node01")
    mem = real["memory_mb"]
    held = next(ln for ln in conf(cluster).splitlines() if ln.startswith("NodeName=node01 "))
    assert f"RealMemory={mem}" in held
    want = f"hardware changed: RealMemory {mem} -> 2000"

    post_facts(cluster, "node01", 2000)
    cluster.wait(lambda: reason(cluster, "node01") == want, "node01 drained for its memory")
    assert cluster.states()["node01"] in ("drained", "draining")
    assert held in conf(cluster).splitlines()  # not silently shrunk
    assert cluster.show_node("node01")["RealMemory"] == str(mem)
    assert f"RealMemory={mem}" in accepted(cluster)["node01"]["slurmd_C"]
    assert "node01" not in listed(cluster.provisioner("mpi", "hostfile", "--up").stdout)

    cluster.report_facts("node01")  # the DIMM reseated: the same hardware as accepted
    cluster.wait(lambda: cluster.states().get("node01") == "idle", "node01 resumed")
    assert reason(cluster, "node01") is None

    line = post_facts(cluster, "node01", 2000)
    cluster.wait(lambda: reason(cluster, "node01") == want, "node01 drained again")
    res = cluster.provisioner("slurm", "accept", "node01", *CONTROLLER)
    assert res.stdout.startswith("accepted the reported hardware of 1 node(s)\n"), res.stdout
    assert f"{line} NodeAddr=10.99.0.11" in conf(cluster).splitlines()
    cluster.wait(lambda: cluster.show_node("node01").get("RealMemory") == "2000", "RealMemory=2000 in slurmctld")
    cluster.wait(lambda: cluster.states().get("node01") == "idle", "node01 resumed after accept")
    assert "RealMemory=2000" in accepted(cluster)["node01"]["slurmd_C"]

    res = cluster.provisioner("slurm", "accept", "node04", *CONTROLLER, check=False)
    assert res.returncode == 1 and "node04 has reported no hardware yet" in res.stderr, res.stderr

    cluster.report_facts("node01")  # and back to the real memory, accepted again
    cluster.wait(lambda: reason(cluster, "node01") == f"hardware changed: RealMemory 2000 -> {mem}", "drained")
    cluster.provisioner("slurm", "accept", "node01", *CONTROLLER)
    cluster.wait_idle(NODES)
    assert held in conf(cluster).splitlines()


def test_retire_waits_for_the_running_job_then_slurm_and_the_state_dir_forget_the_node(cluster):
    # a first boot still folds in by itself
    cluster.boot("node04")
    cluster.wait_idle(["node04"])
    assert reason(cluster, "node04") is None and "node04" in accepted(cluster)
    cluster.wait(lambda: "node04" in listed(hostfile(cluster)), "node04 in the shared hostfile")
    archive = layout.overlay_archive(cluster.state, "node04")
    assert archive.exists()

    job = cluster.ctl.run(
        ["sbatch", "--parsable", "-w", "node04", "-o", "/tmp/job.out", "--wrap", "sleep 20; echo done"]
    )
    job_id = job.stdout.strip()
    cluster.wait(lambda: cluster.states().get("node04") in BUSY, "the job running on node04")

    res = cluster.provisioner("node", "retire", "node04", "--timeout", "1", *CONTROLLER, check=False)
    assert res.returncode == 1
    assert f"node04 still run job(s) {job_id} after 1 s: nothing removed" in res.stderr, res.stderr
    assert cluster.states()["node04"] == "draining" and (reason(cluster, "node04") or "").startswith("retiring")
    assert "node04" in [n.name for n in load_inventory(cluster.inv.path).nodes]

    started = time.monotonic()
    res = cluster.provisioner("node", "retire", "node04", *CONTROLLER)
    waited = time.monotonic() - started
    assert f"waiting for job(s) {job_id} on node04" in res.stdout, res.stdout
    # slurmctld restarted for the new node set: by retire, or by the watcher if it came first
    assert re.search(r"retired 1 node\(s\); slurmctld: (restarted|none)\n$", res.stdout), res.stdout
    assert waited > 2, waited
    assert (cluster.nodes["node04"].work / "priv" / "tmp" / "job.out").read_text() == "done\n"  # it finished

    assert "node04" not in cluster.states()
    assert "node04" not in conf(cluster) and "node04" not in (cluster.conf_dir / "gres.conf").read_text()
    assert "node04" not in [n.name for n in load_inventory(cluster.inv.path).nodes]
    assert "node04" not in accepted(cluster)
    assert not archive.exists()
    leftovers = subprocess.run(
        ["find", str(cluster.state.root), "-name", "*node04*"], capture_output=True, text=True
    ).stdout
    assert leftovers == "", leftovers
    assert "node04" not in hostfile(cluster)
    cluster.wait_idle(NODES)


def test_retire_force_does_not_wait_and_slurm_kills_the_job(cluster):
    job = cluster.ctl.run(["sbatch", "--parsable", "--no-requeue", "-w", "node03", "--wrap", "sleep 300"])
    job_id = job.stdout.strip()
    cluster.wait(lambda: cluster.states().get("node03") in BUSY, "the job running on node03")
    started = time.monotonic()
    res = cluster.provisioner("node", "retire", "node03", "--force", *CONTROLLER)
    assert time.monotonic() - started < 60
    assert "node03: down, their jobs killed in Slurm" in res.stdout, res.stdout
    assert job_id not in cluster.ctl.run(["squeue", "-h", "-o", "%i"]).stdout
    assert "node03" not in cluster.states() and "node03" not in conf(cluster)
    cluster.wait(lambda: listed(hostfile(cluster)) == ["node01", "node02"], "node03 out of the shared hostfile")
    assert sorted(cluster.ctl.run(["srun", "-N2", "hostname"]).stdout.split()) == ["node01", "node02"]
