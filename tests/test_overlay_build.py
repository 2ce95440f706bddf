"""Overlay archives: extracted by GNU cpio and busybox cpio to the same tree; incremental,
all-or-nothing, and a build killed with SIGKILL leaves the previous archives intact."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from labs.site import node
from provisioner.actions.context import Context
from provisioner.actions.nodes import remove_nodes
from provisioner.actions.overlays import build_overlays
from provisioner.artifacts import cpio, layout, secrets
from provisioner.artifacts.overlay_build import Build, BuildFailed, build, read_archive
from provisioner.inventory import load_inventory
from provisioner.paths import Site, State
from test_render_overlays import fake_image, inventory, make_site, plant_secrets

REPO = Path(__file__).resolve().parent.parent


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root: type+mode, owner, group, and content or link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            body = (
                os.readlink(p) if stat.S_ISLNK(st.st_mode) else (p.read_bytes() if stat.S_ISREG(st.st_mode) else None)
            )
            out[p.relative_to(root).as_posix()] = (st.st_mode, st.st_uid, st.st_gid, body)
    return out


def extract(archive: Path, dest: Path, pipeline: str) -> dict[str, tuple]:
    dest.mkdir()
    subprocess.run(pipeline.format(archive=archive), shell=True, cwd=dest, check=True, capture_output=True)
    return snapshot(dest)


def test_gnu_and_busybox_cpio_extract_the_same_tree(tmp_path):
    site, state, inv = make_site(tmp_path)
    fake_image(state, munge_ids=(4242, 4343))
    report = build(state, site, inv)
    assert sorted(report.built) == sorted(n.name for n in inv.nodes)
    archive = layout.overlay_archive(state, "node01")
    # the archive is a series of gzip members: both decompressors must read it whole
    gnu = extract(archive, tmp_path / "gnu", "gzip -dc {archive} | cpio -idm --quiet --no-absolute-filenames")
    bb = extract(archive, tmp_path / "bb", "busybox zcat {archive} | busybox cpio -idmu")  # as the initramfs does
    assert gnu == bb
    # and both match what the archive says
    members = {e.path: e for e in read_archive(archive)}
    assert set(gnu) == set(members)
    for path, (mode, uid, gid, _) in gnu.items():
        m = members[path]
        assert (mode, uid, gid) == (m.mode, m.uid, m.gid), path
    key = gnu["etc/munge/munge.key"]
    assert (stat.S_IMODE(key[0]), key[1], key[2]) == (0o400, 4242, 4343)
    assert (
        gnu["etc/systemd/system/multi-user.target.wants/systemd-networkd.service"][3]
        == "/lib/systemd/system/systemd-networkd.service"
    )
    assert gnu["etc/hostname"][3] == b"node01\n"
    assert stat.S_IMODE(gnu["etc/ssh/ssh_host_rsa_key"][0]) == 0o600
    # boot configs land where the servers look
    assert "provisioner.node=node01" in layout.ipxe_script(state, "node01").read_text()
    assert "APPEND provisioner.node=node01" in layout.pxelinux_config(state, "node01").read_text()
    assert "linux /images/debian12/versions/v1/vmlinuz" in layout.grub_config(state, "node01").read_text()


def test_builds_are_deterministic_and_incremental(tmp_path):
    site, state, inv = make_site(tmp_path)
    build(state, site, inv)
    first = {n.name: layout.overlay_archive(state, n.name).read_bytes() for n in inv.nodes}
    again = build(state, site, inv)
    assert again.built == [] and len(again.unchanged) == len(inv.nodes)
    forced = build(state, site, inv, force=True)
    assert len(forced.built) == len(inv.nodes)
    assert {n.name: layout.overlay_archive(state, n.name).read_bytes() for n in inv.nodes} == first

    own = site.node_overrides("node02") / "etc" / "motd"
    own.parent.mkdir(parents=True)
    own.write_text("hello node02\n")
    assert build(state, site, inv).built == ["node02"]
    assert {e.path: e.data for e in read_archive(layout.overlay_archive(state, "node02"))}[
        "etc/motd"
    ] == b"hello node02\n"

    (site.overlays / "base" / "etc").mkdir(parents=True)
    (site.overlays / "base" / "etc" / "issue").write_text("site issue\n")
    assert sorted(build(state, site, inv).built) == sorted(n.name for n in inv.nodes)

    # a node's new address changes /etc/hosts everywhere, so everyone rebuilds
    site.cluster_yaml.write_text(inventory(gpu01={"ip": "10.77.0.31"}))
    moved = load_inventory(site.cluster_yaml)
    plant_secrets(state, moved)
    assert len(build(state, site, moved).built) == len(moved.nodes)


def test_changed_secret_rebuilds_only_its_node(tmp_path):
    site, state, inv = make_site(tmp_path)
    build(state, site, inv)
    d = layout.secrets_dir(state) / "ssh" / "node03"
    tmp = d / ".new"
    tmp.write_text("NEW KEY\n")
    os.replace(tmp, d / "ssh_host_ed25519_key")
    assert build(state, site, inv).built == ["node03"]


def test_broken_template_changes_no_archive(tmp_path):
    site, state, inv = make_site(tmp_path)
    build(state, site, inv)
    before = {p: p.read_bytes() for p in state.root.rglob("*") if p.is_file() and "secrets" not in p.parts}
    (site.overlays / "base" / "etc").mkdir(parents=True)
    # fails for one node only, after the others rendered fine
    (site.overlays / "base" / "etc" / "motd.j2").write_text(
        "{% if node.name == 'gpu01' %}{{ vars.missing }}{% endif %}\n"
    )
    with pytest.raises(BuildFailed, match=r"base:etc/motd.j2:1: .*missing.*gpu01"):
        build(state, site, inv, jobs=1)
    after = {p: p.read_bytes() for p in state.root.rglob("*") if p.is_file() and "secrets" not in p.parts}
    assert after == before


def leftovers(state: State) -> set[str]:
    """Whatever in state/overlays no kept generation (current, previous) uses."""
    top = state.overlays
    kept = {os.readlink(top / link) for link in ("current", "previous") if (top / link).is_symlink()}
    shards = {os.path.basename(os.readlink(e.path)) for g in kept for e in os.scandir(top / g) if e.is_symlink()}
    return (
        {f"gens/{g}" for g in os.listdir(top / "gens")} - kept
        | {f"shards/{d}" for d in os.listdir(top / "shards")} - {f"shards/{d}" for d in shards}
        | set(os.listdir(top)) - {"current", "previous", "gens", "shards", "build.lock"}
    )


KILLER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from provisioner.artifacts import overlay_build
    from provisioner.inventory import load_inventory
    from provisioner.paths import Site, State
    site, state = Site(Path(sys.argv[1])), State(Path(sys.argv[2]))
    inv = load_inventory(site.cluster_yaml)
    def progress(n):
        print("staged", flush=True)
        time.sleep(3600)  # hold mid-build until killed
    overlay_build.build(state, site, inv, jobs=int(sys.argv[3]), progress=progress)
""")


