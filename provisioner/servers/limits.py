"""The descriptor budget of one process: cluster.limits' caps lowered until every service
in the process fits under RLIMIT_NOFILE together, so one service's flood can use up its own
share but never the descriptors another needs to accept (issue 17). `provisioner serve`
runs one service a process, so each fits alone."""

from __future__ import annotations

import logging
import resource
from collections.abc import Collection
from dataclasses import replace

from ..inventory.model import Limits
from ..logs import kv

log = logging.getLogger("provisioner.serve")

RESERVE = 256  # the process's own: database, log, DHCP sockets, a file being read, a worker pipe
TFTP_FDS = 2  # a transfer's connected socket and its socket for strays
HTTP_FDS = 2  # a connection's socket and the file it sends
HTTP_REFUSING = 64  # refused connections held while their 503 goes out (http/server.py)


def raise_nofile_limit() -> int:
    """Lift the soft descriptor limit to the hard one and return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def share(limits: Limits, processes: int) -> Limits:
    """One TFTP process's part of the TFTP caps when `processes` share the port: the kernel
    spreads a client's ports over them, so each takes its part of the per-address cap too."""
    if processes <= 1:
        return limits
    return replace(
        limits,
        tftp_transfers=-(-limits.tftp_transfers // processes),
        tftp_per_client=-(-limits.tftp_per_client // processes),
    )


def fit(limits: Limits, services: Collection[str], nofile: int | None = None) -> Limits:
    """`limits` with the TFTP and HTTP caps scaled down alike when the services of this
    process would need more descriptors than `nofile` (default: the raised limit)."""
    nofile = raise_nofile_limit() if nofile is None else nofile
    tftp = TFTP_FDS * limits.tftp_transfers if "tftp" in services else 0
    http = HTTP_FDS * (limits.http_connections + HTTP_REFUSING) if "http" in services else 0
    room = max(nofile - RESERVE, 2 * TFTP_FDS + 2 * HTTP_FDS)
    if tftp + http <= room:
        return limits
    scale = room / (tftp + http)
    fitted = replace(
        limits,
        tftp_transfers=max(1, int(limits.tftp_transfers * scale)),
        http_connections=max(1, int((limits.http_connections + HTTP_REFUSING) * scale) - HTTP_REFUSING),
    )
    log.warning(
        "caps lowered to fit the descriptor limit",
        extra=kv(nofile=nofile, tftp_transfers=fitted.tftp_transfers, http_connections=fitted.http_connections),
    )
    return fitted
