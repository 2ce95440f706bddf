"""Boot stages noted by the file servers: which stage a requested boot file marks, and a
writer that records them off the packet loop or event loop."""

from __future__ import annotations

import logging
import queue
import threading
import time

from ..nodestate import NodeStateDB

log = logging.getLogger("provisioner.stages")

# Boot stages a request for a boot file marks, by the path's last component.
FILE_STAGES = {"undionly.kpxe": "bootloader", "ipxe.efi": "bootloader", "snponly.efi": "bootloader",
               "pxelinux.0": "bootloader", "lpxelinux.0": "bootloader", "grubx64.efi": "bootloader",
               "boot.ipxe": "ipxe", "vmlinuz": "kernel", "initramfs.img": "initramfs"}
STAGE_REPEAT = 2.0  # seconds within which the same stage is not noted again (tsize probes, retries)


class StageWriter:
    """Boot-stage events noted from a packet loop, written to the DB by a thread of their own."""

    def __init__(self, db: NodeStateDB):
        self.db = db
        self.q: queue.SimpleQueue[tuple[str, str, float, str] | None] = queue.SimpleQueue()
        self.last: dict[tuple[str, str], float] = {}
        self.thread = threading.Thread(target=self._run, name="stage-writer", daemon=True)
        self.thread.start()

    def note(self, node: str, stage: str, detail: str) -> None:
        now = time.time()
        if now - self.last.get((node, stage), 0.0) >= STAGE_REPEAT:
            self.last[(node, stage)] = now
            self.q.put((node, stage, now, detail))

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()

    def _run(self) -> None:
        while (ev := self.q.get()) is not None:
            try:
                self.db.record_stage(ev[0], ev[1], ev[3], at=ev[2])
            except Exception:  # a full disk must not stop the boot services
                log.exception("could not record a boot stage", extra={"kv": {"node": ev[0], "stage": ev[1]}})


def stage_of(path: str) -> str | None:
    """The stage a request for `path` marks (TFTP or HTTP), or None."""
    return FILE_STAGES.get(path.replace("\\", "/").rsplit("/", 1)[-1])
