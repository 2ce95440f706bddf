"""Versioned images: import, atomic switch, rollback, removal, kernel choice, exec/shell
inside the image, a kernel stream that survives a rebuild; versioned boot paths, and boot
configs that follow every switch to the version they pin."""

import json
import os
import re
import shutil
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest

from labs.busyroot import host_kernel, make_root
from labs.site import node, numbered, site_yaml, write_site
from provisioner.artifacts import images, layout
from provisioner.errors import UserError
from provisioner.paths import State
from provisioner.servers.boottree import BootTree, PathRefused

INIT = "#!/bin/sh\nexec sh\n"


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return make_root(tmp_path_factory.mktemp("root") / "rootfs", INIT)


@pytest.fixture
def state(tmp_path):
    return State(tmp_path / "state")


def current(state, name):
    return os.readlink(layout.image_dir(state, name))


def test_import_dir_makes_complete_version(state, src):
    v = images.import_image(state, "tiny", src)
    assert (v.version, v.current) == ("v1", True)
    assert current(state, "tiny") == "versions/v1"
    kver = host_kernel()
    assert layout.image_kernel(state, "tiny").read_bytes() == (src / "boot" / f"vmlinuz-{kver}").read_bytes()
    assert layout.image_initramfs(state, "tiny").stat().st_size > 1_000_000
    meta = json.loads((layout.image_dir(state, "tiny") / layout.IMAGE_META).read_text())
    assert meta["kernel"] == kver and meta["source"] == str(src)
    assert (layout.image_rootfs(state, "tiny") / "etc" / "machine-id").read_text() == ""
    assert (src / "etc" / "machine-id").read_text() != ""  # the source is never touched
    assert not [p for p in layout.image_versions(state, "tiny").iterdir() if p.name.startswith(".")]


def test_import_tarball_and_rollback_and_rm(state, src, tmp_path):
    images.import_image(state, "tiny", src)
    tarball = tmp_path / "root.tar.gz"
    with tarfile.open(tarball, "w:gz") as t:
        t.add(src, arcname=".")
    v2 = images.import_image(state, "tiny", tarball)
    assert v2.version == "v2" and current(state, "tiny") == "versions/v2"
    assert (layout.image_rootfs(state, "tiny") / "bin" / "busybox").exists()
    assert [v.version for v in images.versions(state, "tiny")] == ["v1", "v2"]
    assert images.rollback(state, "tiny").version == "v1"
    assert current(state, "tiny") == "versions/v1"
    with pytest.raises(UserError, match="no version older"):
        images.rollback(state, "tiny")
    assert images.rollback(state, "tiny", to="v2").version == "v2"
    with pytest.raises(UserError, match="current version"):
        images.remove(state, "tiny", "v2")
    images.remove(state, "tiny", "v1")
    assert [v.version for v in images.versions(state, "tiny")] == ["v2"]
    images.remove(state, "tiny")
    assert images.list_images(state) == []
    assert not (state.images / "tiny").exists()


def test_bad_source_loses_nothing(state, src, tmp_path):
    images.import_image(state, "tiny", src)
    (tmp_path / "notaroot").mkdir()
    (tmp_path / "notaroot" / "README").write_text("hello")
    with pytest.raises(UserError, match="does not look like a root filesystem"):
        images.import_image(state, "tiny", tmp_path / "notaroot")
    with pytest.raises(UserError, match="no such directory or tarball"):
        images.import_image(state, "tiny", tmp_path / "missing")
    with pytest.raises(UserError, match="bad image name"):
        images.import_image(state, "../x", src)
    assert current(state, "tiny") == "versions/v1"
    assert [p.name for p in layout.image_versions(state, "tiny").iterdir()] == ["v1"]


