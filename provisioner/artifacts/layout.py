"""Where each artifact lives in the state directory. Builders write there and servers read
there through these functions only, so the two sides cannot drift apart.

state/
  boot/                      bootloaders (iPXE, PXELINUX, GRUB): the static TFTP tree
    wait/<n>.ipxe            what a client no inventory names gets (bootfiles.WAIT; no secret)
  overlays/                  0700: what `overlay build` makes (the archives hold secrets)
    current -> gens/<n>      the published generation: one rename(2) switches every node
    previous -> gens/<n-1>   kept one more build for a reader that resolved it just before
    gens/<n>/manifest.json   input digest of each node in that generation (incremental builds)
    gens/<n>/<shard>         -> ../../shards/<shard>.<m>: the generation's view of one shard
    shards/<shard>.<m>/      <node>.cpio.gz (0600), its runtime part <node>.rt.tar.gz (0600: what
                             the node agent refreshes on a running node) and its boot configs
                             <node>.{ipxe,pxelinux,grub};
                             never changed once published: a new generation gets a new folder
                             for each shard it changes and hard-links the unchanged nodes in it
  images/<image>/            NFS-exported whole (read-only) at /images/<image>: it never switches
  images/<image>/current     -> versions/<version>/ (atomically switched symlink)
  images/<image>/versions/<version>/rootfs/          the root filesystem
  images/<image>/versions/<version>/vmlinuz          kernel taken from the image
  images/<image>/versions/<version>/initramfs.img    native initramfs for that kernel
  images/<image>/versions/<version>/meta.json        how it was made, which kernel
  push/                      0700: `overlay push` requests (a file of node names each) that the
                             HTTP server turns into refreshes of those nodes' agents
  secrets/                   0700: munge.key, host CA, ssh host keys per node, revocation list
  nodes.sqlite               node-state database (0600)
  slurm/hardware.json        the hardware slurm.conf holds per node, as accepted (0600)

Nodes are spread over OVERLAY_SHARDS shards by a hash of their name, so a build that changes
one node of 10,000 links ~80 files and one generation of symlinks, not 10,000 files. A node's
files are resolved through `current` when asked for, and the path returned names the shard
folder itself: a reader that opens it gets that generation's bytes even if a build switches
meanwhile (no walk through `current` that could land half in one generation, half in the next).

A node's boot config pins one version: its kernel and initramfs are served as
images/<image>/versions/<version>/{vmlinuz,initramfs.img} (images/<image>/{vmlinuz,initramfs.img}
still mean `current`) and it mounts /images/<image>/versions/<version>/rootfs over NFS. So a
rebuild needs the boot configs re-rendered (the image commands do it), never the NFS exports.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

from ..bootfiles import WAIT
from ..paths import State


def boot_dir(state: State) -> Path:
    return state.boot


def wait_script(state: State, n: int) -> Path:
    """Copy `n` of the script a client no inventory names gets (bootfiles.WAIT)."""
    return boot_dir(state) / WAIT.path.format(n=n)


OVERLAY_SHARDS = 128
ARCHIVE = ".cpio.gz"
RUNTIME_ARCHIVE = ".rt.tar.gz"
RUNTIME_META = ".provisioner"  # in a runtime archive: the agent's instructions, not node files
BOOT_CONFIGS = ("ipxe", "pxelinux", "grub")  # a node's boot configs: <node>.<kind>
MANIFEST = "manifest.json"


def shard_of(node: str) -> str:
    return f"{zlib.crc32(node.encode()) % OVERLAY_SHARDS:02x}"


def overlay_current(state: State) -> Path:
    return state.overlays / "current"


def overlay_previous(state: State) -> Path:
    return state.overlays / "previous"


def overlay_gens(state: State) -> Path:
    return state.overlays / "gens"


def overlay_shards(state: State) -> Path:
    return state.overlays / "shards"


def published(state: State) -> Path | None:
    """The current generation's folder (gens/<n>), or None before the first build."""
    try:
        return state.overlays / os.readlink(overlay_current(state))
    except OSError:
        return None


def _node_file(state: State, node: str, name: str) -> Path:
    gen = published(state)
    try:
        shard = os.readlink(gen / shard_of(node)) if gen else None
    except OSError:
        shard = None
    if shard is None:  # never built: a path that does not exist
        return overlay_current(state) / shard_of(node) / name
    return overlay_shards(state) / os.path.basename(shard) / name


def overlay_archive(state: State, node: str) -> Path:
    return _node_file(state, node, node + ARCHIVE)


def runtime_archive(state: State, node: str) -> Path:
    return _node_file(state, node, node + RUNTIME_ARCHIVE)


def push_requests(state: State) -> Path:
    return state.root / "push"


def generation(state: State) -> int | None:
    """The published generation's number, or None before the first build."""
    gen = published(state)
    return int(gen.name) if gen is not None and gen.name.isdigit() else None


def boot_config(state: State, node: str, kind: str) -> Path:
    return _node_file(state, node, f"{node}.{kind}")


def ipxe_script(state: State, node: str) -> Path:
    return boot_config(state, node, "ipxe")


def pxelinux_config(state: State, node: str) -> Path:
    return boot_config(state, node, "pxelinux")


def grub_config(state: State, node: str) -> Path:
    return boot_config(state, node, "grub")


def overlay_manifest(state: State) -> Path | None:
    """Input digest of each node of the current generation: what makes builds incremental."""
    gen = published(state)
    return gen / MANIFEST if gen else None


def image_top(state: State, image: str) -> Path:
    """The image's own directory: what NFS exports (it holds every version)."""
    return state.images / image


def image_dir(state: State, image: str, version: str | None = None) -> Path:
    """One version of the image, or (no version) the current one: a symlink switched
    atomically on rebuild."""
    return image_versions(state, image) / version if version else image_top(state, image) / "current"


def image_rootfs(state: State, image: str, version: str | None = None) -> Path:
    return image_dir(state, image, version) / "rootfs"


def image_kernel(state: State, image: str, version: str | None = None) -> Path:
    return image_dir(state, image, version) / "vmlinuz"


def image_initramfs(state: State, image: str, version: str | None = None) -> Path:
    return image_dir(state, image, version) / "initramfs.img"


IMAGE_META = "meta.json"  # in each version: source, kernel, packages, created


def image_versions(state: State, image: str) -> Path:
    return image_top(state, image) / "versions"


def secrets_dir(state: State) -> Path:
    return state.secrets


def api_token(state: State) -> Path:
    """The bearer token that opens the HTTP admin endpoints to callers off localhost."""
    return secrets_dir(state) / "api.token"


def accepted_hardware(state: State) -> Path:
    """Each node's accepted hardware (see render/slurm.py: hardware drift)."""
    return state.root / "slurm" / "hardware.json"
