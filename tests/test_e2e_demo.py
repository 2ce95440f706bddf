"""The README's main job, as a user runs it: `provisioner demo` builds (or takes from its
cache) a Debian image with systemd, munge and slurmd, PXE-boots qemu guests from
`provisioner serve` and ends when Slurm runs a job on each. Two guests at once here, so this
also proves that simultaneous boots both join."""

import subprocess

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.qemu, pytest.mark.daemons]


def test_demo_boots_two_nodes_that_join_slurm(cli, tmp_path):
    work = tmp_path / "demo"
    res = subprocess.run([cli.exe, "demo", "--work", str(work), "--nodes", "2", "--timeout", "900"],
                         capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    for node in ("node01", "node02"):
        assert f"srun -w {node} hostname -> {node}" in out, out[-4000:]
        for stage in ("dhcp", "ipxe", "kernel", "initramfs", "switch_root", "registered"):
            assert f"{node}: {stage}" in out, (stage, out[-4000:])
    assert "total " in out  # the boot timeline from `provisioner status NODE --timeline`
    assert "cleanup    stopped every process" in out
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "pvdemo" not in left, left


def test_a_failing_demo_names_the_stage_shows_logs_and_cleans_up(cli, tmp_path):
    res = subprocess.run([cli.exe, "demo", "--work", str(tmp_path / "demo"), "--timeout", "3"],
                         capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert res.returncode == 1
    assert "Error: stage join failed: nodes not idle after 3 s" in res.stderr, res.stderr[-3000:]
    assert "node01 console:" in res.stderr and "serve log:" in res.stderr
    assert "Traceback" not in res.stderr
    assert "cleanup    stopped every process" in res.stdout
    assert "pvdemo" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
