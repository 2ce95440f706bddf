"""Run nfs-ganesha inside a test's network namespace (this host has no kernel nfsd).

It gets a private mount namespace with its own tmpfs /run, so its pid file, sockets and
recovery state never touch the host; stop() (or the lab's teardown) ends it.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from provisioner.render.nfs import Export, render_ganesha

from .net import terminate

READY = "NFS SERVER INITIALIZED"


class Ganesha:
    def __init__(self, ns, workdir: Path, exports: list[Export], subnet, bind):
        self.ns = ns
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "recovery").mkdir(exist_ok=True)
        self.conf = self.workdir / "ganesha.conf"
        self.log = self.workdir / "ganesha.log"
        self.conf.write_text(render_ganesha(exports, subnet, bind, recovery_root=self.workdir / "recovery"))
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> Ganesha:
        script = (
            "mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -p /run/ganesha && "
            f"exec ganesha.nfsd -F -f {self.conf} -L {self.log} -p /run/ganesha/pid -N NIV_EVENT"
        )
        self.proc = self.ns.popen(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script])
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.log.exists() and READY in self.log.read_text(errors="replace"):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        out = self.proc.communicate()[0].decode(errors="replace") if self.proc.poll() is not None else ""
        self.stop()
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        raise RuntimeError(f"nfs-ganesha did not start:\n{out}\n{log[-3000:]}")

    def stop(self) -> None:
        if self.proc:
            terminate(self.proc)
        self.proc = None

    def __enter__(self) -> Ganesha:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
