"""Rollouts (issue 24) without guests: the decisions (`advance`, a pure function of the
persisted rollout and what is seen of its nodes), version pins reaching the boot configs and
holding versions against pruning, and the CLI that starts, shows and steers a rollout.
tests/test_rollout_qemu.py rolls real guests through a real Slurm."""

import json
import re

import pytest

from labs.busyroot import make_root
from labs.site import write_site
from provisioner.actions import rollout as ro
from provisioner.actions.context import Context
from provisioner.artifacts import pins
from provisioner.errors import UserError
from provisioner.nodestate import NodeStateDB
from provisioner.paths import Site, State
from test_image_versions import CLUSTER_YAML  # two nodes of image tiny, one of image other
from test_image_versions import pinned as boots

IDLE_V2 = ro.Seen(slurm="idle", booted="v2", stage="registered", registered=True)


def plan(n=4, canary=1, size=2, auto=True, timeout=100.0):
    names = [f"n{i}" for i in range(1, n + 1)]
    nodes = [ro.NodeRoll(name, b, "v1") for b, group in enumerate(ro.batches(names, canary, size)) for name in group]
    return ro.Rollout("r1", "img", "v2", nodes, canary, size, timeout, auto)


def phases(r):
    return {n.name: n.phase for n in r.nodes}


def test_canary_first_then_batches_each_once_the_last_is_back():
    r = plan()
    assert [[n.name for n in r.nodes if n.batch == b] for b in range(r.batches)] == [["n1"], ["n2", "n3"], ["n4"]]
    acts = ro.advance(r, {}, 0)
    assert (acts.pin, acts.reboot) == ({"n1": "v2"}, ["n1"])
    # Its job runs for long: no timeout counts meanwhile, and no other node moves.
    for t in (50, 500, 5000):
        assert not ro.advance(r, {"n1": ro.Seen(slurm="mixed@", jobs=1)}, t)
    assert phases(r)["n1"] == ro.REBOOTING and r.nodes[0].free is None
    # Up on v2 but not yet in service: wait.
    assert not ro.advance(r, {"n1": ro.Seen(slurm="down*", booted="v2", stage="root")}, 5001)
    # Slurm's "idle" alone is not enough: the booted system must have registered.
    assert not ro.advance(r, {"n1": ro.Seen(slurm="idle", booted="v2", stage="switch_root")}, 5001)
    acts = ro.advance(r, {"n1": IDLE_V2}, 5002)
    assert phases(r)["n1"] == ro.UPDATED
    assert acts.reboot == ["n2", "n3"] and acts.pin == {"n2": "v2", "n3": "v2"}
    assert not ro.advance(r, {"n2": IDLE_V2}, 5003)  # n3 still out: the batch is not done
    acts = ro.advance(r, {"n2": IDLE_V2, "n3": IDLE_V2}, 5004)
    assert acts.reboot == ["n4"]
    ro.advance(r, {"n4": IDLE_V2}, 5005)
    assert r.state == ro.DONE and set(phases(r).values()) == {ro.UPDATED}
    assert "4/4 nodes updated" in r.summary()


def test_a_canary_on_the_wrong_version_stops_the_rollout_and_is_rolled_back():
    r = plan()
    ro.advance(r, {}, 0)
    acts = ro.advance(r, {"n1": ro.Seen(slurm="idle", booted="v1", stage="registered", registered=True)}, 10)
    # Slurm reaches it: rebooted through Slurm, pinned back first.
    assert (acts.pin, acts.reboot, acts.cycle) == ({"n1": "v1"}, ["n1"], [])
    assert phases(r)["n1"] == ro.ROLLING_BACK and "came back on v1, not v2" in r.nodes[0].reason
    assert r.state == ro.RUNNING
    ro.advance(r, {"n1": ro.Seen(slurm="idle", booted="v1", stage="registered", registered=True)}, 20)
    assert r.state == ro.FAILED and phases(r) == {
        "n1": ro.ROLLED_BACK,
        "n2": ro.PENDING,
        "n3": ro.PENDING,
        "n4": ro.PENDING,
    }
    assert "n1 rolled-back: came back on v1, not v2; rolling back to v1" in r.reason
    assert not ro.advance(r, {}, 30)  # ended: nothing more happens


