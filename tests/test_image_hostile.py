"""Hostile images: links that lead out of the image root (absolute, `..` chains, linked
directories on the way) never make `provisioner image import`, `image exec` or `initramfs
build` write or read a file of this host. Canary files outside the image stay as they were,
nothing of them lands in the state directory (what the servers hand out), and a kernel or
module that is not in the image is refused with an error that says so."""

from __future__ import annotations

import lzma
import os
import re
import shutil
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest

from labs.busyroot import host_kernel, make_root
from provisioner.artifacts import layout
from provisioner.artifacts.initramfs import kernel_versions
from provisioner.artifacts.kmod import MAX_MODULE, modules_dir, plain_module
from provisioner.errors import UserError
from provisioner.inroot import Root, RootPathError
from provisioner.paths import State
from provisioner.render.overlays import IdMap

SECRET = b"MUNGE-KEY-CANARY-" + os.urandom(16).hex().encode()


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return make_root(tmp_path_factory.mktemp("clean") / "rootfs", "#!/bin/sh\n")


@pytest.fixture
def canary(tmp_path):
    """Host files an image must never touch: a secret, a machine-id, an ssh and a dbus dir."""
    d = tmp_path / "host"
    (d / "ssh").mkdir(parents=True)
    (d / "dbus").mkdir()
    (d / "secret").write_bytes(SECRET)
    (d / "machine-id").write_text("host-machine-id\n")
    (d / "ssh" / "ssh_host_ed25519_key").write_text("host key\n")
    (d / "dbus" / "machine-id").write_text("host dbus id\n")
    return d


def snapshot(d: Path) -> dict[str, tuple[str, bytes]]:
    """Every entry under `d`: its kind and content (links by target)."""
    out = {}
    for p in sorted(d.rglob("*")):
        kind = "link" if p.is_symlink() else "dir" if p.is_dir() else "file"
        data = os.readlink(p).encode() if kind == "link" else p.read_bytes() if kind == "file" else b""
        out[str(p.relative_to(d))] = (kind, data)
    return out


def image(clean: Path, tmp_path: Path) -> Path:
    root = tmp_path / "hostile"
    shutil.copytree(clean, root, symlinks=True)
    return root


