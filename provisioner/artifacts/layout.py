"""Where each artifact lives in the state directory. Builders write there and servers read
there through these functions only, so the two sides cannot drift apart.

state/
  boot/                      bootloaders (iPXE, PXELINUX, GRUB): the static TFTP tree
  nodes/<node>/              per-node boot configs: boot.ipxe, pxelinux.cfg, grub.cfg
  overlays/<node>.cpio.gz    the node's current overlay archive (atomically replaced)
  images/<image>/            NFS-exported whole (read-only) at /images/<image>: it never switches
  images/<image>/current     -> versions/<version>/ (atomically switched symlink)
  images/<image>/versions/<version>/rootfs/          the root filesystem
  images/<image>/versions/<version>/vmlinuz          kernel taken from the image
  images/<image>/versions/<version>/initramfs.img    native initramfs for that kernel
  images/<image>/versions/<version>/meta.json        how it was made, which kernel
  secrets/                   0700: munge.key, ssh host keys per node
  nodes.sqlite               node-state database

A node's boot config pins one version: its kernel and initramfs are served as
images/<image>/versions/<version>/{vmlinuz,initramfs.img} (images/<image>/{vmlinuz,initramfs.img}
still mean `current`) and it mounts /images/<image>/versions/<version>/rootfs over NFS. So a
rebuild needs the boot configs re-rendered (the image commands do it), never the NFS exports.
"""

from __future__ import annotations

from pathlib import Path

from ..paths import State


def boot_dir(state: State) -> Path:
    return state.boot


def node_dir(state: State, node: str) -> Path:
    return state.root / "nodes" / node


def ipxe_script(state: State, node: str) -> Path:
    return node_dir(state, node) / "boot.ipxe"


def pxelinux_config(state: State, node: str) -> Path:
    return node_dir(state, node) / "pxelinux.cfg"


def grub_config(state: State, node: str) -> Path:
    return node_dir(state, node) / "grub.cfg"


def overlay_archive(state: State, node: str) -> Path:
    return state.overlays / f"{node}.cpio.gz"


def overlay_manifest(state: State) -> Path:
    """Input digest of each node's last build: what makes builds incremental."""
    return state.overlays / "manifest.json"


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