def test_kernel_version_is_selectable(state, src, tmp_path):
    root = tmp_path / "twokernels"
    shutil.copytree(src, root, symlinks=True)
    kver = host_kernel()
    (root / "boot" / "vmlinuz-5.10.0-99-amd64").write_bytes(b"older kernel")
    v = images.import_image(state, "tiny", root)
    assert v.meta["kernel"] == kver  # the newest by version order
    (root / "boot" / "vmlinuz-99.0.0-1-amd64").write_bytes(b"newer kernel, no modules")
    v = images.import_image(state, "tiny", root, kernel=kver)
    assert v.meta["kernel"] == kver
    with pytest.raises(UserError, match=r"no kernel 1\.2\.3 in the image"):
        images.import_image(state, "tiny", root, kernel="1.2.3")
    v = images.import_image(state, "tiny", root, kernel="5.10.0-99-amd64", keep=1)
    assert layout.image_kernel(state, "tiny").read_bytes() == b"older kernel"
    assert not layout.image_initramfs(state, "tiny").exists()  # no modules for that kernel
    assert [x.version for x in images.versions(state, "tiny")] == [v.version]


def test_rebuild_leaves_a_reader_of_the_old_kernel_intact(state, src, tmp_path):
    images.import_image(state, "tiny", src)
    old = layout.image_kernel(state, "tiny").read_bytes()
    root = tmp_path / "newkernel"
    shutil.copytree(src, root, symlinks=True)
    (root / "boot" / f"vmlinuz-{host_kernel()}").write_bytes(b"N" * len(old))
    with open(layout.image_kernel(state, "tiny"), "rb") as reader:
        got = reader.read(4096)
        images.import_image(state, "tiny", root, keep=1)  # the old version is deleted too
        assert [v.version for v in images.versions(state, "tiny")] == ["v2"]
        got += reader.read()
    assert got == old
    assert layout.image_kernel(state, "tiny").read_bytes() == b"N" * len(old)


def _mounts_under(path):
    with open("/proc/self/mountinfo") as f:
        return [ln.split()[4] for ln in f if ln.split()[4].startswith(str(path))]


def test_exec_runs_inside_with_api_mounts_and_cleans_up(state, src):
    images.import_image(state, "tiny", src)
    script = (
        "test -e /proc/self/status && test -d /sys/class && test -c /dev/null && "
        "grep -q ' /proc proc' /proc/mounts && echo installed > /etc/new-package"
    )
    assert images.exec_in_image(state, "tiny", ["sh", "-c", script]) == 0
    assert current(state, "tiny") == "versions/v2"
    assert (layout.image_rootfs(state, "tiny") / "etc" / "new-package").read_text() == "installed\n"
    assert not _mounts_under(state.root)
    # A failing command leaves the image as it was and no half-made version behind.
    assert images.exec_in_image(state, "tiny", ["sh", "-c", "echo x > /etc/broken; exit 3"]) == 3
    assert current(state, "tiny") == "versions/v2"
    assert not (layout.image_rootfs(state, "tiny") / "etc" / "broken").exists()
    assert not [p for p in layout.image_versions(state, "tiny").iterdir() if p.name.startswith(".")]
    assert not _mounts_under(state.root)
    # A newer kernel appearing in /boot does not replace the one the image boots.
    assert images.exec_in_image(state, "tiny", ["sh", "-c", "echo k > /boot/vmlinuz-99.0.0-1-amd64"]) == 0
    assert next(v for v in images.versions(state, "tiny") if v.current).meta["kernel"] == host_kernel()


def test_two_execs_at_once_both_land(state, src):
    """The second exec waits for the first (the image's lock) and then starts from the version
    the first made, not from the one current when it was asked: no change is lost."""
    images.import_image(state, "tiny", src)
    first = threading.Thread(
        target=images.exec_in_image, args=(state, "tiny", ["sh", "-c", "echo a > /etc/first; sleep 2"])
    )
    first.start()
    deadline = time.time() + 30
    while not list(layout.image_versions(state, "tiny").glob(".v2.partial/rootfs/etc/first")):
        assert time.time() < deadline and first.is_alive(), "the first exec never ran"
        time.sleep(0.05)
    assert images.exec_in_image(state, "tiny", ["sh", "-c", "echo b > /etc/second"]) == 0
    first.join()
    assert current(state, "tiny") == "versions/v3"
    etc = layout.image_rootfs(state, "tiny") / "etc"
    assert (etc / "first").read_text() == "a\n" and (etc / "second").read_text() == "b\n"
    assert next(v for v in images.versions(state, "tiny") if v.current).meta["parent"] == "v2"


