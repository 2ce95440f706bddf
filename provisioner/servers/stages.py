"""Boot stages noted by the servers: which stage a requested boot file marks, and a writer
that records them off the packet loop or event loop."""

from __future__ import annotations

import time

from ..bootfiles import FILE_STAGES
from ..nodestate import NodeStateDB
from ..nodestate.writer import BatchWriter

STAGE_REPEAT = 2.0  # seconds within which the same stage is not noted again (tsize probes, retries)


class StageWriter:
    """Boot-stage events noted from a packet or event loop, written by a BatchWriter; the
    same stage of a node again within STAGE_REPEAT is not noted, here nor by the database
    (another process may have noted it). DHCP gathers its events
    for a moment (`gather`): in a boot storm or under perfdhcp that is thousands a second."""

    def __init__(self, db: NodeStateDB, gather: float = 0.0):
        self.last: dict[tuple[str, str], float] = {}
        self.writer: BatchWriter[tuple[str, str, float, str | None]] = BatchWriter(
            lambda rows: db.record_stages(rows, within=STAGE_REPEAT), "stage-writer", gather
        )

    def note(self, node: str, stage: str, detail: str) -> None:
        now = time.time()
        if now - self.last.get((node, stage), 0.0) >= STAGE_REPEAT:
            self.last[(node, stage)] = now
            self.writer.put((node, stage, now, detail))

    def close(self) -> None:
        self.writer.close()


def stage_of(path: str) -> str | None:
    """The stage a request for `path` marks (TFTP or HTTP), or None (the boot registry's
    stage of the file the path's last component names)."""
    return FILE_STAGES.get(path.replace("\\", "/").rsplit("/", 1)[-1])
