"""DHCP and ProxyDHCP for the provisioning network: static leases from the inventory, PXE
boot files by architecture, iPXE script URLs, discovery of unknown MACs."""

from .server import DhcpServer

__all__ = ["DhcpServer"]
