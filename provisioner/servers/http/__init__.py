"""HTTP boot server (aiohttp): iPXE scripts, kernels and initramfs, per-node overlay
archives, the node API (boot stages, facts), admin endpoints and Prometheus metrics.

aiohttp because it is the well-kept asyncio HTTP server whose static file responses already
do sendfile(2) zero-copy, Range, HEAD, ETag and If-None-Match; one event loop carries
hundreds of concurrent boot downloads without a thread each.
"""

from .app import BootApp, Hooks
from .server import HttpServer, read_token
from .web import ConsoleActions, PlanChange

__all__ = ["BootApp", "ConsoleActions", "Hooks", "HttpServer", "PlanChange", "read_token"]
