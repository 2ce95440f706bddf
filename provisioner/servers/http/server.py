"""The HTTP service: serve_forever() runs its own asyncio loop, shutdown() stops it from any
thread, reload() swaps the inventory and re-reads the admin token between requests."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

from aiohttp import web

from ...artifacts import layout
from ...inventory import Inventory
from ...logs import kv
from ...nodestate import NodeStateDB
from ...paths import State
from ..service import Service
from .app import BootApp, Hooks

log = logging.getLogger("provisioner.http")

# On stop, transfers in progress get this long to finish before they are cut.
SHUTDOWN_GRACE = 10.0


def read_token(state: State, path: Path | None) -> str | None:
    """The admin API token: the given file, else state/secrets/api.token if present."""
    try:
        return (path or layout.api_token(state)).read_text().strip() or None
    except FileNotFoundError:
        if path:
            raise
        return None


class HttpServer(Service):
    """`token_file`: the admin API token (read_token()); an unreadable one raises OSError."""

    name = "http"

    def __init__(self, inventory: Inventory, state: State, listen: str = "0.0.0.0", port: int = 80,
                 db: NodeStateDB | None = None, token_file: Path | None = None, hooks: Hooks | None = None):
        super().__init__()
        self.listen = listen
        self.port = port
        self.state, self.token_file = state, token_file
        self.boot = BootApp(inventory, state, db, read_token(state, token_file), hooks)
        self._started = threading.Event()
        self._halt = threading.Event()
        self._stopped = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def reload(self, inventory: Inventory) -> None:
        self.boot.reload(inventory)
        try:
            self.boot.token = read_token(self.state, self.token_file)
        except OSError as e:
            log.error("token file unreadable, keeping the previous token", extra=kv(error=e))

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
            log.info("listening", extra=kv(address=self.listen, port=self.port))
            self.ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()
