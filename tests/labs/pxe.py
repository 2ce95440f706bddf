"""PXE boots against the whole of `provisioner serve` (DHCP, TFTP and HTTP from this project,
no stand-ins), nfs-ganesha for the root, and qemu (TCG) guests whose firmware does the rest.

A tiny busybox image (labs/busyroot.py) keeps each boot under a minute; its /sbin/init prints
PVTEST lines and powers off.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provisioner.artifacts.images import import_image, nfs_roots
from provisioner.demo.qemu import Firmware, Guest, Nic
from provisioner.inventory import load_inventory
from provisioner.nodestate import NodeStateDB
from provisioner.paths import State
from provisioner.render.nfs import exports_for

from .busyroot import make_root
from .ganesha import Ganesha
from .guest import boot
from .serve import Serve
from .site import node, site_yaml, write_site

HTTP_PORT = 8080


def pxe_site(nodes: dict[str, str], **profile: Any) -> str:
    """A site on the lab's network: `nodes` maps name -> MAC, addresses from .11, all booting
    the tiny image with a serial console; `profile` adds to the default profile."""
    entries = [node(n, f"10.99.0.{11 + i}", mac) for i, (n, mac) in enumerate(nodes.items())]
    default = {"image": "tiny", "kernel_args": ["console=ttyS0", "panic=-1"], "overlays": ["base"]}
    return site_yaml(
        entries,
        {"default": default | profile},
        name="pxe",
        domain="pxe.test",
        network={"gateway": "10.99.0.1"},
        ports={"http": HTTP_PORT},
    )


class PxeLab:
    def __init__(self, lab, cli, work: Path, init: str | None):
        """`init`: the tiny image's init script, imported here; None when the test makes the
        image itself (the wheel test, through the installed CLI)."""
        self.lab, self.cli, self.work = lab, cli, work
        self.state = State(cli.state)
        self._boots = itertools.count()
        self.ganesha: Ganesha | None = None
        self.serve: Serve | None = None
        if init is not None:
            import_image(self.state, "tiny", make_root(work / "root", init))

    def start(self, site_text: str) -> PxeLab:
        cluster_yaml = write_site(self.cli.site, site_text)
        self.cli("boot", "install")
        self.cli("overlay", "build")
        inv = load_inventory(cluster_yaml)
        self.ganesha = Ganesha(
            self.lab.server,
            self.work / "ganesha",
            exports_for(inv.cluster, nfs_roots(self.state)),
            self.lab.net,
            self.lab.server_ip,
        ).start()
        self.serve = Serve(self.lab, self.cli, services="dhcp,tftp,http", port=HTTP_PORT, extra=("--interface", "br0"))
        return self

    def boot(
        self,
        mac: str,
        until: str,
        firmware: Firmware = "bios",
        timeout: float = 240,
        watch: Callable[[str], None] | None = None,
    ) -> str:
        """PXE-boot a guest with `mac` until `until` shows on its console (or it powers off);
        "bios": SeaBIOS and the e1000's iPXE ROM, "uefi": OVMF's own PXE (see demo.qemu);
        `watch` as for labs.guest.boot."""
        n = next(self._boots)
        guest = Guest(Nic(self.lab.tap(), mac), firmware, efi_vars=self.work / f"OVMF_VARS-{n}.fd")
        console = self.work / f"console-{mac.replace(':', '')}-{n}.log"
        return boot(guest, console, until, timeout, ns=self.lab.server, watch=watch)

    def stages(self, node: str) -> list[str]:
        return [r["stage"] for r in NodeStateDB(self.state.db).timeline(node)]

    def transfers(self, node: str) -> list[tuple[str, str, str]]:
        return [(r["protocol"], r["path"], r["outcome"]) for r in NodeStateDB(self.state.db).transfers(node)]

    def close(self) -> None:
        if self.serve:
            self.serve.stop()
        if self.ganesha:
            self.ganesha.stop()
