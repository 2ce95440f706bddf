"""The image commands through the installed `provisioner` script: which suite and packages a
build resolves from its flags, the profile and the defaults (`image build --dry-run`); import
of a compressed tarball with `--kernel`; and a node that boots while a rebuild is half-way
through: it is served the old version whole, never the partial one, and the new one once it
is complete. (The debootstrap build those inputs reach is in test_image_debootstrap.py.)"""

import errno
import fcntl
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from typing import Any

import pytest

from labs.busyroot import host_kernel, make_root
from labs.site import node, site_yaml, write_site
from provisioner.artifacts import images, layout
from provisioner.inventory import load_inventory
from provisioner.paths import State
from provisioner.servers.boottree import BootTree, PathRefused

INIT = "#!/bin/sh\nexec sh\n"


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return make_root(tmp_path_factory.mktemp("root") / "rootfs", INIT)


# --- build inputs: flags, then the profile, then the defaults ----------------------------

CLUSTER: dict[str, Any] = {"name": "t", "domain": "t.cluster", "subnet": "10.77.0.0/24", "interface": None}

PROFILES_YAML = site_yaml(
    profiles={
        "default": {"image": "deb"},
        "small": {"image": "deb", "vars": {"image_suite": "trixie", "image_packages": ["hello", "busybox"]}},
    },
    **CLUSTER,
)


def in_process(cli, *args):
    """The `provisioner` command run in this process (the many cheap dry runs would each pay
    the script's start-up otherwise): exit code, stdout, stderr."""
    from click.testing import CliRunner

    from provisioner.cli import main

    res = CliRunner().invoke(main, ["--site", str(cli.site), "--state", str(cli.state), *map(str, args)])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def plan(cli, *args):
    """`image build deb ARGS --dry-run` as a dict of its `key: value` lines."""
    code, out, err = in_process(cli, "image", "build", "deb", *args, "--dry-run")
    assert code == 0, out + err
    lines = [re.fullmatch(r"(\w+):\s+(.*)", ln) for ln in out.splitlines()]
    assert all(lines), out
    return {m[1]: m[2] for m in lines if m}


def test_cli_build_dry_run_takes_flags_over_the_profile_over_the_defaults(cli, tmp_path):
    write_site(cli.site, PROFILES_YAML)
    cache = tmp_path / "cache"
    mirror = images.host_mirror()
    # No flags, no profile: the default suite and the Slurm node's package set.
    p = plan(cli)
    assert p["suite"] == images.DEFAULT_SUITE and p["packages"] == " ".join(images.DEFAULT_PACKAGES)
    assert p["mirror"] == mirror and p["variant"] == "minbase" and p["cache"] == "none (no --cache)"
    assert p["command"] == (
        f"debootstrap --variant=minbase --include={','.join(images.DEFAULT_PACKAGES)} "
        f"{images.DEFAULT_SUITE} ROOT {mirror}"
    )
    # The profile's suite (not the default one) and packages; --add joins them, once each.
    p = plan(cli, "--profile", "small", "--add", "htop", "--add", "hello", "--cache", cache)
    assert (p["suite"], p["packages"]) == ("trixie", "hello busybox htop")
    assert p["command"] == f"debootstrap --variant=minbase --include=hello,busybox,htop trixie ROOT {mirror}"
    key_file = images.cache_file(cache, "trixie", "minbase", ("hello", "busybox", "htop"))
    assert p["cache"] == f"{key_file} (absent: written after debootstrap)"
    # Flags beat the profile: --suite, and -p replaces its package set; variant and mirror too.
    key_file.parent.mkdir(parents=True)
    key_file.write_bytes(b"")
    p = plan(
        cli,
        "--profile",
        "small",
        "--suite",
        "bookworm",
        "-p",
        "curl",
        "--package",
        "zstd",
        "--add",
        "htop",
        "--variant",
        "buildd",
        "--mirror",
        "http://mirror.invalid/debian",
        "--cache",
        cache,
    )
    assert (p["suite"], p["packages"], p["variant"]) == ("bookworm", "curl zstd htop", "buildd")
    assert p["command"] == (
        "debootstrap --variant=buildd --include=curl,zstd,htop bookworm ROOT http://mirror.invalid/debian"
    )
    assert p["cache"].startswith(str(images.cache_file(cache, "bookworm", "buildd", ("curl", "zstd", "htop"))))
    # The same package set in another order is the same cache file, which is now there.
    p = plan(
        cli,
        "--profile",
        "small",
        "--add",
        "hello",
        "-p",
        "htop",
        "-p",
        "busybox",
        "-p",
        "hello",
        "--suite",
        "trixie",
        "--cache",
        cache,
    )
    assert p["cache"] == f"{key_file} (present: unpacked instead of running debootstrap)"
    # A profile without vars leaves the defaults; a profile that does not exist is an error.
    assert plan(cli, "--profile", "default")["packages"] == " ".join(images.DEFAULT_PACKAGES)
    res = cli("image", "build", "deb", "--profile", "nosuch", "--dry-run", check=False)  # the real script
    assert res.returncode == 1 and "no such profile: nosuch" in res.stderr and "Traceback" not in res.stderr
    assert not (cli.state / "images").exists()  # a dry run builds nothing