def test_a_failed_boot_is_rolled_back_even_where_slurm_cannot_reach_it():
    r = plan()
    ro.advance(r, {}, 0)
    failed = ro.Seen(slurm="down*", failed="cannot mount the NFS root", stage="failed")
    acts = ro.advance(r, {"n1": failed}, 10)
    assert (acts.pin, acts.reboot, acts.cycle) == ({"n1": "v1"}, [], ["n1"])
    # Still in the broken boot (or another one that began before the pin moved): waited out.
    assert not ro.advance(r, {"n1": ro.Seen(slurm="down*", booted="v2", stage="root")}, 20)
    assert phases(r)["n1"] == ro.ROLLING_BACK
    # Back on v1 but left DOWN by its reboot timing out in slurmctld: resumed.
    acts = ro.advance(r, {"n1": ro.Seen(slurm="down", booted="v1", stage="registered", registered=True)}, 30)
    assert acts.resume == ["n1"]
    ro.advance(r, {"n1": ro.Seen(slurm="idle", booted="v1", stage="registered", registered=True)}, 40)
    assert r.state == ro.FAILED and phases(r)["n1"] == ro.ROLLED_BACK
    assert "boot failed: cannot mount the NFS root" in r.reason


def test_without_auto_rollback_a_timeout_fails_and_a_stuck_rollback_says_so():
    r = plan(auto=False, timeout=100)
    ro.advance(r, {}, 0)
    ro.advance(r, {"n1": ro.Seen(slurm="idle", jobs=0)}, 10)  # its reboot may start: the clock runs
    assert not ro.advance(r, {"n1": ro.Seen(slurm="down*", stage="kernel")}, 109)
    ro.advance(r, {"n1": ro.Seen(slurm="down*", stage="kernel")}, 111)
    assert r.state == ro.FAILED and phases(r)["n1"] == ro.BROKEN
    assert "not back in service 100 s after its reboot began (stage kernel, slurm down*)" in r.reason
    r = plan(auto=True, timeout=100)
    ro.advance(r, {}, 0)
    ro.advance(r, {"n1": ro.Seen(failed="x")}, 10)
    ro.advance(r, {"n1": ro.Seen()}, 200)
    assert r.state == ro.FAILED and phases(r)["n1"] == ro.STUCK


def test_pause_starts_no_batch_but_follows_the_nodes_out():
    r = plan(canary=2)
    ro.advance(r, {}, 0)
    r.state = ro.PAUSED
    assert not ro.advance(r, {"n1": IDLE_V2, "n2": IDLE_V2}, 10)
    assert phases(r)["n1"] == phases(r)["n2"] == ro.UPDATED
    r.state = ro.RUNNING
    assert ro.advance(r, {}, 20).reboot == ["n3", "n4"]


def test_observe_reads_the_latest_boot_since_the_reboot():
    ev = [
        {"stage": "root", "at": 1, "detail": "nfs:10.0.0.1:/images/d/versions/v1/rootfs"},
        {"stage": "failed", "at": 5, "detail": "cannot mount"},
        {"stage": "root", "at": 6, "detail": "nfs:10.0.0.1:/images/d/versions/v2/rootfs"},
        {"stage": "registered", "at": 7, "detail": None},
    ]
    assert ro.observe(ev, None) == ro.Seen(booted="v2", stage="registered", registered=True)
    assert ro.observe(ev[:2], 2) == ro.Seen(failed="cannot mount", stage="failed")
    assert ro.observe(ev[:3], None) == ro.Seen(booted="v2", stage="root")
    assert ro.observe(ev, 8) == ro.Seen()


def test_batch_sizes():
    assert ro.batch_size("3", 10) == 3 and ro.batch_size("25%", 10) == 3 and ro.batch_size("1%", 10) == 1
    for bad in ("0", "x", "0%", "150%", "-2"):
        with pytest.raises(UserError, match="bad batch size"):
            ro.batch_size(bad, 10)
    assert ro.batches(["a", "b", "c"], 0, 2) == [["a", "b"], ["c"]]


