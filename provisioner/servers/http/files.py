"""File responses that report when they end: aiohttp's FileResponse (sendfile, Range, HEAD,
ETag/If-None-Match) with a callback once the body has gone out or the client went away."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

# (response, bytes sent, seconds, outcome "ok" | "aborted")
Done = Callable[[web.FileResponse, int, float, str], Awaitable[None]]


class TrackedFile(web.FileResponse):
    def __init__(self, path: Path, content_type: str, begin: Callable[[], None], done: Done):
        super().__init__(path, headers={"Content-Type": content_type})
        self._begin = begin
        self._done = done

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        started, outcome = time.monotonic(), "aborted"
        self._begin()
        try:
            writer = await super().prepare(request)
            outcome = "ok"
            return writer
        finally:
            sent = (
                (self.content_length or 0)
                if (outcome == "ok" and request.method == "GET" and self.status in (200, 206))
                else 0
            )
            await self._done(self, sent, time.monotonic() - started, outcome)
