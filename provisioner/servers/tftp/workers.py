"""TFTP worker processes: more servers on one port (SO_REUSEPORT), one CPU each.

One Python process is one CPU; the kernel hashes each client's address to one of the
sockets on the port, so a client's request retries and its whole transfer stay in one
process. Workers are fresh processes (never a fork: the parent may have threads by then)
started from an argv the caller builds. A worker says "ready" once bound and "reloaded N"
after a reload, N the SIGHUPs it had received when that reload began, on its stdout: the
parent's own "ready" and "reloaded" then hold for every process, and the count keeps a late
answer to a reload that timed out from passing for the answer to the next one. A worker
ends on SIGTERM or as soon as its parent is gone; one that dies on its own is reported.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

from ...logs import kv
from ..service import Service

log = logging.getLogger("provisioner.tftp")
ACK_TIMEOUT = 30.0  # for a worker to bind or reload: a Python start-up and a YAML parse


class Workers:
    """`count` processes running `argv` (the parent's side of the protocol above)."""

    def __init__(self, argv: Sequence[str], count: int, ack_timeout: float = ACK_TIMEOUT):
        self.argv = list(argv)
        self.count = count
        self.ack_timeout = ack_timeout
        self.procs: list[subprocess.Popen[bytes]] = []
        self.hups = 0  # SIGHUPs sent to each worker
        self._unread: dict[int, bytes] = {}
        self._stopping = threading.Event()

    def start(self, on_death: Callable[[str], None]) -> None:
        """Start the workers and wait until each is bound; `on_death(reason)` is called (from
        a watcher thread) if one ends before stop()."""
        self.procs = [
            subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE) for _ in range(self.count)
        ]
        self._expect("ready")
        log.info("workers", extra=kv(pids=",".join(str(p.pid) for p in self.procs)))
        threading.Thread(target=self._watch, args=(on_death,), name="tftp-workers", daemon=True).start()

    def _expect(self, word: str, count: int = 0) -> None:
        """Wait for every worker to say `word` (with a count of at least `count`), passing
        over older answers."""
        deadline = time.monotonic() + self.ack_timeout
        for p in self.procs:
            while True:
                line = self._line(p, deadline)
                if line is None:
                    code = p.poll()
                    raise RuntimeError(
                        f"TFTP worker {p.pid} did not say {word!r} within {self.ack_timeout:g} s"
                        + (f" (exited with code {code})" if code is not None else "")
                    )
                said, _, n = line.partition(" ")
                if said == word and (int(n) if n.isdigit() else 0) >= count:
                    break

    def _line(self, p: subprocess.Popen[bytes], deadline: float) -> str | None:
        """The worker's next line, or None at the deadline or its end. Read straight from the
        pipe: a buffered reader would hide a second line from select()."""
        assert p.stdout is not None
        fd = p.stdout.fileno()
        unread = self._unread.get(p.pid, b"")
        while b"\n" not in unread:
            left = deadline - time.monotonic()
            chunk = os.read(fd, 4096) if left > 0 and select.select([fd], [], [], left)[0] else b""
            if not chunk:  # the deadline, or the worker's end
                self._unread[p.pid] = unread
                return None
            unread += chunk
        line, _, self._unread[p.pid] = unread.partition(b"\n")
        return line.decode("ascii", "replace").strip()

    def _watch(self, on_death: Callable[[str], None]) -> None:
        while not self._stopping.wait(0.5):
            for p in self.procs:
                code = p.poll()
                if code is not None and not self._stopping.is_set():
                    on_death(f"TFTP worker {p.pid} exited with code {code}")
                    return

    def reload(self) -> None:
        """SIGHUP every worker and wait for each to have reloaded."""
        self.hups += 1
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGHUP)
        try:
            self._expect("reloaded", self.hups)
        except RuntimeError as e:
            log.error("worker reload", extra=kv(error=e))

    def stop(self) -> None:
        self._stopping.set()
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()


def run_worker(service: Service, reload: Callable[[], None]) -> int:
    """The worker's side: serve until SIGTERM or the parent's end, calling `reload()` on
    SIGHUP and answering as the protocol says; 1 if the service ended by itself."""
    parent = os.getppid()
    wake, stop = threading.Event(), threading.Event()
    hups = [0]

    def hup(*_: object) -> None:
        hups[0] += 1
        wake.set()

    def term(*_: object) -> None:
        stop.set()
        wake.set()

    signal.signal(signal.SIGHUP, hup)
    signal.signal(signal.SIGTERM, term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    thread = threading.Thread(target=service.serve_forever, name="serve-tftp", daemon=True)
    thread.start()
    while not service.ready.wait(0.1) and thread.is_alive():
        pass
    _tell("ready")
    reloaded = 0
    while not stop.is_set() and thread.is_alive() and os.getppid() == parent:
        wake.wait(0.5)
        wake.clear()
        if hups[0] > reloaded:
            reloaded = hups[0]  # SIGHUPs that came during a reload are answered by the next
            reload()
            _tell(f"reloaded {reloaded}")
    failed = not thread.is_alive()  # the server ended by itself, not asked to
    service.shutdown()
    thread.join(timeout=15)
    return 1 if failed else 0


def _tell(word: str) -> None:
    """A line to the parent on our stdout (a pipe it reads)."""
    try:
        sys.stdout.write(word + "\n")
        sys.stdout.flush()
    except OSError:
        pass  # the parent is gone: the loop sees it
