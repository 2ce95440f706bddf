"""`provisioner logs NODE`: a node's syslog as rsyslog filed it on the master (configure logs),
the rotated file first; `--boot` from the last line the initramfs logs at the start of a boot."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from ..errors import UserError
from ..inventory.schema import valid_hostname
from ..render.logs import BOOT_MARK
from .configure import log_dir
from .context import Context


def log_files(ctx: Context, node: str) -> list[Path]:
    """The node's files, oldest first; a node that is gone keeps its log until removed."""
    if not valid_hostname(node):
        raise UserError(f"{node!r} is not a node name")
    d = log_dir(ctx) / node
    if ctx.inventory().node(node) is None and not d.is_dir():
        raise UserError(f"no such node: {node}")
    return [p for p in (d / "messages.1", d / "messages") if p.exists()]


def read(ctx: Context, node: str, boot: bool = False, lines: int | None = None) -> list[str]:
    out: list[str] = []
    for p in log_files(ctx, node):
        out += p.read_text(errors="replace").splitlines()
    if boot:
        marks = [i for i, line in enumerate(out) if BOOT_MARK in line]
        out = out[marks[-1] :] if marks else out
    return out[-lines:] if lines else out


def follow(ctx: Context, node: str, emit: Callable[[str], None], stop: Callable[[], bool] = lambda: False) -> None:
    """Print lines as rsyslog appends them, across rotations (the new file is read from its
    start), until `stop` says so or the caller is interrupted."""
    log_files(ctx, node)
    partial = ""
    for data in _appended(log_dir(ctx) / node / "messages", stop):
        partial += data
        *done, partial = partial.split("\n")
        for line in done:
            emit(line)


def _appended(path: Path, stop: Callable[[], bool]) -> Iterator[str]:
    """What is appended to `path` from its current end, reopening it when it is replaced."""
    f: TextIO | None = None
    inode = None
    try:
        while not stop():
            try:
                st: os.stat_result | None = os.stat(path)
            except FileNotFoundError:
                st = None
            if st is not None and (f is None or st.st_ino != inode):
                if f is not None:
                    yield f.read()  # the end of the rotated file
                    f.close()
                else:
                    f = open(path, errors="replace")  # noqa: SIM115 - held across iterations
                    f.seek(0, os.SEEK_END)
                    inode = st.st_ino
                    continue
                f = open(path, errors="replace")  # noqa: SIM115
                inode = st.st_ino
            data = f.read() if f is not None else ""
            if data:
                yield data
            else:
                time.sleep(0.2)
    finally:
        if f is not None:
            f.close()
