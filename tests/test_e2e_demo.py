"""The README's main job, as a user runs it: `provisioner demo` builds (or takes from its
cache) a Debian image with systemd, munge and slurmd, PXE-boots qemu guests from
`provisioner serve` and ends when Slurm runs a job on each. Two guests at once here, so this
also proves that simultaneous boots both join. The demo's image is `image build`'s default
set, so this also proves that set boots into Slurm with what it promises (MPI, sshd)."""

import os
import re
import subprocess

import pytest

from provisioner.artifacts import images, layout
from provisioner.demo import site as demo_site
from provisioner.paths import State


def boots(test):
    """Marks of a test that runs the demo: namespaces, qemu guests, real daemons."""
    return pytest.mark.netns(pytest.mark.qemu(pytest.mark.daemons(test)))


def test_the_demo_image_is_the_default_set():
    assert demo_site.IMAGE_PACKAGES == images.DEFAULT_PACKAGES


@boots
def test_demo_boots_two_nodes_that_join_slurm(cli, tmp_path):
    work = tmp_path / "demo"
    res = subprocess.run(
        [cli.exe, "demo", "--work", str(work), "--nodes", "2", "--timeout", "900"],
        capture_output=True,
        text=True,
        timeout=1800,
        stdin=subprocess.DEVNULL,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
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
    assert "total " in out  # the boot timeline from `provisioner status NODE --timeline`
    assert "cleanup    stopped every process" in out
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "pvdemo" not in left, left
    # Nodes share the image's root: it holds no SSH host keys of its own (openssh-server's
    # postinst made some) and no machine ID, D-Bus's included (systemd would copy that one).
    root = layout.image_rootfs(State(work / "state"), demo_site.IMAGE)
    assert (root / "usr/sbin/sshd").exists()
    assert not list((root / "etc/ssh").glob("ssh_host_*")), sorted(os.listdir(root / "etc/ssh"))
    assert (root / "etc/machine-id").read_text() == ""
    assert os.readlink(root / "var/lib/dbus/machine-id") == "/etc/machine-id"


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
