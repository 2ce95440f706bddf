"""Several server processes on one port (SO_REUSEPORT) for the standalone command.

One Python process is one CPU; the kernel hashes each client's address to one of the
workers' sockets, so a client's request retries and its whole transfer stay in one worker.
Only for a process that has no other threads yet: fork() copies just the calling thread.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Callable

from .server import TftpServer

log = logging.getLogger("provisioner.tftp")


def _stop_on_signals(server: TftpServer, also: Callable[[], None] = lambda: None) -> None:
    def stop(*_: object) -> None:
        also()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def serve_workers(make: Callable[[], TftpServer], workers: int) -> None:
    """Serve with `workers` processes until SIGTERM/SIGINT; `make()` builds one server with
    reuse_port=True. The first is built here, so a bind error surfaces before any fork."""
    first = make()
    children: list[int] = []
    for _ in range(workers - 1):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                first.sock.close()
                server = make()
                _stop_on_signals(server)
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent relays it as SIGTERM
                server.serve_forever()
                code = 0
            except BaseException:
                log.exception("TFTP worker failed")
            finally:
                os._exit(code)
        children.append(pid)

    def stop_children() -> None:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    _stop_on_signals(first, stop_children)
    try:
        first.serve_forever()
    finally:
        stop_children()
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
