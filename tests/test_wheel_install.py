"""The package as an admin installs it: a wheel built from this checkout goes into a new
virtualenv outside it, and from a directory outside it that venv's `provisioner` alone takes a
node from nothing to its NFS root with its overlay: init, node add, image import, initramfs
build, boot install, overlay build, serve (DHCP, TFTP, HTTP), one PXE boot under qemu (TCG)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from labs.busyroot import console_values, make_root
from labs.ganesha import Ganesha
from labs.pxe import PxeLab
from labs.serve import Serve
from provisioner.artifacts.images import nfs_roots
from provisioner.inventory import load_inventory
from provisioner.paths import State
from provisioner.render.nfs import exports_for

CHECKOUT = Path(__file__).resolve().parents[1]
STOCK_TREES = ("overlays", "pxe", "initcpio")
MAC = "52:54:00:7d:00:01"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NOT_BUILT = {".git", ".venv", "build", "tests", "bench", ".pytest_cache", ".hypothesis"}
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]

# Prints what each stock tree put on the node: base's hostname and a symlink (a `.symlink`
# file in the wheel), munge's key with its _meta.yaml owner and mode; then powers off.
INIT = """#!/bin/sh
echo "PVTEST hostname=$(hostname)"
echo "PVTEST networkd=$(readlink /etc/systemd/system/multi-user.target.wants/systemd-networkd.service)"
echo "PVTEST munge_key=$(stat -c '%u %a' /etc/munge/munge.key)"
grep -E ' / | /run/provisioner/lower ' /proc/mounts | sed 's/^/PVTEST mount /'
echo "PVTEST done"
poweroff -f
"""


def _not_built(folder: str, names: list[str]) -> set[str]:
    """What the wheel build must not see: the checkout's own venv, git, tests, earlier builds."""
    skip = {n for n in names if n == "__pycache__"}
    if Path(folder) == CHECKOUT:
        skip |= {n for n in names if n in NOT_BUILT or n.endswith(".egg-info")}
    return skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built offline (this venv's setuptools, no build isolation) from a copy of the
    checkout, so the build leaves nothing in it."""
    work = tmp_path_factory.mktemp("wheel")
    src, dist = work / "src", work / "dist"
    shutil.copytree(CHECKOUT, src, symlinks=True, ignore=_not_built)
    subprocess.run([*PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, src], check=True)
    (built,) = dist.glob("provisioner-*.whl")
    return built


def install(wheel: Path, venv: Path) -> Path:
    """A new venv with the wheel in it. It sees this venv's packages through a .pth line (the
    dependencies, without the network); provisioner comes from the wheel alone (the caller
    checks)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "test-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([*PIP, "--python", python, "install", "--no-deps", "--no-index", wheel], check=True)
    return venv


def test_wheel_carries_every_stock_file_and_unit(wheel):
    """Every file of the stock trees, executable ones still executable (the overlay builder
    keeps a source's x bit), and both systemd units."""
    with zipfile.ZipFile(wheel) as zf:
        shipped = {i.filename: bool(i.external_attr >> 16 & 0o111) for i in zf.infolist()}
    files = [p for tree in STOCK_TREES for p in (CHECKOUT / tree).rglob("*") if not p.is_dir()]
    links = [str(p.relative_to(CHECKOUT)) for p in files if p.is_symlink()]
    assert not links, f"a wheel has no symlinks: make each a NAME.symlink file holding its target: {links}"
    stock = {f"provisioner/stock/{p.relative_to(CHECKOUT)}": bool(p.stat().st_mode & 0o111) for p in files}
    assert {n: x for n, x in shipped.items() if n.startswith("provisioner/stock/")} == stock
    assert {"provisioner/systemd/provisioner.service", "provisioner/systemd/provisioner-slurm.service"} <= set(shipped)
    console = CHECKOUT / "provisioner/servers/http/webconsole"  # the web console's templates and script
    assert {f"provisioner/{p.relative_to(CHECKOUT / 'provisioner')}" for p in console.rglob("*.*")} <= set(shipped)