# --- import of a tarball, kernel choice ------------------------------------------------


def test_cli_import_of_a_zstd_tarball_and_kernel_choice(cli, src, tmp_path):
    kver = host_kernel()
    root = tmp_path / "twokernels"
    shutil.copytree(src, root, symlinks=True)
    (root / "boot" / "vmlinuz-5.10.0-99-amd64").write_bytes(b"older kernel, no modules")
    tarball = tmp_path / "root.tar.zst"
    subprocess.run(["tar", "--zstd", "-cf", str(tarball), "-C", str(root), "."], check=True)
    state = State(cli.state)

    out = cli("image", "import", "tiny", tarball).stdout
    assert f"tiny v1: kernel {kver}, " in out  # the newest kernel by default
    assert layout.image_kernel(state, "tiny").read_bytes() == (src / "boot" / f"vmlinuz-{kver}").read_bytes()
    assert layout.image_initramfs(state, "tiny").stat().st_size > 1_000_000
    rootfs = layout.image_rootfs(state, "tiny")
    assert (rootfs / "bin" / "busybox").read_bytes() == (src / "bin" / "busybox").read_bytes()
    assert os.readlink(rootfs / "bin" / "sh") == "/bin/busybox"
    assert (rootfs / "etc" / "machine-id").read_text() == ""
    meta = json.loads((layout.image_dir(state, "tiny") / layout.IMAGE_META).read_text())
    assert meta["source"] == str(tarball) and meta["kernel"] == kver

    out = cli("image", "import", "tiny", tarball, "--kernel", "5.10.0-99-amd64").stdout
    assert "tiny v2: kernel 5.10.0-99-amd64, " in out
    assert layout.image_kernel(state, "tiny").read_bytes() == b"older kernel, no modules"
    assert not layout.image_initramfs(state, "tiny").exists()  # no modules for it in the image

    res = cli("image", "import", "tiny", tarball, "--kernel", "1.2.3", check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"no kernel 1.2.3 in the image (has: 5.10.0-99-amd64, {kver})" in res.stderr
    listing = json.loads(cli("image", "list", "--all", "--json").stdout)
    assert [(d["version"], d["current"], d["kernel"]) for d in listing] == [
        ("v1", False, kver),
        ("v2", True, "5.10.0-99-amd64"),
    ]
    assert not [p for p in layout.image_versions(state, "tiny").iterdir() if p.name.startswith(".")]


# --- a node booting mid-rebuild ----------------------------------------------------------


def served(tree, path, ip="10.77.0.11"):
    """The bytes the boot tree (what TFTP and HTTP serve through) answers for `path`, or None."""
    f = tree(ip, path)
    return None if f is None else f.read_bytes()


def assert_old_version_served_whole(state, tree, old):
    """`current` still names v1, v1 is complete and served byte for byte, v2 is not served."""
    assert os.readlink(layout.image_dir(state, "tiny")) == "versions/v1"
    assert [v.version for v in images.versions(state, "tiny")] == ["v1"]
    for f in ("vmlinuz", "initramfs.img"):
        assert served(tree, f"images/tiny/versions/v1/{f}") == old[f]
        assert served(tree, f"images/tiny/{f}") == old[f]  # unpinned: current
        assert served(tree, f"images/tiny/versions/v2/{f}") is None
        with pytest.raises(PathRefused):
            tree("10.77.0.11", f"images/tiny/versions/.v2.partial/{f}")
    assert json.loads((layout.image_dir(state, "tiny", "v1") / layout.IMAGE_META).read_text())["kernel"]


def test_every_step_of_a_rebuild_serves_the_old_version_whole(tmp_path, src):
    """The progress callback runs in the build itself: at each step (copying, the kernel taken,
    the initramfs being built) the old version is still what nodes get."""
    state = State(tmp_path / "state")
    images.import_image(state, "tiny", src)
    tree = BootTree(state, None)
    old = {f: served(tree, f"images/tiny/versions/v1/{f}") for f in ("vmlinuz", "initramfs.img")}
    root = tmp_path / "v2root"
    shutil.copytree(src, root, symlinks=True)
    (root / "boot" / f"vmlinuz-{host_kernel()}").write_bytes(b"kernel v2")
    staging = layout.image_versions(state, "tiny") / ".v2.partial"
    seen = []

    def step(line):
        if line.startswith("tiny: now at"):
            return  # said right after the switch
        assert_old_version_served_whole(state, tree, old)
        seen.append((line.split()[0], sorted(p.name for p in staging.iterdir())))

    images.import_image(state, "tiny", root, progress=step)
    # The checks ran while the new version was still being filled: before the copy, and with
    # its kernel taken but no initramfs or meta.json yet.
    assert seen == [("copying", ["rootfs"]), ("initramfs", ["rootfs", "vmlinuz"])]
    assert os.readlink(layout.image_dir(state, "tiny")) == "versions/v2"
    assert served(tree, "images/tiny/versions/v2/vmlinuz") == served(tree, "images/tiny/vmlinuz") == b"kernel v2"
    assert served(tree, "images/tiny/versions/v2/initramfs.img")
    assert served(tree, "images/tiny/versions/v1/vmlinuz") == old["vmlinuz"]  # kept (--keep 3)


CLUSTER_YAML = site_yaml(
    [node("node01", "10.77.0.11", "52:54:00:00:00:01")], {"default": {"image": "tiny", "overlays": ["base"]}}, **CLUSTER
)


def boot_files(state, tree):
    """What node01's iPXE script names (kernel, initramfs: one pinned version) and the bytes
    the boot tree serves the node for each."""
    text = served(tree, "boot.ipxe").decode()
    base = re.search(r"^set base http://[^/]+/(images/tiny/versions/v\d+)$", text, re.MULTILINE)
    files = sorted(re.findall(r"\$\{base\}/(\S+)", text))
    assert base and files == ["initramfs.img", "vmlinuz"], text
    return {f"{base.group(1)}/{f}": served(tree, f"{base.group(1)}/{f}") for f in files}


def open_fifo_writer(fifo, proc, deadline):
    """Open the FIFO for writing once the import has opened it for reading."""
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the import never opened its source"
        time.sleep(0.05)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return os.fdopen(fd, "wb")


def test_node_booting_while_an_import_is_half_unpacked_gets_the_old_version(cli, src, tmp_path):
    """`image import tiny FIFO` with the tarball fed by the test: held with half the new kernel
    unpacked, node01 (whose boot config pins v1) and the unpinned paths get v1 whole."""
    write_site(cli.site, CLUSTER_YAML)
    cli("image", "import", "tiny", src)
    state = State(cli.state)
    tree = BootTree(state, load_inventory(cli.site / "cluster.yaml"))
    before = boot_files(state, tree)
    assert sorted(before) == ["images/tiny/versions/v1/initramfs.img", "images/tiny/versions/v1/vmlinuz"]
    old = {f: served(tree, f"images/tiny/versions/v1/{f}") for f in ("vmlinuz", "initramfs.img")}

    # The new root as an uncompressed tar stream whose first member is its (new) kernel.
    kver = host_kernel()
    new_kernel = bytes(range(256)) * (4 << 12)  # 4 MiB
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.GNU_FORMAT) as t:
        info = tarfile.TarInfo(f"./boot/vmlinuz-{kver}")
        info.size, info.mode = len(new_kernel), 0o644
        t.addfile(info, io.BytesIO(new_kernel))
        t.add(src, arcname=".", filter=lambda m: None if m.name == f"./boot/vmlinuz-{kver}" else m)
    data = stream.getvalue()
    half = 512 + len(new_kernel) // 2  # the kernel's header and half its bytes

    fifo = tmp_path / "root.tar"
    os.mkfifo(fifo)
    env = {**os.environ, "PROVISIONER_SITE": str(cli.site), "PROVISIONER_STATE": str(cli.state)}
    proc = subprocess.Popen(
        [cli.exe, "image", "import", "tiny", str(fifo)],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    partial = layout.image_versions(state, "tiny") / ".v2.partial" / "rootfs" / "boot" / f"vmlinuz-{kver}"
    try:
        deadline = time.monotonic() + 60
        with open_fifo_writer(fifo, proc, deadline) as w:
            w.write(data[:half])
            w.flush()
            # tar has read all but what the pipe buffers (64 KiB) of it: wait for it on disk.
            while not (partial.exists() and partial.stat().st_size >= len(new_kernel) // 2 - (128 << 10)):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the import never unpacked half the kernel"
                time.sleep(0.05)
            assert partial.stat().st_size < len(new_kernel)  # really half-way
            assert_old_version_served_whole(state, tree, old)
            assert boot_files(state, tree) == before  # the node boots v1, whole
            w.write(data[half:])
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + err
    assert "tiny v2: kernel" in out and "1 node(s) now boot tiny v2" in out
    after = boot_files(state, tree)
    assert sorted(after) == ["images/tiny/versions/v2/initramfs.img", "images/tiny/versions/v2/vmlinuz"]
    assert after["images/tiny/versions/v2/vmlinuz"] == served(tree, "images/tiny/vmlinuz") == new_kernel
    assert served(tree, "images/tiny/versions/v1/vmlinuz") == old["vmlinuz"]
    assert not [p for p in layout.image_versions(state, "tiny").iterdir() if p.name.startswith(".")]
