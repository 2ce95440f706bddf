"""The users overlay: the master's accounts (scratch passwd, group, shadow and homes, never the
host's) merged into an image's own tables in each node's built archive, with the modes the
image expects, keys for sshd, a clash refused by `check` and by the build, and a change on
the master reaching the node with the next incremental build."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from labs.site import node, node_of, numbered, site_yaml
from labs.slurm import lab_site, slurm_cluster
from provisioner.artifacts import layout, overlay_build
from provisioner.inventory import load_inventory
from provisioner.paths import Site, State

IMAGE_PASSWD = """\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
munge:x:777:778::/nonexistent:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""
IMAGE_GROUP = "root:x:0:\ndaemon:x:1:\nshadow:x:42:\nusers:x:100:\nmunge:x:778:\nnogroup:x:65534:\n"
IMAGE_SHADOW = "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\nmunge:!:19000::::::\n"

MASTER_PASSWD = """\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
alice:x:1000:1000:Alice:/home/alice:/bin/bash
bob:x:1001:1001:Bob:/home/bob:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""
MASTER_GROUP = "root:x:0:\nusers:x:100:alice\nalice:x:1000:\nbob:x:1001:\nresearch:x:2000:alice,bob\nnogroup:x:65534:\n"
MASTER_SHADOW = "root:$6$rootsecret:19000:0:99999:7:::\nalice:$6$alicehash:19100:0:99999:7:::\nbob:!:19100::::::\n"
ALICE_KEY = "ssh-ed25519 AAAAC3alice alice@laptop"
BOB_KEY = "ssh-ed25519 AAAAC3bob bob@yaml"
ADMIN_KEY = "ssh-ed25519 AAAAC3admin root@master"


def master(root: Path, passwd: str = MASTER_PASSWD) -> Path:
    """A scratch master: its account tables and homes with keys."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/passwd").write_text(passwd)
    (root / "etc/group").write_text(MASTER_GROUP)
    (root / "etc/shadow").write_text(MASTER_SHADOW)
    os.chmod(root / "etc/shadow", 0o640)
    for home, name, text in (("home/alice", "authorized_keys", ALICE_KEY), ("root", "id_ed25519.pub", ADMIN_KEY)):
        (root / home / ".ssh").mkdir(parents=True, exist_ok=True)
        (root / home / ".ssh" / name).write_text(text + "\n")
    return root


def image(state: State, passwd: str = IMAGE_PASSWD, version: str = "v1") -> None:
    etc = layout.image_rootfs(state, "debian12", version) / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text(passwd)
    (etc / "group").write_text(IMAGE_GROUP)
    (etc / "shadow").write_text(IMAGE_SHADOW)
    link = layout.image_dir(state, "debian12")
    link.unlink(missing_ok=True)
    link.symlink_to(f"versions/{version}")


def site(tmp_path: Path, **users: Any) -> tuple[Site, State]:
    s, state = Site(tmp_path / "site"), State(tmp_path / "state")
    s.root.mkdir(exist_ok=True)
    settings = {"root": str(tmp_path / "master"), "keys": {"bob": BOB_KEY}} | users
    s.cluster_yaml.write_text(
        site_yaml(
            [
                node("node01", "10.77.0.11", "52:54:00:77:00:11"),
                node("plain01", "10.77.0.12", "52:54:00:77:00:12", profiles=[], image="debian12", overlays=["base"]),
            ],
            {"default": {"image": "debian12", "overlays": ["base", "users"]}},
            subnet="10.77.0.0/24",
            interface=None,
            users=settings,
        )
    )
    return s, state


def built(s: Site, state: State) -> dict[str, Any]:
    overlay_build.build(state, s, load_inventory(s.cluster_yaml))
    return {e.path: e for e in overlay_build.read_archive(layout.overlay_archive(state, "node01"))}


@pytest.fixture
def scratch(tmp_path):
    master(tmp_path / "master")
    s, state = site(tmp_path, shadow=True)
    image(state)
    return s, state


