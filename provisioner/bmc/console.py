"""A node's serial console over IPMI serial-over-LAN (pyghmi), and its bounded log.

pyghmi runs SOL on its own I/O loop and hands the console's bytes to a callback; `Sol` turns
that into `pump()` for the caller's loop and one-line errors. `ConsoleLog` keeps what a node
printed in state/console/<node>.log, rotated to <node>.log.1 at `max_bytes`, so a node that
prints forever holds at most twice that on disk.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..atomic import private_dir
from .client import BmcError, Target, _explain

CONSOLE_LOG_BYTES = 1 << 20


class Sol:
    """An open SOL session: `on_output(bytes)` gets what the node prints; `error` is set (and
    `closed`) when the session fails or the BMC ends it."""

    def __init__(self, target: Target, on_output: Callable[[bytes], None]):
        if target.protocol != "ipmi":
            raise BmcError(f"{target.where}: the serial console needs IPMI serial-over-LAN")
        from pyghmi.ipmi import console

        self.target = target
        self.error: str | None = None
        self.closed = threading.Event()
        self._on_output = on_output
        try:
            self._console = console.Console(
                target.address, target.user, target.password, iohandler=self._handle, port=target.port, force=True
            )
        except Exception as e:
            raise _explain(target, e) from None

    def _handle(self, data: Any) -> None:
        if isinstance(data, dict):
            if "error" in data:
                self.error = str(_explain(self.target, Exception(str(data["error"]))))
                self.closed.set()
            return
        self._on_output(data if isinstance(data, bytes) else str(data).encode())

    def send(self, data: bytes) -> None:
        self._console.send_data(data)

    @staticmethod
    def pump(seconds: float) -> None:
        """Let pyghmi move the data of every open session for at most `seconds`."""
        from pyghmi.ipmi.private import session

        session.Session.wait_for_rsp(seconds)

    def close(self) -> None:
        try:
            self._console.close()
        except Exception:
            pass  # the BMC ends an abandoned session itself
        self.closed.set()


def log_path(console_dir: Path, node: str) -> Path:
    return console_dir / f"{node}.log"


class ConsoleLog:
    """Appends a node's console output; at `max_bytes` the file becomes <node>.log.1 (the one
    before is dropped) and a new one starts. Files 0600: consoles show what nodes print."""

    def __init__(self, console_dir: Path, node: str, max_bytes: int = CONSOLE_LOG_BYTES):
        self.path = log_path(private_dir(console_dir), node)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size and size + len(data) > self.max_bytes:
                    os.close(fd)
                    os.replace(self.path, f"{self.path}.1")
                    fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                os.write(fd, data[-self.max_bytes :])
            finally:
                os.close(fd)


def read_log(console_dir: Path, node: str) -> bytes:
    """What is kept of the node's console, oldest first."""
    out = b""
    for p in (Path(f"{log_path(console_dir, node)}.1"), log_path(console_dir, node)):
        try:
            out += p.read_bytes()
        except FileNotFoundError:
            pass
    return out
