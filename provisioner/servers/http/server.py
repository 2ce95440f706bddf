"""The HTTP service: serve_forever() runs its own asyncio loop, shutdown() stops it from any
thread, reload() swaps the inventory and re-reads the admin token between requests.

A flood takes no more than cluster.limits allows: connections at once are capped, in total
and per client address (beyond, a 503 with Retry-After, and past a few more an immediate
close, so accept() never runs out of descriptors), a connection must send its first request's headers within the header
timeout, and an idle one is closed after the keep-alive timeout (aiohttp's, which also
covers a later request's half-sent headers)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.web_runner import BaseRunner, BaseSite

from ...artifacts import layout
from ...inventory import Inventory
from ...inventory.model import Limits
from ...logs import kv, repeated
from ...nodestate import NodeStateDB
from ...paths import State
from ..limits import HTTP_REFUSING
from ..service import Service
from .app import BootApp, Hooks

log = logging.getLogger("provisioner.http")

# On stop, transfers in progress get this long to finish before they are cut.
SHUTDOWN_GRACE = 10.0
RETRY_AFTER = 5  # seconds a refused client is told to wait
_BUSY = (
    f"HTTP/1.1 503 Service Unavailable\r\nRetry-After: {RETRY_AFTER}\r\nContent-Type: text/plain\r\n"
    "Content-Length: 20\r\nConnection: close\r\n\r\nserver busy, retry\r\n"
).encode()


class Gate:
    """Counts the connections, in total and by client address, and makes the protocol for
    each new one (a _Connection, which asks admit() once it knows the peer)."""

    def __init__(self, runner: BaseRunner, limits: Limits):
        self.runner, self.limits = runner, limits
        self.open = 0
        self.per_ip: dict[str, int] = {}
        self.refusing = 0  # refused connections whose 503 is on its way
        self.refused = 0

    def __call__(self) -> asyncio.Protocol:
        return _Connection(self)

    def admit(self, ip: str) -> asyncio.Protocol | None:
        """aiohttp's protocol for a connection from `ip`, counted; None over a cap."""
        cap = (
            "connections"
            if self.open >= self.limits.http_connections
            else "per client"
            if self.per_ip.get(ip, 0) >= self.limits.http_per_client
            else None
        )
        if cap is not None:
            self.refused += 1
            log.warning("refused", extra=repeated(f"http busy {cap}", client=ip, cap=cap, connections=self.open))
            return None
        assert self.runner.server is not None
        self.open += 1
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        return self.runner.server()

    def release(self, ip: str) -> None:
        self.open -= 1
        left = self.per_ip.pop(ip, 1) - 1
        if left > 0:
            self.per_ip[ip] = left


class _Connection(asyncio.Protocol):
    """One connection. Admitted: aiohttp's protocol behind a header deadline, closed if no
    request has begun within the header timeout (a client that connects and sends nothing,
    or its headers a byte at a time); the middleware `started` announces requests. Refused:
    the request's first bytes are read (closing over unread data would reset the connection
    under the answer), then a 503 and the close; or the close alone when too many refusals
    are already under way."""

    def __init__(self, gate: Gate):
        self.gate = gate
        self.inner: asyncio.Protocol | None = None
        self.ip = ""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.refusing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport, gate = transport, self.gate
        peer = transport.get_extra_info("peername")
        self.ip = str(peer[0]) if peer else ""
        loop = asyncio.get_running_loop()
        self.inner = gate.admit(self.ip)
        if self.inner is not None:
            self.timer = loop.call_later(gate.limits.http_header_timeout, transport.close)
            self.inner.connection_made(transport)
        elif gate.refusing < HTTP_REFUSING:
            gate.refusing += 1
            self.refusing = True
            self.timer = loop.call_later(1.0, self._refuse)
        else:
            transport.abort()

    def request_started(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _refuse(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_BUSY)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)
        else:
            self._refuse()

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.request_started()
        if self.inner is not None:
            self.gate.release(self.ip)
            self.inner.connection_lost(exc)
        elif self.refusing:
            self.gate.refusing -= 1


@web.middleware
async def started(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The first request of a connection has arrived whole: its header deadline is off."""
    proto = request.transport.get_protocol() if request.transport is not None else None
    if isinstance(proto, _Connection):
        proto.request_started()
    return await handler(request)


class GuardedSite(BaseSite):
    """aiohttp's TCP site with the Gate as its protocol factory."""

    def __init__(self, runner: BaseRunner, host: str, port: int, limits: Limits):
        super().__init__(runner, backlog=1024)
        self.host, self.port = host, port
        self.gate = Gate(runner, limits)

    @property
    def name(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        self._server = await asyncio.get_running_loop().create_server(
            self.gate, self.host, self.port, backlog=self._backlog, reuse_address=True
        )


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

    def __init__(
        self,
        inventory: Inventory,
        state: State,
        listen: str = "0.0.0.0",
        port: int = 80,
        db: NodeStateDB | None = None,
        token_file: Path | None = None,
        hooks: Hooks | None = None,
        limits: Limits | None = None,
    ):
        super().__init__()
        self.listen = listen
        self.port = port
        self.limits = limits or inventory.cluster.limits
        self.site: GuardedSite | None = None
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
        app = self.boot.make()
        app.middlewares.insert(0, started)
        runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=SHUTDOWN_GRACE,
            handle_signals=False,
            keepalive_timeout=self.limits.http_keepalive_timeout,
        )
        await runner.setup()
        try:
            self.site = site = GuardedSite(runner, self.listen, self.port, self.limits)
            await site.start()
            log.info("listening", extra=kv(address=self.listen, port=self.port))
            self.ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()
