"""Read-only TFTP server built on tftpy's packet classes (see server.py for what it adds)."""

from .server import TftpServer, check_port_free, listen_address

__all__ = ["TftpServer", "check_port_free", "listen_address"]
