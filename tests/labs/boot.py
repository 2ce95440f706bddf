"""The master side of a diskless boot, for qemu tests: DHCP (dnsmasq), the NFS root
(nfs-ganesha) and a small HTTP endpoint for overlays and stage reports, all inside the lab's
server namespace; plus a qemu (TCG) guest on a lab tap booting -kernel/-initrd directly.

The HTTP side is a stdlib stand-in for `provisioner serve` that records each request's
source port, so tests can check that the initramfs uses a privileged one.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from provisioner.artifacts import cpio
from provisioner.demo.qemu import DirectBoot, Guest, Nic
from provisioner.paths import image_pseudo, image_root
from provisioner.render.nfs import Export

from .ganesha import Ganesha
from .guest import boot

HTTP_PORT = 8000

_HTTP = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
root, log = sys.argv[1], sys.argv[2]
class H(BaseHTTPRequestHandler):
    def _log(self, body=None):
        with open(log, "a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path, "port": self.client_address[1],
                                "body": body}) + "\n")
    def do_GET(self):
        self._log()
        try:
            data = open(root + self.path, "rb").read()
        except OSError:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        self._log(json.loads(self.rfile.read(n) or b"null"))
        self.send_response(204)
        self.end_headers()
    def log_message(self, *a):
        pass
ThreadingHTTPServer((sys.argv[3], int(sys.argv[4])), H).serve_forever()
"""


def overlay_archive(files: dict[str, bytes]) -> bytes:
    """A node overlay (what the overlay builder serves), made with the shared cpio writer."""
    entries, dirs = [], set()
    for path in sorted(files):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                entries.append(cpio.Entry.dir(d))
        entries.append(cpio.Entry.file(path, files[path]))
    buf = io.BytesIO()
    cpio.write(buf, entries)
    return gzip.compress(buf.getvalue(), mtime=0)


class BootLab:
    def __init__(self, lab, workdir: Path):
        self.lab = lab
        self.work = Path(workdir)
        self.web = self.work / "www"
        (self.web / "overlays").mkdir(parents=True, exist_ok=True)
        self.requests = self.work / "requests.jsonl"
        self.procs: list[subprocess.Popen] = []
        self.ganesha: Ganesha | None = None

    def start(
        self,
        images: dict[str, Path],
        hosts: dict[str, str],
        serve: tuple[str, Path, Path] | None = None,
        exports: list[Export] | None = None,
    ) -> BootLab:
        """Serve `images` (name -> image dir, the one holding versions/), or `exports`, over NFS and DHCP
        leases `hosts` (mac -> ip); HTTP from `provisioner serve` when `serve` = (executable, site, state)
        is given, else the stub."""
        srv = self.lab.server_ip
        exports = exports or [
            Export(Path(os.path.realpath(p)), image_pseudo(n), False, False, image=True) for n, p in images.items()
        ]
        self.ganesha = Ganesha(self.lab.server, self.work / "ganesha", exports, self.lab.net, srv).start()
        leases = [f"--dhcp-host={mac},{ip}" for mac, ip in hosts.items()]
        self.procs.append(
            self.lab.server.popen(
                [
                    "dnsmasq",
                    "--no-daemon",
                    "--conf-file=/dev/null",
                    "--port=0",
                    "--interface=br0",
                    "--bind-interfaces",
                    "--user=root",
                    f"--dhcp-range={self.lab.net[100]},{self.lab.net[200]},1h",
                    f"--dhcp-leasefile={self.work}/leases",
                    f"--pid-file={self.work}/dnsmasq.pid",
                    *leases,
                ]
            )
        )
        if serve:
            return self.start_serve(*serve)
        return self.start_http()

    def _wait_listening(self, what: str) -> None:
        deadline = time.time() + 20
        while self.lab.server.run(["ss", "-ltnH", f"sport = :{HTTP_PORT}"]).stdout.strip() == "":
            assert self.procs[-1].poll() is None, f"{what} exited: {self.procs[-1].communicate()[0].decode()}"
            assert time.time() < deadline, f"{what} did not start"
            time.sleep(0.1)

    def start_serve(self, exe: str, site: Path, state: Path) -> BootLab:
        """The real HTTP service: `provisioner serve --services http` (secure mode: overlays and
        reports only from the node's own address and a privileged source port)."""
        env = {**os.environ, "PROVISIONER_SITE": str(site), "PROVISIONER_STATE": str(state)}
        self.procs.append(
            self.lab.server.popen(
                [exe, "serve", "--services", "http", "--listen", self.lab.server_ip, "--http-port", str(HTTP_PORT)],
                env=env,
            )
        )
        self._wait_listening("provisioner serve")
        return self

    def start_http(self) -> BootLab:
        script = self.work / "overlay_http_stub.py"
        script.write_text(_HTTP)
        self.procs.append(
            self.lab.server.popen(
                [sys.executable, str(script), str(self.web), str(self.requests), self.lab.server_ip, str(HTTP_PORT)]
            )
        )
        self._wait_listening("the stub HTTP server")
        return self

    def put_overlay(self, node: str, files: dict[str, bytes]) -> None:
        (self.web / "overlays" / f"{node}.cpio.gz").write_bytes(overlay_archive(files))

    def cmdline(self, node: str, image: str, version: str | None = None, **extra: str) -> str:
        """Without a version, the root is the image's current one (through its `current` link)."""
        base = f"http://{self.lab.server_ip}:{HTTP_PORT}"
        args = {
            "node": node,
            "root": f"nfs:{self.lab.server_ip}:{image_root(image, version)}",
            "nfsvers": "4.2",
            "overlay": f"{base}/overlays/{node}.cpio.gz",
            "report": f"{base}/api/v1",
            "retry": "0",
            **extra,
        }
        return "console=ttyS0 panic=-1 " + " ".join(f"provisioner.{k}={v}" for k, v in args.items())

    def boot(
        self,
        kernel: Path,
        initrd: Path,
        append: str,
        mac: str,
        until: str,
        timeout: float = 150,
        send: Sequence[tuple[str, str]] = (),
    ) -> str:
        """Boot a guest until `until` appears on its serial console or it powers off; `send`
        types on the console first (see labs.guest.boot)."""
        guest = Guest(Nic(self.lab.tap(), mac), direct=DirectBoot(kernel, initrd, append))
        return boot(
            guest, self.work / f"console-{mac.replace(':', '')}.log", until, timeout, ns=self.lab.server, send=send
        )

    def reports(self) -> list[dict]:
        if not self.requests.exists():
            return []
        return [json.loads(line) for line in self.requests.read_text().splitlines()]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if self.ganesha:
            self.ganesha.stop()

    def __enter__(self) -> BootLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
