"""Read-only TFTP server built on tftpy's packet classes (see server.py for what it adds)."""

from .server import TftpServer, check_port_free, listen_address, raise_nofile_limit
from .transfer import TransferStats

__all__ = ["TftpServer", "TransferStats", "check_port_free", "listen_address", "raise_nofile_limit"]