def test_node_gets_master_users_merged_into_its_image_accounts(scratch):
    s, state = scratch
    files = built(s, state)
    passwd = files["etc/passwd"].data.decode()
    # The image's system accounts stay as the image has them, in its order; nobody is the image's.
    assert passwd == IMAGE_PASSWD + (
        "alice:x:1000:1000:Alice:/home/alice:/bin/bash\nbob:x:1001:1001:Bob:/home/bob:/bin/bash\n"
    )
    group = files["etc/group"].data.decode().splitlines()
    assert group[:6] == [
        "root:x:0:",
        "daemon:x:1:",
        "shadow:x:42:",
        "users:x:100:alice",
        "munge:x:778:",
        "nogroup:x:65534:",
    ]
    assert group[6:] == ["alice:x:1000:", "bob:x:1001:", "research:x:2000:alice,bob"]
    for path in ("etc/passwd", "etc/group"):
        assert (stat.S_IMODE(files[path].mode), files[path].uid, files[path].gid) == (0o644, 0, 0)
    shadow = files["etc/shadow"]
    # The image's root password stays; the master's root hash never leaves the master.
    assert shadow.data.decode().splitlines() == [
        "root:*:19000:0:99999:7:::",
        "daemon:*:19000:0:99999:7:::",
        "munge:!:19000::::::",
        "alice:$6$alicehash:19100:0:99999:7:::",
        "bob:!:19100::::::",
    ]
    assert (stat.S_IMODE(shadow.mode), shadow.uid, shadow.gid) == (0o640, 0, 42)
    keys = {p.rpartition("/")[2]: e.data.decode() for p, e in files.items() if p.startswith("etc/ssh/authorized_keys/")}
    assert keys == {"root": ADMIN_KEY + "\n", "alice": ALICE_KEY + "\n", "bob": BOB_KEY + "\n"}
    assert all(stat.S_IMODE(files[f"etc/ssh/authorized_keys/{k}"].mode) == 0o644 for k in keys)
    conf = files["etc/ssh/sshd_config.d/users.conf"].data.decode()
    assert "AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/authorized_keys/%u" in conf
    # At rest the archive holding the hashes is root's alone, in root-only folders.
    archive = layout.overlay_archive(state, "node01")
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert stat.S_IMODE(archive.resolve().parent.stat().st_mode) == 0o700


def test_the_images_own_lines_stay_for_an_account_both_have(tmp_path):
    master(tmp_path / "master")
    s, state = site(tmp_path, shadow=True, names=["root", "alice"], keys={})
    image(state)
    files = built(s, state)
    assert files["etc/passwd"].data.decode().splitlines()[0] == "root:x:0:0:root:/root:/bin/bash"
    shadow = files["etc/shadow"].data.decode()
    assert shadow.startswith("root:*:19000:") and "rootsecret" not in shadow and "alice:$6$alicehash" in shadow


def test_shadow_only_when_the_site_asks(tmp_path):
    master(tmp_path / "master")
    s, state = site(tmp_path)
    image(state)
    files = built(s, state)
    assert "etc/shadow" not in files
    assert "alice:x:1000" in files["etc/passwd"].data.decode()


def test_accounts_refresh_on_running_nodes_but_shadow_waits_for_a_boot(tmp_path):
    """The users overlay is a runtime one (as Warewulf's passwd and group): a user added on the
    master reaches running nodes through their agent; shadow, private like a secret, does not."""
    master(tmp_path / "master")
    s, state = site(tmp_path, shadow=True)
    image(state)
    files = built(s, state)
    assert "etc/shadow" in files
    members = overlay_build.runtime_members(state, "node01")
    assert members is not None
    assert {"etc/passwd", "etc/group"} <= set(members) and "etc/shadow" not in members


def test_a_node_without_image_never_gets_the_masters_own_shadow(tmp_path):
    """Before its image is built a node's "image" tables are the master's: its passwd and group
    serve, its shadow (the master's root password) does not."""
    master(tmp_path / "master")
    s, state = site(tmp_path, shadow=True, min_id=4000, max_id=4999, keys={})
    text = (tmp_path / "master/etc/passwd").read_text() + "dora:x:4444:4444::/home/dora:/bin/sh\n"
    (tmp_path / "master/etc/passwd").write_text(text)
    files = built(s, state)
    assert files["etc/shadow"].data.decode() == "dora:*:::::::\n"
    assert (
        files["etc/passwd"].data.decode() == Path("/etc/passwd").read_text() + "dora:x:4444:4444::/home/dora:/bin/sh\n"
    )


def test_names_list_picks_exactly_those_users(tmp_path):
    master(tmp_path / "master")
    s, state = site(tmp_path, names=["bob"], keys={})
    image(state)
    passwd = built(s, state)["etc/passwd"].data.decode()
    assert "bob:x:1001" in passwd and "alice" not in passwd


def test_a_change_on_the_master_reaches_the_node_with_the_next_build(scratch):
    s, state = scratch
    built(s, state)
    inv = load_inventory(s.cluster_yaml)
    assert overlay_build.build(state, s, inv).built == []  # nothing changed: nothing rebuilt
    master_root = s.root.parent / "master"
    (master_root / "etc/passwd").write_text(MASTER_PASSWD + "carol:x:1002:1002::/home/carol:/bin/sh\n")
    assert overlay_build.build(state, s, inv).built == ["node01"]  # not plain01: no users overlay
    files = {e.path: e for e in overlay_build.read_archive(layout.overlay_archive(state, "node01"))}
    assert "carol:x:1002:1002::/home/carol:/bin/sh" in files["etc/passwd"].data.decode()
    (master_root / "home/alice/.ssh/authorized_keys").write_text("ssh-ed25519 AAAAnew alice@new\n")
    assert overlay_build.build(state, s, inv).built == ["node01"]


