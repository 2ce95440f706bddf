"""The HTTP server as a thread-friendly object, like the DHCP and TFTP servers:
serve_forever() runs its own asyncio loop, shutdown() stops it from any thread."""

from __future__ import annotations

import asyncio
import logging
import threading

from aiohttp import web

from ...inventory import Inventory
from ...nodestate import NodeStateDB
from ...paths import State
from .app import BootApp, Hooks

log = logging.getLogger("provisioner.http")

# On stop, transfers in progress get this long to finish before they are cut.
SHUTDOWN_GRACE = 10.0


class HttpServer:
    def __init__(self, inventory: Inventory, state: State, listen: str = "0.0.0.0", port: int = 80,
                 db: NodeStateDB | None = None, token: str | None = None, hooks: Hooks | None = None):
        self.listen = listen
        self.port = port
        self.boot = BootApp(inventory, state, db, token, hooks)
        self.ready = threading.Event()
        self._started = threading.Event()
        self._halt = threading.Event()
        self._stopped = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def reload(self, inventory: Inventory) -> None:
        self.boot.reload(inventory)

    def serve_forever(self) -> None:
        self._started.set()
        try:
            asyncio.run(self._main())
        finally:
            self.boot.close()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop listening, let transfers in flight finish (up to SHUTDOWN_GRACE), return once stopped."""
        self._halt.set()
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop has already closed
                pass
        if self._started.is_set():
            self._stopped.wait()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        if self._halt.is_set():
            return
        runner = web.AppRunner(self.boot.make(), access_log=None, shutdown_timeout=SHUTDOWN_GRACE,
                               handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.listen, self.port, backlog=1024, reuse_address=True)
            await site.start()
            log.info("listening", extra={"kv": {"address": self.listen, "port": self.port}})
            self.ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()
