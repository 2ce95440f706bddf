"""One service in a process of its own, kept running: both ends of the link between
`provisioner serve` and each service process.

Why processes: one Python process is one CPU (the GIL), and in a boot storm HTTP, DHCP and
TFTP each want one. A child is a fresh interpreter (`python -m MODULE NAME FD`, never a fork:
the parent has threads), its end of a socketpair as descriptor FD. The parent sends first
what the child builds its service from (any picklable object), then ("reload", n, inventory)
and ("peers", data); SIGTERM stops the child. The child says ("ready",) once its service
answers, ("failed", reason) when it cannot start, ("reloaded", n), ("counters", mapping)
when they change and ("reload",) to ask the parent for a reload. A child that loses its
parent stops; a child that ends unasked after it was ready is started again, after a pause
that doubles at each quick death (BACKOFF_FIRST up to BACKOFF_MAX).
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from ..logs import kv
from .service import Service

log = logging.getLogger("provisioner.serve")

BACKOFF_FIRST = 0.5  # seconds before the first restart
BACKOFF_MAX = 30.0
STEADY = 60.0  # a child up this long died of something new: the pause starts over
STOP_GRACE = 20.0  # for a child to stop on SIGTERM (HTTP lets transfers finish for 10 s)
PUSH_INTERVAL = 0.5  # seconds between a child's counter updates, when they changed
JOIN = 15.0  # for a service thread to end after shutdown()

Message = tuple[Any, ...]


class Supervised:
    """The parent's side of one child: start() runs it in a thread of its own that restarts
    it as the module says; `hello()` is the first message of each start (so a restarted child
    builds from the current inventory), `on_message(name, message)` sees every message, and
    ("exited", code) after each end."""

    def __init__(self, name: str, module: str, hello: Callable[[], object], on_message: Callable[[str, Message], None]):
        self.name, self.module, self.hello, self.on_message = name, module, hello, on_message
        self.ready = threading.Event()  # the current child answers
        self.ended = threading.Event()  # the first start failed, or stop() was called
        self.failure: str | None = None  # why the first start failed
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()  # the first message goes out before any other
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"supervise-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def send(self, message: Message) -> bool:
        """To the running child; False when there is none (it is being started again)."""
        with self._lock:
            if self._conn is None:
                return False
            try:
                self._conn.send(message)
                return True
            except OSError:
                return False

    def alive(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None

    def terminate(self) -> None:
        """Ask the child to stop and start no other (SIGTERM); join() waits for it."""
        self._stopping.set()
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()

    def join(self) -> None:
        proc = self._proc
        if proc is not None:
            try:
                proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                log.error("service did not stop, killed", extra=kv(service=self.name, pid=proc.pid))
                proc.kill()
        self._thread.join(timeout=STOP_GRACE)
        self.ended.set()

    def _run(self) -> None:
        pause, first = BACKOFF_FIRST, True
        while not self._stopping.is_set():
            began = time.monotonic()
            code = self._once()
            self.on_message(self.name, ("exited", code))
            if self._stopping.is_set():
                return
            if first and not self.ready.is_set():
                self.failure = self.failure or f"the {self.name} service ended before it was ready (code {code})"
                self.ended.set()
                return
            first = False
            self.ready.clear()
            if time.monotonic() - began > STEADY:
                pause = BACKOFF_FIRST
            log.error("service ended, starting it again", extra=kv(service=self.name, code=code, pause=pause))
            if self._stopping.wait(pause):
                return
            pause = min(2 * pause, BACKOFF_MAX)

    def _once(self) -> int:
        """One child, from its start to its end: its exit code."""
        ours, theirs = socket.socketpair()
        with self._lock, ours, theirs:
            fd = theirs.fileno()
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-m", self.module, self.name, str(fd)], pass_fds=(fd,), stdin=subprocess.DEVNULL
                )
            except OSError as e:  # out of processes or memory: as if it had died at once
                self.failure = f"cannot start the {self.name} service process: {e}"
                return -1
            self._proc, self.pid = proc, proc.pid
            conn = self._conn = Connection(ours.detach())
            if self._stopping.is_set():
                proc.terminate()
            try:
                conn.send(self.hello())
            except OSError:
                pass
        log.info("service started", extra=kv(service=self.name, pid=proc.pid))
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "ready":
                self.ready.set()
            elif message[0] == "failed":
                self.failure = message[1]
            self.on_message(self.name, message)
        with self._lock:
            self._conn = None
            conn.close()
        return proc.wait()


class Link:
    """The child's side: sends to the parent from any thread; `peers` is the parent's latest
    ("peers", data)."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.peers: Any = None
        self._lock = threading.Lock()

    def send(self, message: Message) -> None:
        with self._lock:
            try:
                self.conn.send(message)
            except OSError:
                pass  # the parent is gone: host() sees it and stops


def host(link: Link, service: Service) -> int:
    """Run `service` in this child until SIGTERM or the parent's end: 1 when it ended by
    itself (its failure logged), else 0."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads come from the parent, with the inventory
    thread = threading.Thread(target=_serve, args=(service,), name=f"serve-{service.name}", daemon=True)
    thread.start()
    while not service.ready.wait(0.1) and thread.is_alive() and not stop.is_set():
        pass
    if service.ready.is_set():
        link.send(("ready",))
    sent: dict[str, int] = {}
    while thread.is_alive() and not stop.is_set():
        try:
            if link.conn.poll(PUSH_INTERVAL):
                _obey(link, service, link.conn.recv())
        except (EOFError, OSError):
            break  # the parent is gone
        counters = dict(service.counters())
        if counters != sent:
            link.send(("counters", counters))
            sent = counters
    failed = not thread.is_alive()
    service.shutdown()
    thread.join(timeout=JOIN)
    return 1 if failed else 0


def _obey(link: Link, service: Service, message: Message) -> None:
    if message[0] == "reload":
        service.reload(message[2])
        link.send(("reloaded", message[1]))
    elif message[0] == "peers":
        link.peers = message[1]


def _serve(service: Service) -> None:
    try:
        service.serve_forever()
    except Exception:
        log.exception("service failed", extra=kv(service=service.name))
