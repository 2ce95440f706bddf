"""Rollouts (issue 24) for real: two qemu (TCG) guests PXE-booted by `provisioner serve` into a
real Slurm (the demo's machinery: nfs-ganesha, slurmctld, slurm apply --watch), rebooted by
slurmd's RebootProgram, booting again the version their pins name.

1. v2 rolled over both nodes while a job runs on the canary: the canary's reboot waits for the
   job (Slurm drains it meanwhile), both nodes come back idle on v2.
2. A broken v3 (no rootfs in the export: the initramfs cannot mount the root) with --canary 1
   --auto-rollback: the canary's initramfs reports the failure, the rollout stops, the canary is
   pinned back and comes back idle on v2, and the other node never reboots.

The guests are shared by both checks (module fixture); the second needs the first's v2."""

import time

import pytest

from conftest import Cli
from provisioner.actions import rollout as ro
from provisioner.artifacts import pins
from provisioner.demo import rollout as demo_rollout
from provisioner.demo import site as demo_site
from provisioner.demo.run import PROVISIONER, Demo

# Two TCG boots, then four reboots one after another, each a few minutes of emulated CPU.
pytestmark = [pytest.mark.netns, pytest.mark.qemu, pytest.mark.daemons, pytest.mark.timeout(2700)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    out: list[str] = []
    demo = Demo(
        tmp_path_factory.mktemp("rollout") / "demo",
        nodes=2,
        timeout=1200,
        kernel_args=(demo_rollout.RETRY_ARG,),
        reboot=True,
        echo=out.append,
    )
    try:
        inv = demo.boot_cluster()
        yield demo, [n.name for n in inv.nodes], out
    finally:
        demo.cleanup()
        print("\n".join(out[-200:]))


def test_v2_rolls_over_both_nodes_and_waits_for_the_canarys_job(cluster):
    demo, nodes, _ = cluster
    up = demo_rollout.roll_upgrade(demo, demo_site.IMAGE, nodes)
    assert demo_rollout.upgrade_problems(up, nodes) == [], up.rolled.output
    r = up.rolled.rollout
    assert up.rolled.returncode == 0 and r.state == ro.DONE, up.rolled.output
    assert [n.phase for n in r.nodes] == [ro.UPDATED, ro.UPDATED]
    # The canary's reboot waited: Slurm drained it (the reboot pending) while the job ran.
    assert any("drain" in s or "@" in s for s in up.states_during_job), up.states_during_job
    assert up.canary_boot is not None and up.canary_boot >= up.job_ended - 5
    assert demo.sinfo() == {n: "idle" for n in nodes}
    # current is still v1: the nodes keep their pins to v2.
    assert pins.load(demo.state) == {n: pins.Pin(demo_site.IMAGE, up.version) for n in nodes}
    assert f"rollout {r.id}: {demo_site.IMAGE} -> {up.version} done, 2/2 nodes updated" in up.rolled.output


def test_a_broken_version_fails_its_canary_which_is_rolled_back(cluster):
    demo, nodes, _ = cluster
    started = time.time()
    rolled = demo_rollout.roll_broken(demo, demo_site.IMAGE, nodes)
    assert demo_rollout.broken_problems(rolled, "v2", nodes, demo.sinfo()) == [], rolled.output
    assert rolled.returncode == 1 and "Error: rollout" in rolled.output and "failed" in rolled.output
    assert "cannot mount the NFS root" in (rolled.failed[nodes[0]] or ""), rolled.failed
    assert rolled.rollout.node(nodes[1]).phase == ro.PENDING and rolled.boots[nodes[1]] == 0
    # The canary's own word: the failed boot, then a boot of v2 that registered.
    stages = [s for s, _ in rolled.events[nodes[0]]]
    print(f"{nodes[0]} since the broken rollout began: {rolled.events[nodes[0]]}")
    assert "failed" in stages and "registered" in stages[stages.index("failed") :], stages
    assert pins.load(demo.state)[nodes[0]] == pins.Pin(demo_site.IMAGE, "v2")
    admin = Cli(PROVISIONER, demo.site.root, demo.state.root)
    shown = admin("status").stdout
    assert f"-> {rolled.rollout.to} failed" in shown and f"{nodes[0]} rolled-back" in shown, shown
    assert time.time() - started < 4 * demo_rollout.TIMEOUT