def _many_nodes(n: int, default: Mapping[str, Any] | None = None) -> str:
    """The golden cluster plus `n` more nodes; `default` changes the default profile."""
    macs = [f"52:54:00:10:{i // 256:02x}:{i % 256:02x}" for i in range(n)]
    return inventory(more=[node(f"big[001-{n:03d}]", "10.77.1.1", macs)], subnet="10.77.0.0/16", default=default)


@pytest.mark.parametrize("jobs", [1, 2])
def test_kill_9_mid_build_leaves_previous_archives_intact(tmp_path, jobs):
    site, state, inv = make_site(tmp_path, _many_nodes(100))
    build(state, site, inv)
    archives = {n.name: layout.overlay_archive(state, n.name) for n in inv.nodes}
    before = {n: p.read_bytes() for n, p in archives.items()}
    (site.overlays / "base" / "etc").mkdir(parents=True)
    (site.overlays / "base" / "etc" / "motd").write_text("changed\n")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLER, str(site.root), str(state.root), str(jobs)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "staged"
        assert leftovers(state), "the build had written files when it was killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for name, path in archives.items():
        assert layout.overlay_archive(state, name) == path  # still the same generation
        assert path.read_bytes() == before[name], name
        assert cpio.read(gzip.decompress(path.read_bytes()))  # readable
    # the next build finishes the job and clears the leftovers
    report = build(state, site, inv)
    assert len(report.built) == len(inv.nodes)
    assert not leftovers(state)
    assert b"changed\n" in {e.path: e.data for e in read_archive(layout.overlay_archive(state, "big001"))}["etc/motd"]


