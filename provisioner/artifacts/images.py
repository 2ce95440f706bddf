"""Node root filesystems: built with debootstrap or imported, versioned side by side.

Every change (build, import, exec) makes a new version in a hidden staging directory and,
only once it is complete (root, kernel, initramfs, meta.json), renames it into versions/ and
switches the `current` symlink atomically. A node booting mid-rebuild therefore gets one
whole version, and a reader that opened the old kernel keeps reading the old bytes.

Boot configs pin a version (kernel, initramfs and NFS root of one version), so after a switch
the caller re-renders them (`on_switch`); old versions are pruned only once that succeeded,
never while a boot config may still name one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_write, locked
from ..errors import UserError
from ..inroot import Root, RootPathError
from ..paths import State
from . import imagediff, layout, oci
from .commands import Progress as Progress
from .commands import run_logged as _run
from .dracut import build_dracut
from .initramfs import kernel_versions, write_initramfs
from .kmod import modules_dir
from .pins import pinned_versions
from .recipes import Recipe, write_files

# Called under the image's lock right after `current` switched to a new version; True once the
# boot configs name it, so older versions may be pruned (False keeps them all).
OnSwitch = Callable[["ImageVersion"], bool]

DEFAULT_SUITE = "bookworm"
# What a Slurm compute node needs to boot and join (`provisioner demo` boots exactly this set):
# kernel, init, udev and kmod (modprobe), iproute2; MUNGE and slurmd, which needs dbus for its
# cgroup v2 scope; libpmix2 for Slurm's mpi/pmix (the slurm overlay links the unversioned
# libpmix.so it loads; libpmix-dev, which ships that link, breaks debootstrap); OpenMPI and
# MPICH; sshd (host keys come from the ssh overlay, see _scrub_node_identity); curl reports the
# node's facts, nfs-common mounts the NFS homes.
DEFAULT_PACKAGES = (
    "linux-image-amd64",
    "systemd-sysv",
    "udev",
    "kmod",
    "iproute2",
    "dbus",
    "munge",
    "slurmd",
    "libpmix2",
    "openmpi-bin",
    "mpich",
    "openssh-server",
    "curl",
    "nfs-common",
    # The base overlay's time and log clients: timesyncd keeps time from the master's chrony,
    # rsyslog forwards the journal to the master's rsyslog (`provisioner configure ntp|logs`).
    "systemd-timesyncd",
    "rsyslog",
    # Prometheus' node exporter on :9100, enabled by the node-exporter overlay.
    "prometheus-node-exporter",
)


def _scrub_node_identity(image: Root) -> None:
    """Clear what must differ between nodes that share one root, at every commit of a version:
    sshd's host keys (openssh-server's postinst makes a set; each node gets its own from the
    ssh overlay) and the machine ID, which systemd makes at boot when /etc/machine-id is empty
    but takes from a D-Bus machine-id file if there is one (dbus's postinst writes one), so
    that becomes a link to /etc/machine-id, as machine-id(5) describes. Each entry is replaced
    or removed itself, never written through: the image's links lead nowhere on this host."""
    if image.is_dir("etc/ssh"):
        for name in image.listdir("etc/ssh"):
            if name.startswith("ssh_host_") and not image.is_dir(f"etc/ssh/{name}"):
                image.unlink(f"etc/ssh/{name}")
    machine_id = image.lstat("etc/machine-id", follow=False)
    if machine_id is not None and (stat.S_ISREG(machine_id.st_mode) or stat.S_ISLNK(machine_id.st_mode)):
        image.write_bytes("etc/machine-id", b"", 0o444)  # each node makes its own at first boot
    dbus_id = image.lstat("var/lib/dbus/machine-id", follow=False)
    if dbus_id is not None and stat.S_ISREG(dbus_id.st_mode):
        image.symlink("var/lib/dbus/machine-id", "/etc/machine-id")


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
VERSION_RE = re.compile(r"^v(\d+)$")


@dataclass(frozen=True)
class ImageVersion:
    image: str
    version: str
    path: Path
    meta: dict[str, Any]
    current: bool


def _quiet(_: str) -> None:
    pass


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UserError(f"bad image name {name!r}: letters, digits, '.', '_', '-' (not first), up to 64")
    return name


def _image_root(state: State, name: str) -> Path:
    return state.images / check_name(name)


def _version_number(v: str) -> int:
    m = VERSION_RE.match(v)
    return int(m.group(1)) if m else -1


def current_version(state: State, name: str) -> str | None:
    """The version `current` points at, or None (no version yet)."""
    link = layout.image_dir(state, name)
    try:
        version = Path(os.readlink(link)).name
    except OSError:
        return None
    return version if VERSION_RE.match(version) else None


def versions(state: State, name: str) -> list[ImageVersion]:
    """The image's complete versions, oldest first."""
    vdir = layout.image_versions(state, name)
    cur = current_version(state, name)
    found = (
        sorted((p for p in vdir.glob("v*") if VERSION_RE.match(p.name)), key=lambda p: _version_number(p.name))
        if vdir.is_dir()
        else []
    )
    out = []
    for p in found:
        meta_file = p / layout.IMAGE_META
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        out.append(ImageVersion(name, p.name, p, meta, p.name == cur))
    return out


def list_images(state: State) -> list[ImageVersion]:
    """The current version of every image."""
    if not state.images.is_dir():
        return []
    return [
        v
        for d in sorted(state.images.iterdir())
        if d.is_dir() and NAME_RE.match(d.name)
        for v in versions(state, d.name)
        if v.current
    ]


def nfs_roots(state: State) -> dict[str, Path]:
    """What NFS exports for each image that has a version: its own directory, resolved (it
    never switches; nfs-ganesha refuses a path through a symlink)."""
    return {v.image: Path(os.path.realpath(layout.image_top(state, v.image))) for v in list_images(state)}


def host_mirror() -> str:
    """The Debian mirror this host installs from (deb822 `URIs:` or one-line `deb` sources)."""
    uris: list[str] = []
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in f.read_text().splitlines():
            if line.startswith("URIs:"):
                uris += line.split()[1:]
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]:
        if f.exists():
            for line in f.read_text().splitlines():
                parts = line.split()
                if parts[:1] == ["deb"]:
                    uris += [p for p in parts[1:] if "://" in p][:1]
    for uri in uris:
        if "security" not in uri:
            return uri
    raise UserError("no Debian mirror in /etc/apt/sources.list(.d): pass --mirror URL")


