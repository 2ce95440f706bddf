"""Where things live: the site (what the admin edits) and the state (what we build and observe)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SITE = "/etc/provisioner"
DEFAULT_STATE = "/var/lib/provisioner"


@dataclass(frozen=True)
class Site:
    """The admin's directory: cluster.yaml, site overlays and per-node override files."""

    root: Path

    @property
    def cluster_yaml(self) -> Path:
        return self.root / "cluster.yaml"

    @property
    def overlays(self) -> Path:
        return self.root / "overlays"

    def node_overrides(self, node: str) -> Path:
        return self.root / "nodes" / node

    def image_recipe(self, image: str) -> Path:
        """How image `image` is built (`image build` follows it when it exists)."""
        return self.root / "images" / f"{image}.yaml"


@dataclass(frozen=True)
class State:
    """Built artifacts, images, secrets and the node-state database."""

    root: Path

    @property
    def overlays(self) -> Path:
        return self.root / "overlays"

    @property
    def boot(self) -> Path:
        """The TFTP/HTTP boot tree: bootloaders and rendered boot configs."""
        return self.root / "boot"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def consoles(self) -> Path:
        """Serial console logs of nodes with a BMC (0700: consoles show what nodes print)."""
        return self.root / "console"

    @property
    def db(self) -> Path:
        return self.root / "nodes.sqlite"


def site_from(value: str | os.PathLike[str] | None) -> Site:
    return Site(Path(value or os.environ.get("PROVISIONER_SITE") or DEFAULT_SITE))


def state_from(value: str | os.PathLike[str] | None) -> State:
    return State(Path(value or os.environ.get("PROVISIONER_STATE") or DEFAULT_STATE))


def image_pseudo(image: str) -> str:
    """Where an image's NFS export appears to clients: the contract between boot configs,
    exports and DHCP, kept here since all three read it."""
    return f"/images/{image}"


def image_root(image: str, version: str | None) -> str:
    """The root a node mounts: one version's rootfs inside the image's export, or (no version
    yet) the current one's, through the `current` symlink the client follows."""
    return f"{image_pseudo(image)}/{f'versions/{version}' if version else 'current'}/rootfs"