def test_uid_clash_with_an_image_account_is_refused_by_check_and_build(scratch, cli):
    s, state = scratch
    good = built(s, state)["etc/passwd"].data
    clash = IMAGE_PASSWD + "ftp:x:1000:1000::/srv/ftp:/usr/sbin/nologin\n"
    image(state, clash, version="v2")
    res = cli("--site", s.root, "--state", state.root, "check", check=False)
    assert res.returncode == 1
    assert "alice (passwd id 1000) clashes with ftp (id 1000)" in res.stderr, res.stderr
    res = cli("--site", s.root, "--state", state.root, "check", "--json", check=False)
    assert res.returncode == 1 and '"field": "cluster.users"' in res.stdout and "clashes with ftp" in res.stdout
    with pytest.raises(overlay_build.BuildFailed, match=r"alice \(passwd id 1000\) clashes with ftp"):
        built(s, state)
    # The node keeps what it had.
    after = {e.path: e for e in overlay_build.read_archive(layout.overlay_archive(state, "node01"))}
    assert after["etc/passwd"].data == good


def test_unreadable_master_files_and_unknown_names_are_clear_errors(tmp_path, cli):
    master(tmp_path / "master")
    s, state = site(tmp_path, names=["alice", "zed"])
    image(state)
    res = cli("--site", s.root, "--state", state.root, "check", check=False)
    assert res.returncode == 1 and "no user zed in" in res.stderr, res.stderr
    s, state = site(tmp_path, groups=["wheel"])
    res = cli("--site", s.root, "--state", state.root, "check", check=False)
    assert res.returncode == 1 and "no group wheel in" in res.stderr, res.stderr
    s, state = site(tmp_path, min_id=2000, max_id=1999)
    res = cli("--site", s.root, "--state", state.root, "check", check=False)
    assert res.returncode == 1 and "cluster.users.max_id: must not be below min_id (2000)" in res.stderr, res.stderr
    s, state = site(tmp_path, root=str(tmp_path / "nowhere"))
    res = cli("--site", s.root, "--state", state.root, "overlay", "build", check=False)
    assert res.returncode == 1 and "cannot read the master's accounts" in res.stderr, res.stderr
    assert node_of(load_inventory(s.cluster_yaml), "node01")


def _system_accounts(path: str, ids: range) -> str:
    """The host's own accounts outside `ids` (munge, slurm...): the scratch master keeps them."""
    lines = Path(path).read_text().splitlines(keepends=True)
    return "".join(line for line in lines if len(line.split(":")) > 2 and int(line.split(":")[2]) not in ids)


@pytest.mark.netns
@pytest.mark.daemons
def test_a_user_runs_jobs_under_the_same_identity_on_every_node(tmp_path):
    """Real Slurm: alice, a user of the (scratch) master only, submits from the controller;
    her job runs on both nodes with the uid, gid and groups, names and all, she has there."""
    ids = range(4000, 5000)
    root = tmp_path / "master"
    (root / "etc").mkdir(parents=True)
    etc = {
        "passwd": _system_accounts("/etc/passwd", ids) + "alice:x:4242:4242:Alice:/home/alice:/bin/sh\n",
        "group": _system_accounts("/etc/group", ids) + "alice:x:4242:\nusrresearch:x:4300:alice\n",
    }
    for name, text in etc.items():
        (root / "etc" / name).write_text(text)
    text = lab_site(
        numbered(2),
        {"default": {"overlays": ["munge", "slurm", "mpi", "users"], "partitions": ["batch"]}},
        users={"min_id": ids.start, "max_id": ids.stop - 1, "root": str(root)},
    )
    with slurm_cluster(text, etc) as sl:
        for name in ("node01", "node02"):
            sl.boot(name)
        sl.wait_idle(["node01", "node02"])
        on_master = sl.ctl.run(["id", "alice"]).stdout.strip()
        assert on_master == "uid=4242(alice) gid=4242(alice) groups=4242(alice),4300(usrresearch)"
        as_alice = ["setpriv", "--reuid=alice", "--regid=alice", "--init-groups", "--"]
        job = sl.ctl.run([*as_alice, "sh", "-c", "cd /tmp && exec srun -N2 -l sh -c 'echo $(hostname) $(id)'"])
        lines = sorted(line.split(": ", 1)[1] for line in job.stdout.splitlines())
        assert lines == [f"node01 {on_master}", f"node02 {on_master}"], job.stdout + job.stderr