def relink(path: Path, target: str | Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def up_to_slash(root: Path, inside: str) -> str:
    """A relative link target from `inside` (a dir in the image) that climbs to the host's /."""
    return "../" * (len(Path(root, inside).resolve().parts) + 3)


def nothing_leaked(state: Path) -> None:
    """No file in the state directory carries the secret."""
    found = subprocess.run(["grep", "-rlF", SECRET.decode(), str(state)], capture_output=True, text=True, check=False)
    assert found.stdout == "", found.stdout


def test_identity_scrub_replaces_links_and_never_writes_through_them(cli, clean, tmp_path, canary):
    root = image(clean, tmp_path)
    before = snapshot(canary)
    relink(root / "etc" / "machine-id", canary / "machine-id")
    relink(root / "etc" / "ssh", canary / "ssh")
    (root / "var" / "lib").mkdir(parents=True)
    relink(root / "var" / "lib" / "dbus", up_to_slash(root, "var/lib") + str(canary / "dbus").lstrip("/"))
    cli("image", "import", "tiny", root)
    assert snapshot(canary) == before
    rootfs = layout.image_rootfs(State(cli.state), "tiny")
    mid = rootfs / "etc" / "machine-id"
    assert not mid.is_symlink() and mid.read_text() == ""
    assert (rootfs / "etc" / "ssh").is_symlink()  # the image's own link, left for the node


def test_machine_id_through_a_dotdot_chain_and_a_linked_etc(cli, clean, tmp_path, canary):
    root = image(clean, tmp_path)
    before = snapshot(canary)
    relink(root / "etc" / "machine-id", up_to_slash(root, "etc") + str(canary / "machine-id").lstrip("/"))
    (root / "var" / "lib" / "dbus").mkdir(parents=True)
    (root / "var" / "lib" / "dbus" / "machine-id").write_text("image dbus id\n")
    cli("image", "import", "tiny", root)
    assert snapshot(canary) == before
    rootfs = layout.image_rootfs(State(cli.state), "tiny")
    assert os.readlink(rootfs / "var" / "lib" / "dbus" / "machine-id") == "/etc/machine-id"
    assert (rootfs / "etc" / "machine-id").read_text() == ""


@pytest.mark.parametrize("how", ["absolute", "dotdot", "linked-boot"])
def test_a_kernel_that_is_a_link_out_of_the_image_is_refused(cli, clean, tmp_path, canary, how):
    root = image(clean, tmp_path)
    kver = host_kernel()
    kernel = root / "boot" / f"vmlinuz-{kver}"
    if how == "absolute":
        relink(kernel, canary / "secret")
    elif how == "dotdot":
        relink(kernel, up_to_slash(root, "boot") + str(canary / "secret").lstrip("/"))
    else:
        (canary / "boot").mkdir()
        (canary / "boot" / f"vmlinuz-{kver}").write_bytes(SECRET)
        relink(root / "boot", canary / "boot")
    res = cli("image", "import", "tiny", root, "--kernel", kver, check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    if how == "linked-boot":
        assert f"no kernel {kver} in the image (has: none)" in res.stderr
    else:
        assert f"kernel {kver} refused: boot/vmlinuz-{kver} (through a link to " in res.stderr
        assert "No such file or directory in the image at" in res.stderr
    assert not layout.image_dir(State(cli.state), "tiny").exists()
    nothing_leaked(cli.state)
    assert (canary / "secret").read_bytes() == SECRET


def test_kernel_versions_are_plain_names(tmp_path):
    for name in ("vmlinuz-6.1.0-9-amd64", "vmlinuz-..", "vmlinuz-.hidden", "vmlinuz-", "vmlinuz-6.1+x~rc1"):
        (tmp_path / "boot").mkdir(exist_ok=True)
        (tmp_path / "boot" / name).write_bytes(b"k")
    assert kernel_versions(tmp_path) == ["6.1.0-9-amd64", "6.1+x~rc1"]


def test_a_kernel_that_is_a_device_is_never_opened(cli, clean, tmp_path):
    root = image(clean, tmp_path)
    kver = host_kernel()
    kernel = root / "boot" / f"vmlinuz-{kver}"
    kernel.unlink()
    os.mknod(kernel, 0o600 | 0o020000, os.makedev(1, 5))  # /dev/zero: read forever
    res = cli("image", "import", "tiny", root, check=False)
    assert res.returncode == 1
    assert f"boot/vmlinuz-{kver} in the image at" in res.stderr and "is not a regular file" in res.stderr


def test_a_kernel_linked_inside_the_image_is_taken(cli, clean, tmp_path):
    """An absolute link means the image's own file (as on the node), not this host's."""
    root = image(clean, tmp_path)
    kver = host_kernel()
    kernel = root / "boot" / f"vmlinuz-{kver}"
    data = kernel.read_bytes()
    (root / "usr" / "lib" / "kernels").mkdir(parents=True)
    kernel.rename(root / "usr" / "lib" / "kernels" / kver)
    kernel.symlink_to(f"/usr/lib/kernels/{kver}")
    cli("image", "import", "tiny", root)
    assert layout.image_kernel(State(cli.state), "tiny").read_bytes() == data


def module_tree(root: Path, kver: str) -> Path:
    found = modules_dir(root, kver)
    assert found is not None, f"no module tree of {kver} in {root}"
    return found


def test_a_module_that_is_a_link_out_of_the_image_is_refused(cli, clean, tmp_path, canary):
    kver = host_kernel()
    # With modules.dep in the image: the module is read inside the image, where it is not.
    root = image(clean, tmp_path)
    subprocess.run(["depmod", "-b", str(root), kver], check=True)
    overlay = next(module_tree(root, kver).rglob("overlay.ko"))
    (canary / "overlay.ko").write_bytes(SECRET)
    relink(overlay, canary / "overlay.ko")
    res = cli("image", "import", "tiny", root, check=False)
    assert res.returncode == 1
    assert "kernel/fs/overlayfs/overlay.ko (through a link to " in res.stderr
    assert "No such file or directory in the image at" in res.stderr
    nothing_leaked(cli.state)
    # Without modules.dep: depmod would follow the link on this host, so it does not run.
    (module_tree(root, kver) / "modules.dep").unlink()
    res = cli("image", "import", "tiny", root, check=False)
    assert res.returncode == 1
    assert f"is a link ({canary / 'overlay.ko'}) and the module tree of {kver} has no modules.dep" in res.stderr
    assert not (canary / "modules.dep").exists()
    nothing_leaked(cli.state)


def test_modules_dep_naming_a_path_out_of_the_module_tree_is_refused(cli, clean, tmp_path):
    kver = host_kernel()
    root = image(clean, tmp_path)
    subprocess.run(["depmod", "-b", str(root), kver], check=True)
    dep = module_tree(root, kver) / "modules.dep"
    dep.write_text(dep.read_text().replace("kernel/fs/overlayfs/overlay.ko:", "../../../etc/overlay.ko:"))
    res = cli("image", "import", "tiny", root, check=False)
    assert res.returncode == 1
    assert (
        "modules.dep of " + kver + " names '../../../etc/overlay.ko', not a module inside its module tree" in res.stderr
    )


def bomb(suffix: str, path: Path) -> None:
    """A compressed module that unpacks to more than MAX_MODULE bytes of zeros (made in chunks)."""
    chunk, n = b"\0" * 2**20, (MAX_MODULE >> 20) + 1
    if suffix == ".zst":
        subprocess.run(f"head -c {n}M /dev/zero | zstd -q -1 -o {path}", shell=True, check=True)
        return
    c = lzma.LZMACompressor(preset=0) if suffix == ".xz" else zlib.compressobj(1, wbits=31)
    path.write_bytes(b"".join(c.compress(chunk) for _ in range(n)) + c.flush())


def test_a_module_that_unpacks_to_gigabytes_is_refused(cli, clean, tmp_path):
    kver = host_kernel()
    root = image(clean, tmp_path)
    mdir = module_tree(root, kver)
    overlay = next(mdir.rglob("overlay.ko"))
    bomb(".xz", overlay.with_name("overlay.ko.xz"))
    overlay.unlink()
    subprocess.run(["depmod", "-b", str(root), kver], check=True)
    res = cli("image", "import", "tiny", root, check=False)
    assert res.returncode == 1 and "overlay.ko.xz unpacks to more than 256 MiB: not a kernel module" in res.stderr
    for suffix in (".gz", ".zst"):
        bomb(suffix, tmp_path / f"m.ko{suffix}")
        with pytest.raises(UserError, match=f"m.ko{suffix} unpacks to more than 256 MiB"):
            plain_module(f"m.ko{suffix}", (tmp_path / f"m.ko{suffix}").read_bytes())
    with pytest.raises(UserError, match=r"cannot decompress m\.ko\.xz"):
        plain_module("m.ko.xz", lzma.compress(b"module")[:-8])


def test_a_module_tree_that_links_to_the_hosts_is_looked_up_inside_the_image(cli, clean, tmp_path):
    """lib/modules -> /lib/modules: inside the image that is itself, a loop, never the host's tree."""
    kver = host_kernel()
    root = image(clean, tmp_path)
    relink(root / "lib" / "modules", "/lib/modules")
    res = cli("image", "import", "tiny", root)
    assert f"no modules for {kver} in the image: no initramfs" in res.stderr
    assert not layout.image_initramfs(State(cli.state), "tiny").exists()


def test_initramfs_build_reads_modules_inside_the_current_version(cli, clean, tmp_path, canary):
    root = image(clean, tmp_path)
    cli("image", "import", "tiny", root)
    rootfs = layout.image_rootfs(State(cli.state), "tiny")
    (canary / "e1000.ko").write_bytes(SECRET)
    relink(next(rootfs.rglob("e1000.ko")), canary / "e1000.ko")
    res = cli("initramfs", "build", "tiny", check=False)
    assert res.returncode == 1 and "e1000.ko (through a link to " in res.stderr
    nothing_leaked(cli.state)


def test_exec_mounts_inside_the_image_or_refuses(cli, clean, tmp_path, canary):
    """/proc and /sys as links out of the image: exec mounts nothing and makes no directory on
    this host; it says where the link leads. A missing /sys is made inside the image."""
    root = image(clean, tmp_path)
    shutil.rmtree(root / "proc")
    shutil.rmtree(root / "sys")
    relink(root / "proc", canary / "made-by-exec")
    cli("image", "import", "tiny", root)
    before = snapshot(canary)
    res = cli("image", "exec", "tiny", "--", "true", check=False)
    assert res.returncode == 1 and f"proc (through a link to {canary / 'made-by-exec'}): No such file" in res.stderr
    assert snapshot(canary) == before
    rootfs = layout.image_rootfs(State(cli.state), "tiny")
    (rootfs / "proc").unlink()
    (rootfs / "proc").mkdir()
    cli("image", "exec", "tiny", "--", "sh", "-c", "test -d /sys/class && echo ok > /etc/exec-ran")
    assert (rootfs / "etc" / "exec-ran").read_text() == "ok\n" and (rootfs / "sys").is_dir()


def test_a_tarball_that_plants_a_link_then_writes_through_it_fails_cleanly(cli, clean, tmp_path, canary):
    before = snapshot(canary)
    tarball = tmp_path / "evil.tar"
    with tarfile.open(tarball, "w") as t:
        t.add(clean, arcname=".")
        link = tarfile.TarInfo("etc/evil")
        link.type, link.linkname = tarfile.SYMTYPE, str(canary / "ssh")
        t.addfile(link)
        member = tmp_path / "payload"
        member.write_text("planted\n")
        t.add(member, arcname="etc/evil/authorized_keys")
    res = cli("image", "import", "tiny", tarball, check=False)
    assert res.returncode == 1 and "unpacking" in res.stderr
    assert snapshot(canary) == before


def test_root_resolves_every_link_inside_the_root(tmp_path, canary):
    root = tmp_path / "r"
    (root / "a" / "b").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("img:x:7:7::/:/bin/sh\n")
    (root / "a" / "b" / "up").symlink_to("../../../../../..")
    (root / "abs").symlink_to("/etc")
    (root / "loop").symlink_to("loop")
    (root / "host").symlink_to(canary)
    r = Root(root)
    real = Path(os.path.realpath(root))
    assert r.resolve("a/b/up") == real
    assert r.resolve("a/b/up/etc/passwd") == real / "etc" / "passwd"
    assert r.resolve("abs/passwd") == real / "etc" / "passwd"
    assert r.read_text("a/b/up/abs/../etc/passwd").startswith("img:")
    with pytest.raises(RootPathError, match=r"loop .*Too many levels of symbolic links"):
        r.resolve("loop")
    with pytest.raises(RootPathError, match=re.escape(f"host/secret (through a link to {canary})")):
        r.read_bytes("host/secret")
    assert not r.is_file("host/secret") and r.lexists("host")
    r.write_bytes("host", b"replaced")
    assert (root / "host").read_bytes() == b"replaced" and (canary / "secret").read_bytes() == SECRET
    (root / "etc" / "passwd").unlink()
    (root / "etc" / "passwd").symlink_to(canary / "secret")
    assert IdMap.load(root).origin == "/etc"  # the image has no passwd of its own: the master's
