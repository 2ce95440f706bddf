"""The README's main job, as a user runs it: `provisioner demo` builds (or takes from its
cache) a Debian image with systemd, munge and slurmd, PXE-boots qemu guests from
`provisioner serve` and ends when Slurm runs a job on each. Two guests at once here, as the
README runs it (`--nodes 1 --unlisted 1`): node01 is listed; the other's MAC is in no
inventory, so the demo site's `discovery: {mode: auto}` adopts it as node02 (zero-touch join,
issue 18) and it boots to `idle` and runs `srun hostname` like the listed one; so this also
proves that simultaneous boots both join. The demo's image is `image build`'s default set, so
this also proves that set boots into Slurm with what it promises (MPI, sshd)."""

import json
import os
import re
import subprocess
import time
from collections.abc import Callable

import pytest

from conftest import Cli
from provisioner.artifacts import images, layout
from provisioner.demo import site as demo_site
from provisioner.demo.run import Demo
from provisioner.paths import State


def boots(test):
    """Marks of a test that runs the demo: namespaces, qemu guests, real daemons."""
    return pytest.mark.netns(pytest.mark.qemu(pytest.mark.daemons(test)))


def test_the_demo_image_is_the_default_set():
    assert demo_site.IMAGE_PACKAGES == images.DEFAULT_PACKAGES


@boots
def test_demo_boots_a_listed_and_an_unlisted_node_that_join_slurm(cli, tmp_path):
    work = tmp_path / "demo"
    demo = subprocess.Popen(
        [cli.exe, "demo", "--work", str(work), "--nodes", "1", "--unlisted", "1", "--timeout", "900"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    out = demo.communicate(timeout=1800)[0]
    assert demo.returncode == 0, out[-6000:]
    unlisted = demo_site.unlisted_mac(1)
    assert f"join       {unlisted}, in no node entry, adopted as node02 (10.77.0.12)" in out, out[-4000:]
    for node in ("node01", "node02"):
        assert f"srun -w {node} hostname -> {node}" in out, out[-4000:]
        for stage in ("dhcp", "ipxe", "kernel", "initramfs", "switch_root", "registered"):
            assert f"{node}: {stage}" in out, (stage, out[-4000:])
        # The booted nodes have what the default set promises: OpenMPI as mpirun, MPICH, and an
        # sshd serving the node's own host key (from the ssh overlay); machine IDs differ.
        assert re.search(
            rf"check +{node}: Open MPI 4\.\S+, MPICH 4\.\S+, sshd with its own host key, "
            r"machine-id [0-9a-f]{8}",
            out,
        ), out[-4000:]
    # Overlay edits reach a running node through its agent, no reboot, safely (issue 26).
    for line in (
        r"/etc/provisioner-demo edited on the master reached the running node in -?[0-9.]+ s after the build "
        r"\(its timeline: runtime generation [0-9]+ at [0-9.]+ s",
        r"its reload action ran once",
        r"/etc/provisioner-demo-dropped, dropped from the overlay, is gone from the node",
        r"the hand edit of /etc/provisioner-demo shows in `overlay diff --live`",
        r"a corrupt and a truncated archive were refused \(sha256, unpack\); the node kept its files",
        r"serve stopped 10 s and a build meanwhile: the node kept its files; it caught up [0-9.]+ s after",
    ):
        assert re.search(rf"runtime +node01: {line}", out), (line, out[-4000:])
    assert "total " in out  # the boot timeline from `provisioner status NODE --timeline`
    assert "cleanup    stopped every process" in out
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    assert f"pvdemo{demo.pid}" not in left, left  # its own (other demos may run meanwhile)
    # Nodes share the image's root: it holds no SSH host keys of its own (openssh-server's
    # postinst made some) and no machine ID, D-Bus's included (systemd would copy that one).
    root = layout.image_rootfs(State(work / "state"), demo_site.IMAGE)
    assert (root / "usr/sbin/sshd").exists()
    assert not list((root / "etc/ssh").glob("ssh_host_*")), sorted(os.listdir(root / "etc/ssh"))
    assert (root / "etc/machine-id").read_text() == ""
    assert os.readlink(root / "var/lib/dbus/machine-id") == "/etc/machine-id"


@boots
def test_an_unlisted_node_stays_out_of_slurm_until_approved(cli, tmp_path):
    """Approve mode (issue 18) with the demo's real cluster: a guest whose MAC no inventory
    names goes round the wait script (listed by `node discovered`, no node entry, no overlay
    archive, not in Slurm) until `provisioner node approve MAC`, then joins by itself, with no
    power cycle: idle in Slurm, and `srun hostname` runs on it. The listed node01 is never
    booted (one guest is enough; slurmctld only needs a node in slurm.conf)."""
    out: list[str] = []
    demo = Demo(tmp_path / "demo", nodes=1, unlisted=1, discovery="approve", timeout=900, echo=out.append)
    admin = Cli(cli.exe, demo.site.root, demo.state.root)
    mac = demo_site.unlisted_mac(1)
    console = demo.logs / "unlisted1-console.log"

    def shown() -> str:
        return console.read_text(errors="replace") if console.exists() else ""

    def until(what: str, done: Callable[[], bool], timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"not {what} in {timeout} s; sinfo {demo.sinfo()}\n{shown()[-3000:]}")
            time.sleep(2)

    inv = demo.write_site()
    demo.build_image()
    demo.build_artifacts()
    try:
        demo.start_network()
        demo.start_master(inv)
        demo.booted_at = time.time()
        demo.boot_guest("unlisted1", mac)
        waiting = f"{mac} is not a node of demo yet"
        until("twice round the wait script", lambda: shown().count(waiting) >= 2)
        found = {r["mac"]: r["adopted_as"] for r in json.loads(admin("node", "discovered", "--json").stdout)}
        assert found == {mac: None}, found
        assert mac not in admin("node", "list", "--json").stdout
        assert "node02" not in demo.sinfo()
        assert not layout.overlay_archive(demo.state, "node02").exists()
        assert "provisioner.overlay" not in shown()
        approved = admin("node", "approve", mac).stdout
        assert f"adopted {mac} as node02 (10.77.0.12)" in approved, approved
        until("idle", lambda: demo.sinfo().get("node02") == "idle")
        assert demo.master is not None
        res = demo.master.run(["srun", "-w", "node02", "hostname"], timeout=240)
        assert (res.returncode, res.stdout.strip()) == (0, "node02"), res.stderr
    finally:
        demo.cleanup()
    # approved during a wait: at most one more round, then its own script
    text = shown()
    assert text.count(waiting) <= 4 and "provisioner.node=node02" in text, text[-3000:]
    assert "pvdemo" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@boots
def test_a_failing_demo_names_the_stage_shows_logs_and_cleans_up(cli, tmp_path):
    res = subprocess.run(
        [cli.exe, "demo", "--work", str(tmp_path / "demo"), "--timeout", "3"],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 1
    assert "Error: stage join failed: nodes not idle after 3 s" in res.stderr, res.stderr[-3000:]
    assert "node01 console:" in res.stderr and "serve log:" in res.stderr
    assert "Traceback" not in res.stderr
    assert "cleanup    stopped every process" in res.stdout
    assert "pvdemo" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
