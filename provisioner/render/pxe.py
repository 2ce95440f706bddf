"""Boot configurations per node (iPXE script, PXELINUX config, GRUB config) and the kernel
command line the initramfs hook reads. Templates live in pxe/; a file of the same name in
site/pxe/ replaces the stock one.

A boot config pins one image version: kernel and initramfs from `image_base`
(images/IMAGE/versions/VERSION, a path on the boot servers) and the NFS root
/images/IMAGE/versions/VERSION/rootfs, so a node never boots one version's kernel on another's
root. The current version of each image is an input (the builder reads it); an image with no
version yet gets the unpinned `current` paths."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.defaults import DEFAULT_NAMESPACE

from ..bootfiles import CONFIGS, WAIT
from ..inventory.model import Cluster, Node
from ..paths import Site, image_pseudo, image_root
from ..resources import STOCK_PXE
from .context import (
    SharedContext,
    compile_template,
    environment,
    node_context,
    reads,
    render,
)

TEMPLATES = {c.loader: c.template for c in CONFIGS}


def image_base(image: str, version: str | None) -> str:
    """Where the boot servers (TFTP, HTTP) serve a version's vmlinuz and initramfs.img;
    without a version, the current one's."""
    return image_pseudo(image).lstrip("/") + (f"/versions/{version}" if version else "")


def kernel_cmdline(cluster: Cluster, node: Node, version: str | None = None, debug: bool | None = None) -> str:
    """The contract between boot configs and the initramfs hook, plus the node's kernel_args.
    `version` is the image version the root pins (None: the current one); `debug` defaults to
    the node's `vars.debug`."""
    if node.image is None:
        raise ValueError(f"node {node.name} has no image")
    master, port = cluster.network.master, cluster.ports.http
    base = f"http://{master}:{port}"
    args = [
        f"provisioner.node={node.name}",
        f"provisioner.root=nfs:{cluster.nfs.server}:{image_root(node.image, version)}",
        f"provisioner.nfsvers={cluster.nfs.version}",
        f"provisioner.overlay={base}/overlays/{node.name}.cpio.gz",
        f"provisioner.report={base}/api/v1",
    ]
    if debug if debug is not None else bool(node.vars.get("debug")):
        args.append("provisioner.debug=1")
    return " ".join(args + list(node.kernel_args))


@dataclass(frozen=True)
class BootConfigs:
    ipxe: str
    pxelinux: str
    grub: str

    def items(self) -> list[tuple[str, str]]:
        return [("ipxe", self.ipxe), ("pxelinux", self.pxelinux), ("grub", self.grub)]


def template_path(name: str, site: Site | None = None, stock: Path = STOCK_PXE) -> Path:
    """The boot template `name`: the site's own (site/pxe/NAME) if it has one, else the stock one."""
    own = site.root / "pxe" / name if site else None
    return own if own is not None and own.is_file() else stock / name


def wait_scripts(cluster: Cluster, site: Site | None = None, stock: Path = STOCK_PXE) -> dict[str, str]:
    """The copies of bootfiles.WAIT by boot-tree path; each template sees `cluster` and the
    copy's `sleeps`."""
    path = template_path(WAIT.template, site, stock)
    env = environment()
    template = compile_template(env, path.read_text(), str(path))
    return {
        rel: render(template, {**DEFAULT_NAMESPACE, "cluster": cluster, "sleeps": WAIT.sleeps(n)}, None)
        for n, rel in enumerate(WAIT.paths())
    }


class BootTemplates:
    """The three boot templates, compiled once per build."""

    def __init__(self, site: Site | None = None, stock: Path = STOCK_PXE):
        env = environment()
        self.templates: dict[str, jinja2.Template] = {}
        self.reads_nodes = False
        digest = hashlib.sha256()
        for kind, name in TEMPLATES.items():
            path = template_path(name, site, stock)
            source = path.read_text()
            digest.update(f"{kind}\0{len(source)}\0{source}".encode())
            self.templates[kind] = compile_template(env, source, str(path))
            self.reads_nodes = self.reads_nodes or "nodes" in reads(env, source, str(path))
        self.digest = digest.hexdigest()

    def render(
        self, shared: SharedContext, node: Node, facts: Mapping[str, Any] | None = None, version: str | None = None
    ) -> BootConfigs | None:
        """None for a node without an image: it has nothing to boot. `version`: the image's
        current version, which the configs pin (None: unpinned, the image has none yet).
        Templates see `cmdline`, `image_version` and `image_base` besides the node context."""
        if node.image is None:
            return None
        ctx = node_context(shared, node, facts)
        ctx["cmdline"] = kernel_cmdline(shared.cluster, node, version)
        ctx["image_version"] = version
        ctx["image_base"] = image_base(node.image, version)
        return BootConfigs(**{k: render(t, ctx, node.name) for k, t in self.templates.items()})
