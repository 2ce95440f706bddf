"""DHCP and ProxyDHCP for the provisioning network.

- Inventory nodes get their static address, names, DNS, NTP, root path and, when they boot,
  a boot file by architecture (pxe.py) or, once running iPXE, their script's HTTP URL.
- A MAC not in the inventory gets a dynamic address only when it PXE-boots (or already holds
  a lease): the server hands no addresses to other devices on the link. Such MACs are
  recorded for `provisioner node discovered`, and adopted into the inventory automatically
  when cluster.discovery says `mode: auto` (through the adopter `provisioner serve` hands
  the server: actions.discovery.AutoAdopter, which keeps the policy's rate limit).
- Replies go to the relay (giaddr, port 67), to ciaddr when the client has an address, and
  are broadcast otherwise (no ARP entries are forged for unconfigured clients).
- In full mode the server also answers IPv6 router solicitations (ra.py) so iPXE does not
  wait ~16 s for a router; in ProxyDHCP mode the site owns the network and should send RAs
  itself (for example radvd on the boot interface with no prefix and lifetime 0).
- reload() takes a new inventory (nodes, options, boot files); changing the listen address,
  interface or DHCP mode needs a restart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import DhcpServer

__all__ = ["DhcpServer"]


def __getattr__(name: str) -> Any:
    """DhcpServer on first use: it loads scapy (a second of start-up), which the CLI's commands
    that only read boot answers (tftp_cmds) never need."""
    if name == "DhcpServer":
        from .server import DhcpServer

        return DhcpServer
    raise AttributeError(name)
