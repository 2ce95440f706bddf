"""Container images in and out: `image import NAME oci-archive:FILE` (and docker-archive:,
oci:DIR:TAG, containers-storage:, podman:) through skopeo and umoci, `image export`.

The images are made the way admins make them: buildah (from Debian, no registry) builds a
Containerfile `FROM scratch` + a root tarball with one RUN that deletes a file, into a private
vfs storage; the whiteout layers buildah cannot be made to write (an opaque directory) and the
hostile ones are written here as OCI layouts by hand. A refused image leaves the version served
before it current, and no partial version behind."""

from __future__ import annotations

import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from labs.busyroot import make_root
from labs.oci import entry, oci_dir, tar_layer
from provisioner.artifacts import images, layout, oci
from provisioner.errors import UserError
from provisioner.paths import State

INIT = "#!/bin/sh\nexec sh\n"
CONTAINERFILE = """FROM scratch
ADD root.tar /
RUN rm /etc/gone && echo built > /etc/built
RUN mkdir -p /etc/ssh && echo k > /etc/ssh/ssh_host_rsa_key
"""


@pytest.fixture(scope="module")
def root_tar(tmp_path_factory) -> Path:
    """The tiny bootable root (busybox, the host kernel, its initramfs modules) as a tarball,
    with a file the Containerfile deletes."""
    d = tmp_path_factory.mktemp("ociroot")
    root = make_root(d / "rootfs", INIT)
    (root / "etc" / "gone").write_text("deleted by a later layer\n")
    (root / "opt" / "old" / "sub").mkdir(parents=True)
    (root / "opt" / "old" / "sub" / "f").write_text("hidden by an opaque dir\n")
    (root / "keep").mkdir()
    (root / "keep" / "x").write_text("kept\n")
    out = d / "root.tar"
    subprocess.run(["tar", "-cf", str(out), "--numeric-owner", "-C", str(root), "."], check=True)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory, root_tar) -> Iterator[str]:
    """A buildah image in a private storage; returns its containers-storage reference."""
    d = tmp_path_factory.mktemp("ocibuild")
    ctx = d / "ctx"
    ctx.mkdir()
    os.link(root_tar, ctx / "root.tar")
    (ctx / "Containerfile").write_text(CONTAINERFILE)
    store = ["--root", str(d / "storage"), "--runroot", str(d / "run"), "--storage-driver", "vfs"]
    res = subprocess.run(
        ["buildah", *store, "bud", "--layers", "--isolation", "chroot", "-t", "localhost/pvoci", str(ctx)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    yield f"[vfs@{d / 'storage'}+{d / 'run'}]localhost/pvoci"
    subprocess.run(["buildah", *store, "rmi", "--all", "--force"], capture_output=True, check=False)


def skopeo(src: str, dest: str) -> None:
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", src, dest], check=True, timeout=300)


def current(cli) -> str | None:
    return images.current_version(State(cli.state), "img")


def test_a_containerfile_image_from_storage_and_both_archives(cli, built, tmp_path):
    """buildah's image from its storage (as containers-storage: and podman:), then pushed to an
    oci-archive and a docker-archive: each becomes a version with the RUN's deletion applied,
    the identity scrubbed and the kernel taken."""
    state = State(cli.state)
    oci_file, docker_file = tmp_path / "img.oci.tar", tmp_path / "img.docker.tar"
    skopeo(f"containers-storage:{built}", f"oci-archive:{oci_file}")
    skopeo(f"containers-storage:{built}", f"docker-archive:{docker_file}")
    sources = [
        f"containers-storage:{built}",
        f"podman:{built}",
        f"oci-archive:{oci_file}",
        f"docker-archive:{docker_file}",
    ]
    for n, source in enumerate(sources, 1):
        res = cli("image", "import", "img", source, "--keep", "9")
        assert f"img v{n}: kernel " in res.stdout, res.stdout + res.stderr
        root = layout.image_rootfs(state, "img")
        assert not (root / "etc" / "gone").exists()  # the RUN layer's whiteout
        assert (root / "etc" / "built").read_text() == "built\n"
        assert (root / "keep" / "x").read_text() == "kept\n"
        assert (root / "etc" / "machine-id").read_text() == ""
        assert not (root / "etc" / "ssh" / "ssh_host_rsa_key").exists()
        assert os.readlink(root / "bin" / "sh") == "/bin/busybox"
        assert layout.image_kernel(state, "img").stat().st_size > 1 << 20
        assert layout.image_initramfs(state, "img").exists()
        meta = images.versions(state, "img")[-1].meta
        assert meta["source"] == source and meta["oci_digest"].startswith("sha256:")
        assert not list(layout.image_versions(state, "img").glob(".*"))  # no staging left


def test_whiteouts_delete_a_file_and_make_a_dir_opaque(cli, root_tar, tmp_path):
    base = root_tar.read_bytes()
    top = tar_layer(
        [
            entry("etc", kind=tarfile.DIRTYPE),
            entry("etc/.wh.gone"),
            entry("opt/old", kind=tarfile.DIRTYPE),
            entry("opt/old/.wh..wh..opq"),
            entry("opt/old/new", b"above\n"),
        ]
    )
    src = oci_dir(tmp_path / "layout", [base, top], tag="v7")
    cli("image", "import", "img", f"oci:{src}:v7")
    root = layout.image_rootfs(State(cli.state), "img")
    assert not (root / "etc" / "gone").exists() and not (root / "etc" / ".wh.gone").exists()
    assert sorted(p.name for p in (root / "opt" / "old").iterdir()) == ["new"]
    assert (root / "keep" / "x").read_text() == "kept\n" and (root / "etc" / "image-file").exists()


HOSTILE = {
    "dotdot": ([entry("etc/../../escaped", b"x")], "'etc/../../escaped' climbs out of the root"),
    "absolute": ([entry("/etc/abs", b"x")], "'/etc/abs' climbs out of the root"),
    "link-then-write": (
        [entry("etc/evil", kind=tarfile.SYMTYPE, linkname="/tmp"), entry("etc/evil/planted", b"x")],
        "'etc/evil/planted' is written through the link 'etc/evil' the same layer made",
    ),
    "hardlink-out": (
        [entry("etc/hl", kind=tarfile.LNKTYPE, linkname="../../etc/shadow")],
        "'etc/hl' is a hard link to '../../etc/shadow', outside the root",
    ),
    "device": (
        [entry("etc/disk", kind=tarfile.BLKTYPE, devmajor=8, devminor=0)],
        "'etc/disk' is a device node outside /dev",
    ),
}


@pytest.fixture
def served(cli, root_tar, tmp_path) -> str:
    """img v1, imported from a tarball: what must stay served when an import is refused."""
    cli("image", "import", "img", root_tar)
    return (layout.image_kernel(State(cli.state), "img")).read_bytes()[:4096].hex()


def still_served(cli, kernel_head: str) -> None:
    state = State(cli.state)
    assert current(cli) == "v1" and [v.version for v in images.versions(state, "img")] == ["v1"]
    assert layout.image_kernel(state, "img").read_bytes()[:4096].hex() == kernel_head
    assert not list(layout.image_versions(state, "img").glob(".*"))


@pytest.mark.parametrize("how", sorted(HOSTILE))
def test_a_hostile_layer_is_refused_and_the_served_version_stays(cli, root_tar, tmp_path, served, how):
    entries, said = HOSTILE[how]
    src = oci_dir(tmp_path / "layout", [root_tar.read_bytes(), tar_layer(entries)])
    res = cli("image", "import", "img", f"oci:{src}:t", check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"oci:{src}:t: layer 2 (sha256:" in res.stderr and said in res.stderr, res.stderr
    assert not Path("/escaped").exists() and not Path("/etc/abs").exists()
    still_served(cli, served)


def test_corrupt_huge_and_kernelless_images_are_refused(cli, root_tar, tmp_path, served):
    state = State(cli.state)
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(os.urandom(4096))
    res = cli("image", "import", "img", f"oci-archive:{garbage}", check=False)
    assert res.returncode == 1 and f"reading oci-archive:{garbage} failed" in res.stderr, res.stderr
    res = cli("image", "import", "img", f"oci-archive:{tmp_path / 'missing.tar'}", check=False)
    assert res.returncode == 1 and "no such file or directory: " in res.stderr
    # A layer whose gzip stream is cut short: skopeo checks digests, so the blob and its
    # digest are both of the cut stream.
    cut = subprocess.run(["gzip", "-1c"], input=root_tar.read_bytes(), capture_output=True, check=True).stdout
    src = oci_dir(tmp_path / "cut", [cut[: len(cut) // 2]])
    res = cli("image", "import", "img", f"oci:{src}:t", check=False)
    assert res.returncode == 1 and "layer 1 (sha256:" in res.stderr and "not a readable tar archive" in res.stderr
    # No kernel: a root, but nothing to boot.
    bare = oci_dir(tmp_path / "bare", [tar_layer([entry("etc", kind=tarfile.DIRTYPE), entry("bin/sh", b"#!")])])
    res = cli("image", "import", "img", f"oci:{bare}:t", check=False)
    assert res.returncode == 1 and f"oci:{bare}:t has no kernel (/boot/vmlinuz-*)" in res.stderr, res.stderr
    # A file larger than the limit (a small limit here: the check is on the size the layer claims).
    big = oci_dir(tmp_path / "big", [root_tar.read_bytes(), tar_layer([entry("var/big", b"\0" * (17 << 20))])])
    with pytest.raises(UserError, match=r"layer 2 .*'var/big' is 17825792 bytes, more than 16777216"):
        images.import_image(state, "img", f"oci:{big}:t", limits=oci.Limits(max_file=16 << 20))
    with pytest.raises(UserError, match=r"unpacks to \d+ MiB; .* MiB free"):
        images.import_image(state, "img", f"oci:{big}:t", limits=oci.Limits(spare=1 << 60))
    still_served(cli, served)


def test_export_then_import_round_trips(cli, root_tar, tmp_path, served):
    state = State(cli.state)
    cli("image", "exec", "img", "--", "sh", "-c", "echo two > /etc/second")
    out = tmp_path / "out" / "img.oci.tar"
    res = cli("image", "export", "img", "--version", "v1", f"oci-archive:{out}")
    assert f"wrote {out}" in res.stdout and not list(out.parent.glob(".*"))
    cli("image", "export", "img", f"docker-archive:{tmp_path / 'img.docker.tar'}")
    cli("image", "import", "copy", f"oci-archive:{out}")
    cli("image", "import", "copy", f"docker-archive:{tmp_path / 'img.docker.tar'}")
    one, two = (layout.image_rootfs(state, "copy", v) for v in ("v1", "v2"))
    assert (one / "keep" / "x").read_text() == "kept\n" and not (one / "etc" / "second").exists()
    assert (two / "etc" / "second").read_text() == "two\n"
    assert layout.image_kernel(state, "copy", "v1").read_bytes() == layout.image_kernel(state, "img", "v1").read_bytes()
    res = cli("image", "export", "img", f"oci:{tmp_path / 'dir'}", check=False)
    assert res.returncode == 1 and "oci: is not one of oci-archive:, docker-archive:" in res.stderr
    res = cli("image", "export", "img", "--version", "v9", f"oci-archive:{out}", check=False)
    assert res.returncode == 1 and "img has no version v9" in res.stderr
