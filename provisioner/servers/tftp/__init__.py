"""Read-only TFTP server built on tftpy's packet classes (see server.py for what it adds)."""

from .server import TftpServer, listen_address, raise_nofile_limit
from .transfer import TransferStats

__all__ = ["TftpServer", "TransferStats", "listen_address", "raise_nofile_limit"]
