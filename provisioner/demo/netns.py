"""A private provisioning network: a namespace holding bridge br0 (the master's address) and
a tap device per virtual node. Made with pyroute2, removed with everything running in it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Interface

from pyroute2 import NetNS, netns


@dataclass
class DemoNet:
    name: str
    master: IPv4Interface
    bridge: str = "br0"
    taps: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def create(self) -> None:
        netns.create(self.name)
        with NetNS(self.name) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
            ns.link("add", ifname=self.bridge, kind="bridge", br_forward_delay=0, br_stp_state=0)
            br = ns.link_lookup(ifname=self.bridge)[0]
            ns.addr("add", index=br, address=str(self.master.ip), prefixlen=self.master.network.prefixlen)
            ns.link("set", index=br, state="up")

    def add_tap(self) -> str:
        name = f"tap{len(self.taps)}"
        with NetNS(self.name) as ns:
            ns.link("add", ifname=name, kind="tuntap", mode="tap")
            idx = ns.link_lookup(ifname=name)[0]
            ns.link("set", index=idx, master=ns.link_lookup(ifname=self.bridge)[0], state="up")
        self.taps.append(name)
        return name

    def enter(self, cmd: list[str]) -> list[str]:
        """`cmd` run inside the namespace (nsenter keeps /sys, which slurmd needs)."""
        return ["nsenter", f"--net={self.path}", "--", *cmd]

    def destroy(self) -> None:
        """Kill whatever still runs inside, then remove the namespace."""
        if not os.path.exists(self.path):
            return
        end_processes_in(self.name)
        netns.remove(self.name)


def netns_pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def end_processes_in(name: str, grace: float = 5.0) -> None:
    """SIGTERM every process in network namespace `name`, SIGKILL what is left after `grace`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in netns_pids(name):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while netns_pids(name) and time.time() < deadline:
            time.sleep(0.05)