class Wheel:
    """The wheel venv's `provisioner` with a site and state of its own (what servelab.Serve
    needs of the `cli` fixture), run in the lab's server namespace."""

    def __init__(self, lab, venv: Path, work: Path):
        self.lab, self.exe = lab, str(venv / "bin" / "provisioner")
        self.site, self.state = work / "site", work / "state"

    def __call__(self, *args: str | Path) -> str:
        env = {**os.environ, "PROVISIONER_SITE": str(self.site), "PROVISIONER_STATE": str(self.state)}
        res = self.lab.server.run([self.exe, *map(str, args)], check=False, env=env)
        assert res.returncode == 0, f"provisioner {' '.join(map(str, args))}:\n{res.stdout}\n{res.stderr}"
        return res.stdout


@pytest.mark.netns
@pytest.mark.qemu
def test_wheel_installed_outside_the_checkout_boots_a_node(wheel, lab, tmp_path, monkeypatch):
    assert CHECKOUT not in tmp_path.parents
    venv = install(wheel, tmp_path / "venv")
    outside = tmp_path / "admin"
    outside.mkdir()
    monkeypatch.chdir(outside)  # every command, serve included, runs from here
    monkeypatch.setenv("PATH", f"{venv / 'bin'}:{SYSTEM_PATH}")
    for var in ("PYTHONPATH", "VIRTUAL_ENV", "PROVISIONER_SITE", "PROVISIONER_STATE"):
        monkeypatch.delenv(var, raising=False)
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import provisioner; print(provisioner.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(CHECKOUT), where

    cli = Wheel(lab, venv, outside)
    root = make_root(outside / "root", INIT)
    for table, entry in (("passwd", "munge:x:101:101::/nonexistent:/usr/sbin/nologin"), ("group", "munge:x:101:")):
        with open(root / "etc" / table, "a") as f:
            f.write(entry + "\n")
    assert "Nodes' gateway: none." in cli("init", "--name", "wheel")  # the lab's network is its own
    cli("profile", "set", "default", "--image", "tiny")
    assert "(10.99.0.2, " in cli("node", "add", "node01", "--mac", MAC)
    cli("image", "import", "tiny", root)
    cli("initramfs", "build", "tiny")
    cli("boot", "install")
    cli("overlay", "build")
    unit = cli("serve", "--print-unit")
    assert f"ExecStart={cli.exe} serve\n" in unit and f"Environment=PROVISIONER_STATE={cli.state}\n" in unit

    cluster = load_inventory(cli.site / "cluster.yaml").cluster
    images = [e for e in exports_for(cluster, nfs_roots(State(cli.state))) if e.image]
    guest = PxeLab(lab, cli, tmp_path / "lab", None)  # the wheel's CLI imports the image
    try:
        guest.ganesha = Ganesha(lab.server, guest.work / "ganesha", images, lab.net, lab.server_ip).start()
        guest.serve = Serve(lab, cli, services="dhcp,tftp,http", port=cluster.ports.http, extra=("--interface", "br0"))
        console = guest.boot(MAC, "PVTEST done")
        stages = guest.stages("node01")
    finally:
        guest.close()
    got = console_values(console)
    assert got.get("hostname") == "node01", console[-3000:]
    assert got["networkd"] == "/lib/systemd/system/systemd-networkd.service"
    assert got["munge_key"] == "101 400"
    mounts = [ln for ln in console.splitlines() if ln.startswith("PVTEST mount ")]
    assert any(" / overlay " in m for m in mounts), mounts
    assert any(
        m.startswith("PVTEST mount 10.99.0.1:/images/tiny/versions/v1/rootfs ") and " nfs4 ro," in m for m in mounts
    ), mounts
    assert {"dhcp", "kernel", "initramfs", "root", "overlay", "switch_root"} <= set(stages), stages