# --- versions: stage, commit, switch ------------------------------------------------------


def _new_staging(state: State, name: str) -> tuple[str, Path]:
    vdir = layout.image_versions(state, name)
    vdir.mkdir(parents=True, exist_ok=True)
    taken = [_version_number(p.name.strip(".").split(".")[0]) for p in vdir.iterdir()]
    version = f"v{max(taken, default=0) + 1}"
    staging = vdir / f".{version}.partial"
    (staging / "rootfs").mkdir(parents=True)
    return version, staging


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def _discard(path: Path) -> None:
    """Delete a staging tree, never through a mount that something left inside it."""
    for point in sorted(_mounts_under(path), reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
    if _mounts_under(path):
        raise UserError(f"{path} still has mounts inside; not deleting it")
    shutil.rmtree(path, ignore_errors=True)


def _switch(state: State, name: str, version: str) -> None:
    link = layout.image_dir(state, name)
    tmp = link.with_name(f".current.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(f"versions/{version}")
    os.replace(tmp, link)
    fd = os.open(link.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(state: State, name: str, keep: int) -> None:
    """Drop the oldest versions beyond `keep`, never one a node is pinned to (pins.py)."""
    held = pinned_versions(state, name)
    old = [v for v in versions(state, name) if not v.current and v.version not in held]
    for v in old[: max(0, len(old) - (keep - 1))]:
        _discard(v.path)


def _take_kernel(
    staging: Path,
    kernel: str | None,
    compression: str,
    progress: Progress,
    prefer: str | None = None,
    modules: tuple[str, ...] = (),
) -> str | None:
    """Copy /boot/vmlinuz-KVER out of the root and build the initramfs from its modules (and the
    extra `modules` its nodes ask for): `kernel` if given, else `prefer` (the parent version's)
    while it is still there, else the newest."""
    rootfs = staging / "rootfs"
    found = kernel_versions(rootfs)
    if kernel and kernel not in found:
        raise UserError(f"no kernel {kernel} in the image (has: {', '.join(found) or 'none'})")
    if not found:
        progress("no /boot/vmlinuz-* in the image: no kernel or initramfs for this version")
        return None
    kver = kernel or (prefer if prefer in found else found[-1])
    try:
        atomic_write(staging / "vmlinuz", Root(rootfs).read_bytes(f"boot/vmlinuz-{kver}"))
    except RootPathError as e:
        raise UserError(f"kernel {kver} refused: {e}") from None
    if modules_dir(rootfs, kver) is not None:
        progress(f"initramfs for {kver} ({compression})")
        write_initramfs(staging, kver, compression, modules)
    else:
        progress(f"no modules for {kver} in the image: no initramfs")
    return kver


def _commit(
    state: State,
    name: str,
    version: str,
    staging: Path,
    meta: dict[str, Any],
    kernel: str | None,
    compression: str,
    keep: int,
    progress: Progress,
    on_switch: OnSwitch | None,
    modules: tuple[str, ...] = (),
) -> ImageVersion:
    prefer = meta.pop("kernel", None)
    rootfs = staging / "rootfs"
    image = Root(rootfs)
    if not image.is_dir("etc") or not any(image.lexists(p) for p in ("bin/sh", "usr/bin/sh")):
        raise UserError(f"{meta.get('source', 'the source')} does not look like a root filesystem (no etc/ or bin/sh)")
    _scrub_node_identity(image)
    kver = _take_kernel(staging, kernel, compression, progress, prefer, modules)
    meta = {**meta, "kernel": kver, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write(staging / layout.IMAGE_META, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    final = layout.image_versions(state, name) / version
    os.rename(staging, final)
    _switch(state, name, version)
    progress(f"{name}: now at {version}")
    made = next(v for v in versions(state, name) if v.version == version)
    if on_switch is None or on_switch(made):
        _prune(state, name, keep)
    else:
        progress(f"{name}: older versions kept (boot configs may still name one)")
    return made


def _make_version(
    state: State,
    name: str,
    fill: Callable[[Path], dict[str, Any]],
    kernel: str | None,
    compression: str,
    keep: int,
    progress: Progress,
    on_switch: OnSwitch | None,
    modules: tuple[str, ...] = (),
) -> ImageVersion:
    with locked(_image_root(state, name)):
        version, staging = _new_staging(state, name)
        try:
            meta = fill(staging / "rootfs")
            return _commit(state, name, version, staging, meta, kernel, compression, keep, progress, on_switch, modules)
        except BaseException:
            _discard(staging)
            raise


# --- sources: debootstrap, a directory, a tarball -----------------------------------------


def cache_key(suite: str, variant: str, packages: tuple[str, ...]) -> str:
    text = json.dumps([suite, variant, sorted(set(packages))])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_file(cache_dir: Path, suite: str, variant: str, packages: tuple[str, ...]) -> Path:
    """The tarball a build with these inputs reuses (or writes) in `cache_dir`."""
    return Path(cache_dir) / f"{cache_key(suite, variant, tuple(packages))}.tar"


def debootstrap_argv(suite: str, packages: tuple[str, ...], variant: str, target: Path | str, mirror: str) -> list[str]:
    """The debootstrap command build_image runs (in a private mount namespace) to make a root."""
    argv = ["debootstrap", f"--variant={variant}"]
    if packages:
        argv.append("--include=" + ",".join(packages))
    return [*argv, suite, str(target), mirror]


def _debootstrap(
    rootfs: Path,
    suite: str,
    packages: tuple[str, ...],
    variant: str,
    mirror: str,
    cache_dir: Path | None,
    progress: Progress,
) -> dict[str, Any]:
    """Fill `rootfs` by debootstrap, or from the cached root of the same inputs in `cache_dir`."""
    cached = cache_file(cache_dir, suite, variant, packages) if cache_dir else None
    if cached and cached.exists():
        progress(f"using cached root {cached}")
        _run(["tar", "-xpf", str(cached), "-C", str(rootfs), "--numeric-owner"], progress, "unpacking the cache")
    else:
        # A private mount namespace: debootstrap's /proc and /sys mounts in the target die
        # with it even if it is killed.
        _run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                *debootstrap_argv(suite, packages, variant, rootfs, mirror),
            ],
            progress,
            "debootstrap",
        )
        subprocess.run(["chroot", str(rootfs), "apt-get", "clean"], check=False, capture_output=True)
        if cached:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
            _run(["tar", "-cpf", str(tmp), "-C", str(rootfs), "--numeric-owner", "."], progress, "caching the root")
            os.replace(tmp, cached)
    return {
        "source": "debootstrap",
        "suite": suite,
        "variant": variant,
        "packages": sorted(packages),
        "mirror": mirror,
    }


def build_image(
    state: State,
    name: str,
    suite: str = DEFAULT_SUITE,
    packages: tuple[str, ...] = DEFAULT_PACKAGES,
    mirror: str | None = None,
    variant: str = "minbase",
    kernel: str | None = None,
    cache_dir: Path | None = None,
    compression: str = "gzip",
    keep: int = 3,
    progress: Progress = _quiet,
    on_switch: OnSwitch | None = None,
    modules: tuple[str, ...] = (),
) -> ImageVersion:
    """debootstrap a new version of `name`. With `cache_dir`, a finished root is kept there as a
    tarball keyed by suite, variant and package list, and reused instead of debootstrapping."""
    source = mirror or host_mirror()

    def fill(rootfs: Path) -> dict[str, Any]:
        return _debootstrap(rootfs, suite, tuple(packages), variant, source, cache_dir, progress)

    return _make_version(state, name, fill, kernel, compression, keep, progress, on_switch, modules)


def import_image(
    state: State,
    name: str,
    source: Path | str,
    kernel: str | None = None,
    compression: str = "gzip",
    keep: int = 3,
    progress: Progress = _quiet,
    on_switch: OnSwitch | None = None,
    modules: tuple[str, ...] = (),
    limits: oci.Limits = oci.LIMITS,
) -> ImageVersion:
    """Adopt an existing root as a new version: a directory, a tarball (any compression tar
    reads) or a container image (`oci-archive:FILE`, `docker-archive:FILE`, `oci:DIR[:TAG]`,
    `containers-storage:NAME`, `podman:NAME`), which must carry a kernel."""
    ref = oci.parse_ref(str(source))
    path = Path(source)
    if ref is None and not path.exists():
        raise UserError(f"no such directory or tarball: {source}")

    def fill(rootfs: Path) -> dict[str, Any]:
        if ref is not None:
            meta = _from_oci(ref, rootfs, progress, limits)
            _need_kernel(rootfs, f"{ref} has no kernel (/boot/vmlinuz-*): install one in the container image")
            return meta
        progress(f"copying {path}")
        if path.is_dir():
            _run(["cp", "-a", "--reflink=auto", f"{path}/.", str(rootfs)], progress, f"copying {path}")
        else:
            _run(["tar", "-xpf", str(path), "-C", str(rootfs), "--numeric-owner"], progress, f"unpacking {path}")
        return {"source": str(path.resolve())}

    return _make_version(state, name, fill, kernel, compression, keep, progress, on_switch, modules)


def _from_oci(ref: oci.OciRef, rootfs: Path, progress: Progress, limits: oci.Limits = oci.LIMITS) -> dict[str, Any]:
    rootfs.rmdir()  # umoci makes it
    return {"source": str(ref), "oci_digest": oci.import_root(ref, rootfs.parent, rootfs, progress, limits)}


def _need_kernel(rootfs: Path, why: str) -> None:
    if not kernel_versions(rootfs):
        raise UserError(why)


def build_recipe(
    state: State,
    name: str,
    recipe: Recipe,
    beside: Path,
    mirror: str | None = None,
    cache_dir: Path | None = None,
    compression: str = "gzip",
    keep: int = 3,
    progress: Progress = _quiet,
    on_switch: OnSwitch | None = None,
    modules: tuple[str, ...] = (),
) -> ImageVersion:
    """A new version of `name` as its recipe says (see recipes.py): the base (debootstrap, with
    the packages included and cached as build_image does, or a container image, with the
    packages installed by apt-get), then its files, then its commands. A command that fails
    stops the build with its output; no version is made."""
    ref = oci.parse_ref(recipe.oci) if recipe.oci else None
    source = recipe.mirror or mirror

    def fill(rootfs: Path) -> dict[str, Any]:
        if ref is None:
            suite = recipe.suite or DEFAULT_SUITE
            meta = _debootstrap(
                rootfs, suite, recipe.packages, recipe.variant, source or host_mirror(), cache_dir, progress
            )
        else:
            meta = _from_oci(ref, rootfs, progress)
            if recipe.packages:
                install = "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                _in_chroot(rootfs, install + shlex.join(recipe.packages), progress)
        write_files(recipe, beside, rootfs)
        for command in recipe.commands:
            _in_chroot(rootfs, command, progress)
        if ref is not None:
            _need_kernel(rootfs, f"{name}: {ref} has no kernel after the recipe (/boot/vmlinuz-*)")
        return {**meta, "recipe": recipe.to_json()}

    return _make_version(state, name, fill, recipe.kernel, compression, keep, progress, on_switch, modules)


def _in_chroot(rootfs: Path, command: str, progress: Progress) -> None:
    progress(f"$ {command}")
    _run(_chroot_argv(rootfs, ["/bin/sh", "-c", command]), progress, f"recipe command {command!r}")


def export_image(state: State, name: str, dest: str, version: str | None = None, progress: Progress = _quiet) -> Path:
    """Write a version of the image (default: the current one) as an OCI image to `dest`
    (`oci-archive:FILE` or `docker-archive:FILE`); returns the file written."""
    ref = oci.parse_ref(dest, oci.EXPORTS)
    if ref is None or ref.file is None:
        raise UserError(f"export to {dest!r}: give {' or '.join(t + ':FILE' for t in oci.EXPORTS)}")
    vs = versions(state, name)
    v = next((v for v in vs if (v.version == version if version else v.current)), None)
    if v is None:
        raise UserError(f"{name} has no version {version}" if version and vs else f"no image {name!r}")
    work = Path(tempfile.mkdtemp(prefix=f".export-{name}-", dir=layout.image_top(state, name)))
    try:
        labels = {"org.provisioner.image": name, "org.provisioner.version": v.version}
        oci.export_root(v.path / "rootfs", ref, work, progress, labels)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ref.file


# --- administration -----------------------------------------------------------------------


def rollback(state: State, name: str, to: str | None = None) -> ImageVersion:
    """Point `current` back at the previous version (or at `to`)."""
    with locked(_image_root(state, name)):
        vs = versions(state, name)
        if not vs:
            raise UserError(f"no image {name!r}")
        cur = next((i for i, v in enumerate(vs) if v.current), len(vs))
        if to is not None:
            target = next((v for v in vs if v.version == to), None)
            if target is None:
                raise UserError(f"{name} has no version {to} (has: {', '.join(v.version for v in vs)})")
        elif cur == 0:
            raise UserError(f"{name} has no version older than {vs[0].version}")
        else:
            target = vs[cur - 1]
        _switch(state, name, target.version)
        return target


def remove(state: State, name: str, version: str | None = None) -> None:
    """Remove one old version, or the whole image (its `current` link goes first)."""
    root = _image_root(state, name)
    with locked(root):
        vs = versions(state, name)
        if not vs:
            raise UserError(f"no image {name!r}")
        if version is None:
            layout.image_dir(state, name).unlink(missing_ok=True)
            _discard(root)
            return
        target = next((v for v in vs if v.version == version), None)
        if target is None:
            raise UserError(f"{name} has no version {version}")
        if target.current:
            raise UserError(f"{name} {version} is the current version: roll back first")
        if version in pinned_versions(state, name):
            raise UserError(f"{name} {version} is pinned for a rollout (`provisioner rollout status`)")
        _discard(target.path)


_CHROOT = (
    "set -e; r=$1 proc=$2 sys=$3 dev=$4; shift 4; "
    'mount -t proc proc "$proc"; mount -t sysfs sysfs "$sys"; mount --rbind /dev "$dev"; '
    'exec chroot "$r" "$@"'
)


def _chroot_argv(rootfs: Path, argv: list[str]) -> list[str]:
    """The command that runs `argv` chrooted in `rootfs` with /proc, /sys and /dev mounted on
    the directories those names have inside the image (made there if missing). The mounts live
    in a private mount and PID namespace, so they and every process started go away on exit."""
    image = Root(rootfs)
    points = [str(image.mkdir(d)) for d in ("proc", "sys", "dev")]
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--kill-child",
        "--",
        "sh",
        "-c",
        _CHROOT,
        "chroot",
        str(rootfs),
        *points,
        *argv,
    ]


def chroot_run(rootfs: Path, argv: list[str]) -> int:
    """Run `argv` in the image (see _chroot_argv), its output on ours; its exit status."""
    return subprocess.run(_chroot_argv(rootfs, argv), check=False).returncode


def exec_in_image(
    state: State,
    name: str,
    argv: list[str],
    in_place: bool = False,
    kernel: str | None = None,
    compression: str = "gzip",
    keep: int = 3,
    progress: Progress = _quiet,
    on_switch: OnSwitch | None = None,
    modules: tuple[str, ...] = (),
) -> int:
    """Run a command inside the image. By default on a copy that becomes the new version only
    if the command succeeds (nodes never see a half-installed package); `in_place` edits the
    current version directly. The version copied is the one current once the image's lock is
    held: an exec that waited for another starts from what that one made."""
    _current(state, name)  # a missing image is an error before any wait
    if in_place:
        with locked(_image_root(state, name)):
            return chroot_run(_current(state, name).path / "rootfs", argv)
    parent: list[ImageVersion] = []

    def fill(rootfs: Path) -> dict[str, Any]:
        cur = _current(state, name)
        parent.append(cur)
        progress(f"copying {name} {cur.version}")
        _run(["cp", "-a", "--reflink=auto", f"{cur.path / 'rootfs'}/.", str(rootfs)], progress, "copying the image")
        code = chroot_run(rootfs, argv)
        if code != 0:
            raise _CommandFailed(code)
        return {**cur.meta, "exec": argv, "parent": cur.version}

    try:
        _make_version(state, name, fill, kernel, compression, keep, progress, on_switch, modules)
    except _CommandFailed as e:
        progress(f"command exited {e.code}: {name} stays at {parent[0].version}")
        return e.code
    return 0


def diff_versions(state: State, name: str, old: str, new: str) -> imagediff.ImageDiff:
    """Packages and files changed from version `old` to `new` of the image."""
    vs = {v.version: v for v in versions(state, name)}
    if not vs:
        raise UserError(f"no image {name!r}")
    for v in (old, new):
        if v not in vs:
            raise UserError(f"{name} has no version {v} (has: {', '.join(vs)})")
    return imagediff.diff(vs[old].path / "rootfs", vs[new].path / "rootfs")


def dracut_initramfs(
    state: State,
    name: str,
    kernel: str | None = None,
    compression: str = "gzip",
    modules: tuple[str, ...] = (),
    progress: Progress = _quiet,
) -> Path:
    """Rebuild the current version's initramfs with the image's own dracut (see dracut.py),
    with the extra kernel `modules` its nodes ask for."""
    with locked(_image_root(state, name)):
        cur = _current(state, name)
        kver = kernel or cur.meta.get("kernel")
        if not kver:
            raise UserError(f"{name} {cur.version} has no kernel")
        return build_dracut(cur.path, str(kver), progress, compression, modules)


def _current(state: State, name: str) -> ImageVersion:
    cur = next((v for v in versions(state, name) if v.current), None)
    if cur is None:
        raise UserError(f"no image {name!r}")
    return cur


class _CommandFailed(Exception):
    def __init__(self, code: int):
        super().__init__(code)
        self.code = code
