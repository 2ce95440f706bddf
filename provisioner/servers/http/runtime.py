"""Runtime overlays for running nodes: which archive each node should run, long-polls that
answer as soon as a build publishes a new generation, and pushes that ask nodes to refresh.

A build switches `overlays/current` with one rename; one task reads that link a few times a
second and wakes every waiter when it moves. Waiters are bounded (beyond the bound a poll is
answered at once with `retry`, the agent's periodic fallback), each waits a bounded time, and
only a node that proved who it is (app.py) may wait at all, so polls never take the
connections other requests need. `overlay push` asks nodes to refresh now and `overlay diff
--live` asks them to report their files now, both by request files the watch task takes (a
waiting poll is answered at once; the agent reports its files after every answer that names
what it runs). An agent that asks with `archive=1` gets the archive itself in the answer that
offers it (one request instead of two: on an emulated node each curl start costs seconds).
Archive hashes are cached by inode: unchanged nodes keep
their files (hard links) across generations, so a build costs one hash per changed node.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from dataclasses import dataclass

from ...artifacts import layout
from ...paths import State

WATCH_SECONDS = 0.2  # how often `current` is read
MAX_WAIT = 60  # seconds one poll may wait
RETRY = 30  # seconds a poll answered at once for lack of room is told to wait
_HASH_CACHE = 20_000
REPORT_PREFIX = "report-"  # a request file asking nodes to report their files, not to refresh


@dataclass(frozen=True)
class Offer:
    """What a node should run: the generation, its runtime archive's hash and size."""

    generation: int
    sha256: str
    size: int
    refresh: bool = False
    retry: int | None = None

    def header(self) -> str:
        """The offer on one line, for the header of an answer whose body is the archive."""
        return f"generation {self.generation} sha256 {self.sha256} size {self.size} refresh {int(self.refresh)}"

    def text(self) -> str:
        lines = [f"generation {self.generation}", f"sha256 {self.sha256}", f"size {self.size}"]
        lines.append(f"refresh {int(self.refresh)}")
        if self.retry is not None:
            lines.append(f"retry {self.retry}")
        return "\n".join(lines) + "\n"


class RuntimeWatch:
    def __init__(self, state: State, max_waiters: int):
        self.state = state
        self.max_waiters = max(1, max_waiters)
        self.waiters = 0
        self._link: str | None = None
        self._changed = asyncio.Event()
        self._hashes: dict[tuple[int, int, int, int], str] = {}
        self._pushed: set[str] = set()
        self._asked: set[str] = set()  # nodes asked to report their files now
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._link = self._read_link()
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        """Answer every waiting poll now (the server is stopping) and stop watching."""
        self._closing = True
        self._wake()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _read_link(self) -> str | None:
        try:
            return os.readlink(layout.overlay_current(self.state))
        except OSError:
            return None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            link = self._read_link()
            pushed, asked = self._take_requests()
            if link != self._link or pushed or asked:
                self._link = link
                self._pushed.update(pushed)
                self._asked.update(asked)
                self._wake()

    def _take_requests(self) -> tuple[set[str], set[str]]:
        """Node names from request files (each read once, then removed): to refresh (`overlay
        push`) and, in files named REPORT_PREFIX..., to report their files (`overlay diff --live`)."""
        folder = layout.push_requests(self.state)
        pushed: set[str] = set()
        asked: set[str] = set()
        try:
            requests = os.listdir(folder)
        except OSError:
            return pushed, asked
        for name in requests:
            path = folder / name
            if name.startswith("."):  # still being written
                continue
            with contextlib.suppress(OSError, UnicodeDecodeError):
                into = asked if name.startswith(REPORT_PREFIX) else pushed
                into.update(path.read_bytes()[:1_000_000].decode().split())
            with contextlib.suppress(OSError):
                os.unlink(path)
        return pushed, asked

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def push(self, nodes: list[str]) -> None:
        """Ask these nodes to fetch and apply their archive again, now or at their next poll."""
        self._pushed.update(nodes)
        self._wake()

    def offer(self, node: str) -> Offer | None:
        """The node's current runtime archive, or None when it has none (never built)."""
        gen = layout.generation(self.state)
        path = layout.runtime_archive(self.state, node)
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                sha = self._hashes.get(key)
                if sha is None:
                    sha = hashlib.file_digest(f, "sha256").hexdigest()
                    if len(self._hashes) >= _HASH_CACHE:
                        self._hashes.clear()
                    self._hashes[key] = sha
        except OSError:
            return None
        return Offer(gen or 0, sha, st.st_size, node in self._pushed)

    def archive(self, node: str, offer: Offer) -> bytes | None:
        """The node's archive as offered (one open, so body and hash agree), or None when a
        build replaced it since: the agent then fetches it apart."""
        try:
            with open(layout.runtime_archive(self.state, node), "rb") as f:
                st = os.fstat(f.fileno())
                if self._hashes.get((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)) != offer.sha256:
                    return None
                return f.read(offer.size + 1)
        except OSError:
            return None

    def published(self, node: str) -> str | None:
        """The hash of the node's published runtime archive (cached), or None."""
        offer = self.offer(node)
        return offer.sha256 if offer is not None else None

    async def poll(self, node: str, have: str, wait: float) -> Offer | None:
        """The node's offer as soon as it differs from `have` or a push asks for it, or after
        `wait` seconds (at most MAX_WAIT) whatever it is."""
        offer = self.offer(node)
        wait = min(max(wait, 0.0), MAX_WAIT)
        if offer is None or offer.sha256 != have or offer.refresh or wait == 0 or node in self._asked:
            return self._taken(node, offer)
        if self.waiters >= self.max_waiters:
            return Offer(offer.generation, offer.sha256, offer.size, retry=RETRY)
        self.waiters += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        try:
            while (left := deadline - loop.time()) > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)
                offer = self.offer(node)
                if self._closing or offer is None or offer.sha256 != have or offer.refresh or node in self._asked:
                    break
        finally:
            self.waiters -= 1
        return self._taken(node, offer)

    def _taken(self, node: str, offer: Offer | None) -> Offer | None:
        if offer is not None:
            self._asked.discard(node)  # any answer makes the agent report (or refresh)
            if offer.refresh:
                self._pushed.discard(node)
        return offer