# -- pins and the CLI ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return make_root(tmp_path_factory.mktemp("root") / "rootfs", "#!/bin/sh\nexec sh\n")


def test_pins_reach_the_boot_configs_and_hold_versions(cli, src):
    write_site(cli.site, CLUSTER_YAML)
    cli("image", "import", "tiny", src)
    cli("image", "import", "tiny", src)
    state = State(cli.state)
    with pins.editing(state) as held:
        held["node01"] = pins.Pin("tiny", "v1")
        held["other01"] = pins.Pin("tiny", "v1")  # another image's node: ignored
    cli("overlay", "build")
    assert boots(cli, "node01") == "v1" and boots(cli, "node02") == "v2"
    res = cli("image", "rm", "tiny", "--version", "v1", check=False)
    assert res.returncode == 1 and "tiny v1 is pinned for a rollout" in res.stderr
    # A pin to a version that is gone is ignored: the node boots the current one.
    with pins.editing(state) as held:
        held["node01"] = pins.Pin("tiny", "v9")
    cli("overlay", "build")
    assert boots(cli, "node01") == "v2"


def test_cli_starts_shows_and_steers_a_rollout(cli, src):
    write_site(cli.site, CLUSTER_YAML)
    cli("image", "import", "tiny", src)
    cli("image", "import", "tiny", src)
    state = State(cli.state)
    db = NodeStateDB(state.db)
    db.record_stage("node02", "root", "nfs:10.77.0.1:/images/tiny/versions/v1/rootfs")
    db.close()
    bad = cli("rollout", "start", "tiny", "--to", "v7", check=False)
    assert bad.returncode == 1 and "tiny has no version v7 (has: v1, v2)" in bad.stderr
    bad = cli("rollout", "start", "tiny", "other01", check=False)
    assert "not nodes of image tiny: other01" in bad.stderr
    assert "no rollout yet" in cli("rollout", "status", check=False).stderr
    out = cli("rollout", "start", "tiny", "--to", "v2", "--canary", "1", "--batch", "50%", "--no-run").stdout
    assert re.search(r"rollout \S+: tiny -> v2 running, 0/2 nodes updated, batch 1/2", out), out
    # Every node of the rollout is pinned to what it runs (node02 booted v1; node01 never
    # booted: the current v2), so a node rebooting by itself boots that.
    assert pins.load(state) == {"node01": pins.Pin("tiny", "v2"), "node02": pins.Pin("tiny", "v1")}
    assert boots(cli, "node02") == "v1"  # start rebuilt its boot configs
    shown = json.loads(cli("rollout", "status", "--json").stdout)
    assert [(n["name"], n["batch"], n["previous"], n["phase"]) for n in shown["nodes"]] == [
        ("node01", 0, "v2", "pending"),
        ("node02", 1, "v1", "pending"),
    ]
    again = cli("rollout", "start", "tiny", check=False)
    assert again.returncode == 1 and "finish or abort it first" in again.stderr
    # One runner at a time: a second one (say, started again by hand) is refused.
    with ro.runner_lock(Context(Site(cli.site), state)):
        res = cli("rollout", "run", check=False)
    assert res.returncode == 1 and "another process is running the rollout" in res.stderr, res.stderr
    assert "paused" in cli("rollout", "pause").stdout
    assert "tiny -> v2 paused" in cli("status").stdout
    assert "running" in cli("rollout", "resume").stdout
    assert "aborted" in cli("rollout", "abort").stdout
    assert "it has ended" in cli("rollout", "pause", check=False).stderr
    table = cli("rollout", "status").stdout
    assert re.search(r"node02\s+2\s+v1\s+pending", table), table
    # A corrupt state file is a clear error, not a traceback.
    ro_file = state.root / "rollout.json"
    ro_file.write_text("{")
    res = cli("rollout", "status", check=False)
    assert res.returncode == 1 and "cannot read the rollout state" in res.stderr and "Traceback" not in res.stderr
