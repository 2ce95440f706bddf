"""The shared boot-stage writer, batched: DHCP notes a "dhcp" stage for every node that gets
an address, and in a boot storm (or under perfdhcp) that is thousands per second. One commit
per event costs ~10x the packet itself and the writer thread's GIL hand-offs stall the packet
loop, so events are gathered for a moment and written in one transaction."""

from __future__ import annotations

import queue
import time

from ..stages import StageWriter, log

GATHER = 0.2  # seconds to let events pile up before a write
MAX_BATCH = 5000


class BatchedStageWriter(StageWriter):
    def _run(self) -> None:
        while True:
            batch = [self.q.get()]
            if batch[0] is not None:
                time.sleep(GATHER)
            while len(batch) < MAX_BATCH and batch[-1] is not None:
                try:
                    batch.append(self.q.get_nowait())
                except queue.Empty:
                    break
            rows = [(ev[0], ev[1], ev[2], ev[3]) for ev in batch if ev is not None]
            if rows:
                try:
                    self.db.record_stages(rows)
                except Exception:  # a full disk must not stop DHCP
                    log.exception("could not record %d boot-stage events", len(rows))
            if batch[-1] is None:
                return
