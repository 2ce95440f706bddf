"""Which file answers a boot request: a requested path plus the client's address, resolved to
a real file in the state directory. TFTP and HTTP share this so both serve the same bytes.

Per-node virtual paths (the node comes from the client address, or from the MAC in a
PXELINUX config name) map to the node's rendered configs, and image paths to an image's
kernel/initramfs, through artifacts.layout: images/IMAGE/versions/VERSION/FILE is that version's
(what boot configs name: they pin a version), images/IMAGE/FILE the current version's. Every
other path is looked up in a static tree (state/boot) with the path-safety rules below.
Nothing is copied and nothing is rendered here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ..artifacts import layout
from ..artifacts.images import NAME_RE, VERSION_RE
from ..bootfiles import CONFIGS, IMAGE_FILES, BootConfig
from ..inventory import Inventory, Node
from ..paths import State

MAX_PATH = 255
_BY_MAC = [
    (re.compile(re.escape(p).replace(re.escape("{mac}"), r"((?:[0-9a-f]{2}-){5}[0-9a-f]{2})")), c)
    for c in CONFIGS
    if c.by_mac
    for p in c.paths
]
_BY_ADDRESS = {p: c for c in CONFIGS if not c.by_mac for p in c.paths}
_IMAGE_FILE = re.compile(r"images/([^/]+)/(?:versions/([^/]+)/)?(" + "|".join(map(re.escape, IMAGE_FILES)) + ")")
# Where the artifacts layout keeps what a config or image path names.
_CONFIG_FILE = {"ipxe": layout.ipxe_script, "pxelinux": layout.pxelinux_config, "grub": layout.grub_config}
_IMAGE_STATE_FILE = {"vmlinuz": layout.image_kernel, "initramfs.img": layout.image_initramfs}

Resolver = Callable[[str, str], "Path | bytes | None"]


class PathRefused(ValueError):
    """A request for a path that may never be served (escapes the root, NUL, too long)."""


class NodeLookup(Protocol):
    def by_ip(self, ip: str) -> Node | None: ...

    def by_mac(self, mac: str) -> Node | None: ...


def clean_path(path: str) -> str:
    """The request path as a relative path inside the root, or PathRefused.

    A leading slash means the root itself (GRUB and some PXE ROMs send one), never the host's
    filesystem; `..`, NUL bytes, backslash tricks and over-long names are refused."""
    if len(path) > MAX_PATH:
        raise PathRefused(f"path longer than {MAX_PATH} characters")
    if "\0" in path:
        raise PathRefused("NUL byte in path")
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise PathRefused("'..' in path")
    if not parts:
        raise PathRefused("empty path")
    return "/".join(parts)


def safe_join(root: Path, path: str) -> Path | None:
    """The file `path` names under `root`, or None if there is none; PathRefused if the path,
    or a symlink on the way, leads outside the root."""
    rel = clean_path(path)
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(real_root, rel))
    if target != real_root and not target.startswith(real_root + os.sep):
        raise PathRefused("path leads outside the root")
    return Path(target) if os.path.isfile(target) else None


class StaticTree:
    """A plain directory served read-only (`provisioner tftp --root DIR`)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __call__(self, client_ip: str, path: str) -> Path | None:
        return safe_join(self.root, path)

    def node_for(self, client_ip: str) -> str | None:
        return None


class BootTree:
    """The state directory's boot view for an inventory: per-node virtual files, then
    state/boot."""

    def __init__(self, state: State, inventory: Inventory | NodeLookup | None):
        self.state = state
        self.inventory = inventory
        self.static = StaticTree(layout.boot_dir(state))

    def reload(self, inventory: Inventory | NodeLookup | None) -> None:
        """Follow an edited inventory (one reference swap: safe while serving)."""
        self.inventory = inventory

    def node_for(self, client_ip: str) -> str | None:
        node = self._by_ip(client_ip)
        return node.name if node else None

    def _by_ip(self, client_ip: str) -> Node | None:
        if self.inventory is None:
            return None
        try:
            return self.inventory.by_ip(client_ip)
        except ValueError:
            return None

    def __call__(self, client_ip: str, path: str) -> Path | None:
        rel = clean_path(path)
        virtual = self.virtual(client_ip, rel)
        if virtual is not None:
            return virtual if virtual.is_file() else None
        return self.static(client_ip, rel)

    def virtual(self, client_ip: str, rel: str) -> Path | None:
        """The per-node file a cleaned path names for this client, or None if the path is
        not a per-node one (the static tree then answers)."""
        for pattern, by_mac in _BY_MAC:
            m = pattern.fullmatch(rel.lower())
            if m and self.inventory is not None:
                node = self.inventory.by_mac(m.group(1).replace("-", ":"))
                return self._config(by_mac, node.name) if node else None
        m = _IMAGE_FILE.fullmatch(rel)
        if m:
            return self._image_file(*m.groups())
        config = _BY_ADDRESS.get(rel)
        node = self._by_ip(client_ip) if config is not None else None
        return self._config(config, node.name) if config is not None and node is not None else None

    def _config(self, config: BootConfig, node: str) -> Path:
        return _CONFIG_FILE[config.loader](self.state, node)

    def _image_file(self, image: str, version: str | None, kind: str) -> Path:
        """An image version's kernel or initramfs (no version: the current one's); PathRefused
        for a bad image or version name, or a file that resolves outside the image."""
        if not NAME_RE.match(image):
            raise PathRefused(f"bad image name {image!r}")
        if version is not None and not VERSION_RE.match(version):
            raise PathRefused(f"bad image version {version!r}")
        path = _IMAGE_STATE_FILE[kind](self.state, image, version)
        real, top = os.path.realpath(path), os.path.realpath(layout.image_top(self.state, image))
        if not real.startswith(top + os.sep):
            raise PathRefused("image file leads outside its image")
        return Path(real)