def test_cli_image_commands(cli, src):
    out = cli("image", "import", "tiny", src).stdout
    assert "tiny v1: kernel" in out
    assert f"no inventory at {cli.site / 'cluster.yaml'} yet: no boot configs to update" in out
    cli("image", "exec", "tiny", "--", "sh", "-c", "echo hi > /etc/hi")
    res = cli("image", "shell", "tiny", input="echo from-shell > /etc/shell-file\nexit 0\n")
    assert res.returncode == 0
    listing = json.loads(cli("image", "list", "--all", "--json").stdout)
    assert [(d["version"], d["current"]) for d in listing] == [("v1", False), ("v2", False), ("v3", True)]
    assert (cli.state / "images" / "tiny" / "current" / "rootfs" / "etc" / "shell-file").exists()
    res = cli("image", "exec", "tiny", "--", "false", check=False)
    assert res.returncode == 1
    assert cli("image", "rollback", "tiny").stdout.startswith("tiny: now at v2\n")
    assert cli("image", "rollback", "tiny", "--to", "v3").stdout.startswith("tiny: now at v3\n")
    res = cli("image", "rm", "nosuch", check=False)
    assert res.returncode == 1 and "no image 'nosuch'" in res.stderr and "Traceback" not in res.stderr
    out = cli("initramfs", "build", "tiny", "--compression", "zstd").stdout
    assert "initramfs.img" in out
    assert (
        subprocess.run(["zstd", "-t", str(cli.state / "images" / "tiny" / "current" / "initramfs.img")]).returncode == 0
    )
    cli("image", "rm", "tiny")
    assert cli("image", "list", "--json").stdout.strip() == "[]"


def test_boot_tree_serves_each_version_and_current(state, src, tmp_path):
    images.import_image(state, "tiny", src)
    root = tmp_path / "v2root"
    shutil.copytree(src, root, symlinks=True)
    (root / "boot" / f"vmlinuz-{host_kernel()}").write_bytes(b"kernel v2")
    images.import_image(state, "tiny", root)
    tree = BootTree(state, None)

    def served(path: str) -> Path:
        found = tree("10.0.0.1", path)
        assert found is not None, f"{path} is not served"
        return found

    v1 = served("images/tiny/versions/v1/vmlinuz")
    assert v1.read_bytes() == (src / "boot" / f"vmlinuz-{host_kernel()}").read_bytes()
    assert served("/images/tiny/versions/v2/vmlinuz").read_bytes() == b"kernel v2"
    assert served("images/tiny/vmlinuz").read_bytes() == b"kernel v2"  # unpinned: current
    assert served("images/tiny/versions/v1/initramfs.img").stat().st_size > 1_000_000
    assert tree("10.0.0.1", "images/tiny/versions/v9/vmlinuz") is None
    assert tree("10.0.0.1", "images/tiny/versions/v1/rootfs") is None
    for bad in (
        "images/tiny/versions/../../tiny/vmlinuz",
        "images/tiny/versions/x/vmlinuz",
        "images/tiny/versions/current/vmlinuz",
        "images/tiny/versions/.v3.partial/vmlinuz",
        "images/.tiny/vmlinuz",
        "images/tiny/versions/v1/../../../../secrets/initramfs.img",
    ):
        with pytest.raises(PathRefused):
            tree("10.0.0.1", bad)
    # a version that leads outside its image is refused, not served
    os.symlink(tmp_path, layout.image_versions(state, "tiny") / "v7")
    (tmp_path / "vmlinuz").write_bytes(b"outside")
    with pytest.raises(PathRefused):
        tree("10.0.0.1", "images/tiny/versions/v7/vmlinuz")


CLUSTER_YAML = site_yaml(
    [*numbered(2, "10.77.0.0/24"), node("other01", "10.77.0.21", "52:54:00:00:00:03", image="other")],
    {"default": {"image": "tiny", "overlays": ["base"]}},
    name="t",
    domain="t.cluster",
    subnet="10.77.0.0/24",
    interface=None,
)


