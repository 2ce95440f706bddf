"""Test network labs: namespaces, a bridge, veth and tap links, made and torn down per test.

Topology: a "server" namespace holds bridge `br0` with the subnet's first address; each
`host()` is a further namespace whose veth is plugged into that bridge; `tap()` adds a tap
device on the bridge for a qemu guest (qemu must then run inside the server namespace).
Names carry the pid and a counter so parallel runs never collide. Teardown kills every
process still inside the namespaces, then deletes them.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Sequence
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path

from provisioner.demo.netns import end_processes_in, netns_pids

_counter = itertools.count()


def uid(prefix: str) -> str:
    """A short unique name (interface names must stay under 16 characters)."""
    return f"{prefix}{os.getpid() % 100000:x}{next(_counter):x}"


def terminate(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM a daemon the lab started, and SIGKILL it if it is still there after `grace` s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def sh(cmd: Sequence[str] | str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    if isinstance(cmd, str):
        cmd = ["sh", "-c", cmd]
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


class Netns:
    def __init__(self, name: str):
        self.name = name
        sh(["ip", "netns", "add", name])
        self.run(["ip", "link", "set", "lo", "up"])

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def prefix(self, cmd: Sequence[str]) -> list[str]:
        """nsenter rather than `ip netns exec`, which remounts /sys (slurmd and others mind)."""
        return ["nsenter", f"--net={self.path}", "--", *cmd]

    def run(self, cmd: Sequence[str] | str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        return sh(self.prefix(cmd), check=check, **kw)

    def popen(self, cmd: Sequence[str] | str, log: Path | None = None, **kw) -> subprocess.Popen:
        """Start `cmd` in the namespace; its output goes to a pipe, or with `log` to that file
        (the child holds its own descriptor, so ours is closed at once)."""
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        kw.setdefault("stderr", subprocess.STDOUT)
        if log is None:
            kw.setdefault("stdout", subprocess.PIPE)
            return subprocess.Popen(self.prefix(cmd), start_new_session=True, **kw)
        with open(log, "w") as out:
            return subprocess.Popen(self.prefix(cmd), start_new_session=True, stdout=out, **kw)

    def pids(self) -> list[int]:
        return netns_pids(self.name)

    def destroy(self) -> None:
        end_processes_in(self.name, grace=3.0)
        sh(["ip", "netns", "del", self.name], check=False)


class Lab:
    """A server namespace with a bridge, and client namespaces plugged into it."""

    def __init__(self, subnet: str = "10.99.0.0/24"):
        self.net = IPv4Network(subnet)
        self.tag = uid("pv")
        self.namespaces: list[Netns] = []
        self.server = self._ns("s")
        self.bridge = "br0"
        self.server_ip = str(self.net.network_address + 1)
        self.server.run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self.server.run(["ip", "link", "set", self.bridge, "type", "bridge", "forward_delay", "0", "stp_state", "0"])
        self.server.run(["ip", "addr", "add", f"{self.server_ip}/{self.net.prefixlen}", "dev", self.bridge])
        self.server.run(["ip", "link", "set", self.bridge, "up"])
        self._links = itertools.count(1)

    def _ns(self, role: str) -> Netns:
        ns = Netns(f"{self.tag}{role}")
        self.namespaces.append(ns)
        return ns

    def host(self, ip: str | None = None, mac: str | None = None) -> Netns:
        """A client namespace with `eth0` on the bridge (an address only if given)."""
        n = next(self._links)
        ns = self._ns(f"h{n}")
        outside = f"{self.tag}v{n}"
        sh(["ip", "link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", ns.name])
        sh(["ip", "link", "set", outside, "netns", self.server.name])
        self.server.run(["ip", "link", "set", outside, "master", self.bridge, "up"])
        if mac:
            ns.run(["ip", "link", "set", "eth0", "address", mac])
        if ip:
            ns.run(["ip", "addr", "add", str(IPv4Interface(f"{ip}/{self.net.prefixlen}")), "dev", "eth0"])
        ns.run(["ip", "link", "set", "eth0", "up"])
        return ns

    def tap(self) -> str:
        """A tap device on the bridge, in the server namespace, for a qemu guest."""
        name = f"tap{next(self._links)}"
        self.server.run(["ip", "tuntap", "add", "dev", name, "mode", "tap"])
        self.server.run(["ip", "link", "set", name, "master", self.bridge, "up"])
        return name

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            ns.destroy()
        self.namespaces.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