def test_kill_9_at_any_moment_leaves_every_archive_whole(tmp_path):
    """Kill at several points of a real build (no hooks): each archive is the old or the new."""
    site, state, inv = make_site(tmp_path, _many_nodes(250))
    build(state, site, inv)
    names = [n.name for n in inv.nodes]
    old = {n: layout.overlay_archive(state, n).read_bytes() for n in names}
    code = (
        "import sys; from pathlib import Path; from provisioner.artifacts import overlay_build; "
        "from provisioner.inventory import load_inventory; from provisioner.paths import Site, State; "
        "s = Site(Path(sys.argv[1])); overlay_build.build(State(Path(sys.argv[2])), s, "
        "load_inventory(s.cluster_yaml), force=True, jobs=2)"
    )
    for delay in (0.4, 0.7, 1.0, 1.4):
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(site.root), str(state.root)], cwd=REPO, start_new_session=True
        )
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            pass
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # looked up again each time, as the servers do: a build that finished switched the
        # generation, and the one after it removes the generation before that
        for name in names:
            assert layout.overlay_archive(state, name).read_bytes() == old[name], name  # same bytes


def test_boot_configs_follow_the_inventory_and_are_left_alone_when_unchanged(tmp_path):
    site, state, inv = make_site(tmp_path)
    build(state, site, inv)
    inode = layout.ipxe_script(state, "node01").stat().st_ino
    site.cluster_yaml.write_text(inventory(gpu01={"kernel_args": ["quiet", "mitigations=off"]}))
    changed = load_inventory(site.cluster_yaml)
    # no shared file shows kernel_args, so only gpu01 rebuilds
    assert build(state, site, changed).built == ["gpu01"]
    for path in (
        layout.ipxe_script(state, "gpu01"),
        layout.pxelinux_config(state, "gpu01"),
        layout.grub_config(state, "gpu01"),
    ):
        assert "console=ttyS0 quiet mitigations=off" in path.read_text()
    assert layout.ipxe_script(state, "node01").stat().st_ino == inode  # the same file in the new generation
    (site.overlays / "base" / "etc").mkdir(parents=True)
    (site.overlays / "base" / "etc" / "motd").write_text("new motd\n")
    assert len(build(state, site, changed).built) == len(changed.nodes)
    assert layout.ipxe_script(state, "node01").stat().st_ino == inode  # same bytes: not rewritten


def test_an_image_switch_rebuilds_only_that_images_nodes_pinned_to_the_new_version(tmp_path):
    site, state, inv = make_site(tmp_path, inventory(gpu01={"image": "rocky9"}))
    fake_image(state)  # debian12 v1: node01-03
    fake_image(state, "rocky9")  # rocky9 v1: gpu01
    assert len(build(state, site, inv).built) == len(inv.nodes)
    node01 = layout.grub_config(state, "node01").read_text()
    before = {n.name: Build(state, site, inv).digest(n) for n in inv.nodes}
    fake_image(state, "rocky9", munge_ids=(900, 901), version="v2")  # a new version with new user tables
    after = {n.name: Build(state, site, inv).digest(n) for n in inv.nodes}
    assert [n for n in before if before[n] != after[n]] == ["gpu01"]
    assert build(state, site, inv).built == ["gpu01"]
    grub = layout.grub_config(state, "gpu01").read_text()
    assert (
        "linux /images/rocky9/versions/v2/vmlinuz " in grub
        and "initrd /images/rocky9/versions/v2/initramfs.img" in grub
    )
    assert "provisioner.root=nfs:10.77.0.1:/images/rocky9/versions/v2/rootfs " in grub
    assert "set base http://10.77.0.1:80/images/rocky9/versions/v2\n" in layout.ipxe_script(state, "gpu01").read_text()
    key = next(e for e in read_archive(layout.overlay_archive(state, "gpu01")) if e.path == "etc/munge/munge.key")
    assert (key.uid, key.gid) == (900, 901)
    assert layout.grub_config(state, "node01").read_text() == node01
    assert "/images/debian12/versions/v1/rootfs " in node01


def test_a_per_node_template_reading_all_nodes_ties_every_node_to_any_change(tmp_path):
    site, state, inv = make_site(tmp_path)
    build(state, site, inv)
    site.cluster_yaml.write_text(inventory(gpu01={"vars": {"debug": True, "rack": "r7"}}))
    assert build(state, site, load_inventory(site.cluster_yaml)).built == ["gpu01"]
    (site.overlays / "base" / "etc").mkdir(parents=True)
    (site.overlays / "base" / "etc" / "racks.j2").write_text(
        "{{ node.name }}: {% for n in nodes %}{{ n.name }}={{ n.vars.rack | default('-') }} {% endfor %}\n"
    )
    build(state, site, load_inventory(site.cluster_yaml))
    site.cluster_yaml.write_text(inventory(gpu01={"vars": {"debug": True, "rack": "r8"}}))
    now = load_inventory(site.cluster_yaml)
    assert len(build(state, site, now).built) == len(now.nodes)
    racks = {e.path: e.data for e in read_archive(layout.overlay_archive(state, "node01"))}["etc/racks"]
    assert racks == b"node01: node01=- node02=- node03=- gpu01=r8 "  # trim_blocks ate the newline