def pinned(cli, node):
    """The image version a node's three boot configs name (all must name the same one)."""
    state = State(cli.state)
    found = set()
    for fn in (layout.ipxe_script, layout.pxelinux_config, layout.grub_config):
        text = fn(state, node).read_text()
        found |= set(re.findall(r"images/tiny/versions/(v\d+)/(?:vmlinuz|initramfs.img|rootfs)", text))
        assert "images/tiny/vmlinuz" not in text and "images/tiny/current" not in text, text
    assert len(found) == 1, found
    return found.pop()


def test_cli_switches_rebuild_the_boot_configs_of_the_images_nodes(cli, src):
    write_site(cli.site, CLUSTER_YAML)
    out = cli("image", "import", "tiny", src).stdout
    assert "2 node(s) now boot tiny v1" in out
    assert pinned(cli, "node01") == pinned(cli, "node02") == "v1"
    assert not layout.ipxe_script(State(cli.state), "other01").exists()  # only tiny's nodes were built
    out = cli("image", "import", "tiny", src).stdout
    assert "2 node(s) now boot tiny v2" in out
    assert pinned(cli, "node01") == pinned(cli, "node02") == "v2"
    assert cli("image", "rollback", "tiny").stdout == "tiny: now at v1\n2 node(s) now boot tiny v1\n"
    assert pinned(cli, "node01") == "v1"
    cli("image", "rollback", "tiny", "--to", "v2")
    cli("image", "exec", "tiny", "--", "true")
    assert pinned(cli, "node02") == "v3"
    assert "0 node(s) now boot" not in cli("image", "exec", "tiny", "--in-place", "--", "true").stdout
    assert pinned(cli, "node02") == "v3"
    # the same code path as `overlay build`: nothing left for it but other01, whose image has
    # no version yet (unpinned paths)
    assert "built 1, unchanged 2" in cli("overlay", "build").stdout
    assert (
        "provisioner.root=nfs:10.77.0.1:/images/other/current/rootfs "
        in layout.ipxe_script(State(cli.state), "other01").read_text()
    )


def test_cli_switch_whose_rebuild_fails_keeps_the_old_versions(cli, src):
    write_site(cli.site, CLUSTER_YAML)
    cli("image", "import", "tiny", src, "--keep", "1")
    broken = cli.site / "overlays" / "base" / "etc" / "broken.j2"
    broken.parent.mkdir(parents=True)
    broken.write_text("{{ no_such_variable }}\n")
    res = cli("image", "import", "tiny", src, "--keep", "1", check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "tiny v2: kernel" in res.stdout  # the image did switch
    assert "tiny is now at v2, but its nodes' boot configs were not rebuilt" in res.stderr
    assert "provisioner overlay build" in res.stderr and "Traceback" not in res.stderr
    assert current(State(cli.state), "tiny") == "versions/v2"
    # v1, which the boot configs still name, was not pruned despite --keep 1
    assert [v.version for v in images.versions(State(cli.state), "tiny")] == ["v1", "v2"]
    assert pinned(cli, "node01") == "v1"
    broken.unlink()
    assert "2 node(s) now boot tiny v3" in cli("image", "import", "tiny", src, "--keep", "1").stdout
    assert [v.version for v in images.versions(State(cli.state), "tiny")] == ["v3"]
    assert pinned(cli, "node01") == "v3"


def test_cli_rm_of_a_used_image_warns_which_nodes_name_it(cli, src):
    write_site(cli.site, CLUSTER_YAML)
    cli("image", "import", "tiny", src)
    before = layout.ipxe_script(State(cli.state), "node01").read_text()
    res = cli("image", "rm", "tiny", check=False)
    assert res.returncode == 1 and "use --force" in res.stderr
    res = cli("image", "rm", "tiny", "--force")
    assert "warning: 2 node(s) still name tiny (node01, node02)" in res.stderr
    assert layout.ipxe_script(State(cli.state), "node01").read_text() == before  # left alone
