"""PXE boots against the whole of `provisioner serve` (DHCP, TFTP and HTTP from this project,
no stand-ins), nfs-ganesha for the root, and qemu (TCG) guests whose firmware does the rest.

A tiny busybox image (labs/busyroot.py) keeps each boot under a minute; its /sbin/init prints
PVTEST lines and powers off.
"""

from __future__ import annotations

import itertools
from pathlib import Path

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

HTTP_PORT = 8080


def site_yaml(nodes: dict[str, str], profile_extra: str = "", overlays: str = "[base]") -> str:
    """An inventory for the lab's network; `nodes` maps name -> MAC, addresses from .11."""
    entries = "".join(f"  - {{name: {n}, ip: 10.99.0.{11 + i}, mac: \"{m}\"}}\n" for i, (n, m) in enumerate(nodes.items()))
    return f"""\
cluster:
  name: pxe
  domain: pxe.test
  network:
    interface: br0
    subnet: 10.99.0.0/24
    master: 10.99.0.1
    gateway: 10.99.0.1
  ports: {{http: {HTTP_PORT}}}
  slurm: {{controller: master}}
profiles:
  default:
    image: tiny
    kernel_args: [console=ttyS0, panic=-1]
    overlays: {overlays}
{profile_extra}nodes:
{entries}"""


class PxeLab:
    def __init__(self, lab, cli, work: Path, init: str):
        self.lab, self.cli, self.work = lab, cli, work
        self.state = State(cli.state)
        self._boots = itertools.count()
        self.ganesha: Ganesha | None = None
        self.serve: Serve | None = None
        import_image(self.state, "tiny", make_root(work / "root", init))

    def start(self, site_text: str) -> "PxeLab":
        self.cli.site.mkdir(parents=True, exist_ok=True)
        (self.cli.site / "cluster.yaml").write_text(site_text)
        self.cli("boot", "install")
        self.cli("overlay", "build")
        inv = load_inventory(self.cli.site / "cluster.yaml")
        self.ganesha = Ganesha(self.lab.server, self.work / "ganesha", exports_for(inv.cluster, nfs_roots(self.state)),
                               self.lab.net, self.lab.server_ip).start()
        self.serve = Serve(self.lab, self.cli, services="dhcp,tftp,http", port=HTTP_PORT, extra=("--interface", "br0"))
        return self

    def boot(self, mac: str, until: str, firmware: Firmware = "bios", timeout: float = 240) -> str:
        """PXE-boot a guest with `mac` until `until` shows on its console (or it powers off);
        "bios": SeaBIOS and the e1000's iPXE ROM, "uefi": OVMF's own PXE (see demo.qemu)."""
        n = next(self._boots)
        guest = Guest(Nic(self.lab.tap(), mac), firmware, efi_vars=self.work / f"OVMF_VARS-{n}.fd")
        return boot(guest, self.work / f"console-{mac.replace(':', '')}-{n}.log", until, timeout, ns=self.lab.server)

    def stages(self, node: str) -> list[str]:
        return [r["stage"] for r in NodeStateDB(self.state.db).timeline(node)]

    def transfers(self, node: str) -> list[tuple[str, str, str]]:
        return [(r["protocol"], r["path"], r["outcome"]) for r in NodeStateDB(self.state.db).transfers(node)]

    def close(self) -> None:
        if self.serve:
            self.serve.stop()
        if self.ganesha:
            self.ganesha.stop()
