"""Rows for the node-state DB written from a thread of their own, a batch per transaction.

The DHCP and TFTP packet loops and the HTTP event loop only queue rows: a slow disk never
stalls them, and a boot storm costs one commit per batch instead of one per event (a commit
costs about ten times the packet that caused it).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from ..logs import kv

log = logging.getLogger("provisioner.nodestate")

T = TypeVar("T")
MAX_BATCH = 5000


class BatchWriter(Generic[T]):
    """`write(rows)` called on the writer thread with what was queued; `gather` seconds
    are let pass after the first row so that a burst lands in one batch. With a `limit`,
    rows beyond that many queued are dropped (and counted): what strangers can make us
    record must not grow memory while the disk is slow."""

    def __init__(self, write: Callable[[list[T]], None], name: str, gather: float = 0.0, limit: int | None = None):
        self._write = write
        self.name = name
        self.gather = gather
        self.limit = limit
        self.counts = {"rows": 0, "batches": 0, "dropped": 0}
        self._q: queue.SimpleQueue[T | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, row: T) -> None:
        if self.limit is not None and self._q.qsize() >= self.limit:
            self.counts["dropped"] += 1
            return
        self._q.put(row)

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        self._q.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            batch = [self._q.get()]
            if batch[0] is not None and self.gather:
                time.sleep(self.gather)
            while len(batch) < MAX_BATCH and batch[-1] is not None:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            rows = [r for r in batch if r is not None]
            if rows:
                self.counts["rows"] += len(rows)
                self.counts["batches"] += 1
                try:
                    self._write(rows)
                except Exception:  # a full disk must not stop the boot services
                    log.exception(
                        "could not record rows in the node-state DB", extra=kv(writer=self.name, rows=len(rows))
                    )
            if batch[-1] is None:
                return
