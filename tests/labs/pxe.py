"""PXE boots against the whole of `provisioner serve` (DHCP, TFTP and HTTP from this project,
no stand-ins), nfs-ganesha for the root, and qemu (TCG) guests whose firmware does the rest.

A tiny busybox image (labs/busyroot.py) keeps each boot under a minute; its /sbin/init prints
PVTEST lines and powers off.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

from .busyroot import make_root
from .ganesha import Ganesha
from .serve import Serve

from provisioner.artifacts.images import import_image, nfs_roots
from provisioner.inventory import load_inventory
from provisioner.nodestate import NodeStateDB
from provisioner.paths import State
from provisioner.render.nfs import exports_for

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
        self.procs: list[subprocess.Popen] = []
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

    def boot(self, mac: str, until: str, firmware: str = "bios", timeout: float = 240) -> str:
        """PXE-boot a guest with `mac` until `until` shows on its console (or it powers off).
        firmware "bios": SeaBIOS + the stock iPXE ROM on e1000; "uefi": OVMF with its own
        virtio-net driver and PXE (no option ROM), so the firmware itself asks for a boot file."""
        tap = self.lab.tap()
        log = self.work / f"console-{mac.replace(':', '')}-{len(self.procs)}.log"
        if firmware == "uefi":
            vars_file = self.work / f"OVMF_VARS-{len(self.procs)}.fd"
            vars_file.write_bytes(Path("/usr/share/OVMF/OVMF_VARS_4M.fd").read_bytes())
            fw = ["-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
                  "-drive", f"if=pflash,format=raw,file={vars_file}",
                  "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile="]
        else:
            fw = ["-device", f"e1000,netdev=n0,mac={mac}"]
        with open(log, "wb") as out:
            proc = self.lab.server.popen(
                ["qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-nographic", "-monitor", "none",
                 "-no-reboot", "-boot", "n", "-uuid", str(uuid.uuid4()),
                 "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no", *fw], stdout=out)
        self.procs.append(proc)
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and until.encode() in log.read_bytes():
                break
            time.sleep(0.5)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        return log.read_text(errors="replace") if log.exists() else ""

    def stages(self, node: str) -> list[str]:
        return [r["stage"] for r in NodeStateDB(self.state.db).timeline(node)]

    def transfers(self, node: str) -> list[tuple[str, str, str]]:
        return [(r["protocol"], r["path"], r["outcome"]) for r in NodeStateDB(self.state.db).transfers(node)]

    def close(self) -> None:
        if self.serve:
            self.serve.stop()
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if self.ganesha:
            self.ganesha.stop()