def test_node_rm_leaves_nothing_of_the_node_and_revokes_its_host_keys(tmp_path):
    site, state = Site(tmp_path / "site"), State(tmp_path / "state")
    site.root.mkdir()
    site.cluster_yaml.write_text(inventory())  # real secrets this time: ssh-keygen makes them
    fake_image(state)
    ctx = Context(site, state)
    assert len(build_overlays(ctx).built) == 4
    kept = tmp_path / "node02-keys"
    shutil.copytree(layout.secrets_dir(state) / "ssh" / "node02", kept)
    assert len(build_overlays(Context(site, state)).built) == 0  # (and `previous` now holds node02 too)

    names, report = remove_nodes(Context(site, state), "node02")
    assert names == report.removed == ["node02"]
    assert sorted(report.built) == ["gpu01", "node01", "node03"]  # the revocation list changed
    left = [p.relative_to(state.root).as_posix() for p in state.root.rglob("*")]
    assert left and not [p for p in left if "node02" in p]
    manifest = layout.overlay_manifest(state)
    assert manifest is not None and "node02" not in json.loads(manifest.read_text())["nodes"]
    assert load_inventory(site.cluster_yaml).node("node02") is None
    for name in ("node01", "node03", "gpu01"):
        members = {e.path: e for e in read_archive(layout.overlay_archive(state, name))}
        krl = tmp_path / f"{name}.krl"
        krl.write_bytes(members["etc/ssh/ssh_revoked_hosts.krl"].data)
        assert members["etc/ssh/ssh_revoked_hosts.krl"].mode & 0o777 == 0o644
        assert (
            b"RevokedHostKeys /etc/ssh/ssh_revoked_hosts.krl" in members["etc/ssh/ssh_config.d/provisioner.conf"].data
        )
        for pub in (*kept.glob("ssh_host_*_key.pub"), *kept.glob("*-cert.pub")):
            q = subprocess.run(["ssh-keygen", "-Q", "-f", str(krl), str(pub)], capture_output=True, text=True)
            assert q.returncode == 1 and "REVOKED" in q.stdout, q.stdout + q.stderr
    own = layout.secrets_dir(state) / "ssh" / "node01" / "ssh_host_ed25519_key-cert.pub"
    assert subprocess.run(["ssh-keygen", "-Q", "-f", str(krl), str(own)], capture_output=True).returncode == 0
    assert build_overlays(Context(site, state)).built == []  # removal done once


def test_a_build_renews_certificates_near_their_end(tmp_path):
    site, state = Site(tmp_path / "site"), State(tmp_path / "state")
    site.root.mkdir()
    site.cluster_yaml.write_text(inventory())
    inv = load_inventory(site.cluster_yaml)
    fake_image(state)
    secrets.ensure_secrets(state, inv, validity=16)  # 52 weeks, scaled down
    signed = time.time()  # every node's certificate is signed by now (one after another)
    assert len(build(state, site, inv).built) == 4
    cert = "etc/ssh/ssh_host_ed25519_key-cert.pub"
    before = {e.path: e.data for e in read_archive(layout.overlay_archive(state, "node01"))}[cert]
    assert build(state, site, inv).built == []
    time.sleep(max(0.0, signed + 12.5 - time.time()))  # less than a quarter of the 16 s left, for all
    assert len(build(state, site, inv).built) == 4
    after = {e.path: e.data for e in read_archive(layout.overlay_archive(state, "node01"))}[cert]
    assert after != before
    shown = subprocess.run(["ssh-keygen", "-L", "-f", "-"], input=after, capture_output=True, check=True).stdout
    end = shown.decode().split("Valid: from ")[1].split(" to ")[1].split()[0]
    days = (time.mktime(time.strptime(end, "%Y-%m-%dT%H:%M:%S")) - time.time()) / 86400
    assert 363 < days <= 364
    assert build(state, site, inv).built == []
