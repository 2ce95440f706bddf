"""Boot configurations per node (iPXE script, PXELINUX config, GRUB config) and the kernel
command line the initramfs hook reads. Templates live in pxe/; a file of the same name in
site/pxe/ replaces the stock one."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import jinja2

from ..inventory.model import Cluster, Node
from ..paths import Site
from .context import STOCK_PXE, SharedContext, compile_template, environment, node_context, reads, render

TEMPLATES = {"ipxe": "boot.ipxe.j2", "pxelinux": "pxelinux.cfg.j2", "grub": "grub.cfg.j2"}


def kernel_cmdline(cluster: Cluster, node: Node, debug: bool | None = None) -> str:
    """The contract between boot configs and the initramfs hook, plus the node's kernel_args.
    `debug` defaults to the node's `vars.debug`."""
    if node.image is None:
        raise ValueError(f"node {node.name} has no image")
    master, port = cluster.network.master, cluster.ports.http
    base = f"http://{master}:{port}"
    args = [
        f"provisioner.node={node.name}",
        f"provisioner.root=nfs:{cluster.nfs.server}:/images/{node.image}",
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


class BootTemplates:
    """The three boot templates, compiled once per build."""

    def __init__(self, site: Site | None = None, stock: Path = STOCK_PXE):
        env = environment()
        self.templates: dict[str, jinja2.Template] = {}
        self.reads_nodes = False
        digest = hashlib.sha256()
        for kind, name in TEMPLATES.items():
            path = site.root / "pxe" / name if site and (site.root / "pxe" / name).is_file() else stock / name
            source = path.read_text()
            digest.update(f"{kind}\0{len(source)}\0{source}".encode())
            self.templates[kind] = compile_template(env, source, str(path))
            self.reads_nodes = self.reads_nodes or "nodes" in reads(env, source, str(path))
        self.digest = digest.hexdigest()

    def render(self, shared: SharedContext, node: Node, facts: Mapping[str, Any] | None = None) -> BootConfigs | None:
        """None for a node without an image: it has nothing to boot."""
        if node.image is None:
            return None
        ctx = node_context(shared, node, facts)
        ctx["cmdline"] = kernel_cmdline(shared.cluster, node)
        return BootConfigs(**{k: render(t, ctx, node.name) for k, t in self.templates.items()})
