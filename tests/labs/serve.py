"""A site, a state tree and a running `provisioner serve` for tests against real clients.

The site matches the `lab` fixture's subnet (10.99.0.0/24, server 10.99.0.1); the state holds
small fake artifacts (an iPXE script per node, an image's kernel and initramfs, overlay
archives) so the HTTP server has real files to send.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import yaml

from provisioner.artifacts import layout
from provisioner.paths import State

from .site import node, site_yaml
from .site import write_site as write_yaml

SERVER_IP = "10.99.0.1"
NODES = {  # name: (ip, mac)
    "node01": ("10.99.0.11", "52:54:00:aa:00:01"),
    "node02": ("10.99.0.12", "52:54:00:aa:00:02"),
}
IMAGE = "img1"
CREDENTIALS = {name: os.urandom(32).hex() for name in NODES}  # each node's report credential


def auth(node: str) -> tuple[str, str]:
    """curl arguments presenting the node's report credential, as its overlay lets it."""
    return ("-H", f"Authorization: Bearer {CREDENTIALS[node]}")


def cluster_yaml(nodes: dict[str, tuple[str, str]] = NODES, secure: bool = True) -> str:
    """The serve lab's site: `nodes` (name: (ip, mac)) booting IMAGE."""
    return site_yaml(
        [node(n, ip, mac) for n, (ip, mac) in nodes.items()],
        {"default": {"image": IMAGE}},
        domain="lab.cluster",
        secure=secure,
    )


def write_site(site: Path, nodes: dict[str, tuple[str, str]] = NODES, secure: bool = True) -> Path:
    return write_yaml(site, cluster_yaml(nodes, secure))


def plant(path: Path, data: bytes) -> None:
    """A node's artifact written where layout puts it in a state no build has published."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def set_limits(site: Path, **limits: int) -> None:
    """cluster.limits in the site's cluster.yaml (written by write_site): the caps a test
    lowers to reach them quickly, or lifts when one namespace stands in for many nodes."""
    path = site / "cluster.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["cluster"]["limits"] = limits
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def write_state(state: Path, big: int = 3 * 1024 * 1024) -> dict[str, bytes]:
    """Fake artifacts in the layout the servers read; returns their contents by URL path."""
    files: dict[str, bytes] = {}
    version = state / "images" / IMAGE / "versions" / "v1"
    version.mkdir(parents=True, exist_ok=True)
    kernel, initramfs = os.urandom(big // 3), os.urandom(big)
    (version / "vmlinuz").write_bytes(kernel)
    (version / "initramfs.img").write_bytes(initramfs)
    (state / "images" / IMAGE / "current").symlink_to("versions/v1")
    files[f"/images/{IMAGE}/vmlinuz"] = kernel
    files[f"/images/{IMAGE}/initramfs.img"] = initramfs
    (state / "secrets" / "credentials").mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, (_ip, mac) in NODES.items():
        (state / "secrets" / "credentials" / name).write_text(CREDENTIALS[name])
        script = f"#!ipxe\nkernel http://{SERVER_IP}/images/{IMAGE}/vmlinuz provisioner.node={name}\nboot\n".encode()
        plant(layout.ipxe_script(State(state), name), script)
        files[f"/boot/{mac}.ipxe"] = script
        secret = f"secret of {name}".encode() + os.urandom(64)
        plant(layout.overlay_archive(State(state), name), secret)
        files[f"/overlays/{name}.cpio.gz"] = secret
    return files


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Serve:
    """`provisioner serve` in the lab's server namespace; stopped with SIGTERM on exit."""

    def __init__(self, lab, cli, services: str = "http", port: int = 8080, extra: tuple[str, ...] = ()):
        self.lab, self.cli, self.port = lab, cli, port
        self.url = f"http://{SERVER_IP}:{port}"
        self.lines: list[str] = []
        self.terminated = False
        env = {**os.environ, "PROVISIONER_SITE": str(cli.site), "PROVISIONER_STATE": str(cli.state)}
        self.proc = lab.server.popen(
            [cli.exe, "serve", "--services", services, "--listen", SERVER_IP, "--http-port", str(port), *extra],
            env=env,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_log("msg=ready")

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_log(self, needle: str, timeout: float = 30, after: int = 0) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for line in self.lines[after:]:
                if needle in line:
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no log line with {needle!r}; serve said:\n" + "\n".join(self.lines))

    def pid_of(self, service: str, after: int = 0) -> int:
        """The process serving `service` (serve logs each one it starts), the latest one
        started after line `after`."""
        line = self.wait_log(f'msg="service started" service={service} ', after=after)
        for later in self.lines[after:]:
            if f'msg="service started" service={service} ' in later:
                line = later
        found = re.search(r" pid=(\d+)", line)
        assert found, line
        return int(found.group(1))

    def signal(self, sig: int) -> None:
        self.terminated = self.terminated or sig == signal.SIGTERM
        os.kill(self.proc.pid, sig)

    def stop(self) -> int:
        """SIGTERM once (a second one while Python finalizes would kill it) and the exit code."""
        if self.proc.poll() is None and not self.terminated:
            self.signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._reader.join(timeout=5)
        return rc

    def __enter__(self) -> Serve:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def curl(ns, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """curl in a client namespace; -sS and no proxy from the environment."""
    return ns.run(["curl", "-sS", "--noproxy", "*", *args], check=check)


def http_code(ns, *args: str) -> str:
    """The HTTP status curl got (the body thrown away), as text."""
    return curl(ns, "-o", "/dev/null", "-w", "%{http_code}", *args).stdout
