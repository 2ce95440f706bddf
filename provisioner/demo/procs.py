"""Child daemons of the demo: each logs to its own file, is waited on until ready, and is
stopped (TERM, then KILL) in reverse start order. A failure shows the daemon's last lines."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PROVISIONER = shutil.which("provisioner") or str(Path(sys.executable).parent / "provisioner")


class DemoFailure(Exception):
    """A demo stage failed; the message names the stage and carries the relevant log lines."""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"    {line}" for line in text[-lines:])


@dataclass
class Supervisor:
    logdir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(
        self,
        name: str,
        cmd: list[str],
        env: dict[str, str] | None = None,
        ready: str | Callable[[], bool] | None = None,
        timeout: float = 60,
    ) -> Proc:
        """Start `cmd`; with `ready` (a regex on the log, or a predicate) wait until it holds."""
        self.logdir.mkdir(parents=True, exist_ok=True)
        log = self.logdir / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        if ready is not None:
            self.wait(proc, ready, timeout)
        return proc

    def wait(self, proc: Proc, ready: str | Callable[[], bool], timeout: float) -> None:
        check = (
            ready if callable(ready) else (lambda: re.search(ready, proc.log.read_text(errors="replace")) is not None)
        )

        def ready_or_dead() -> bool:
            if proc.popen.poll() is not None:
                raise DemoFailure(f"{proc.name} exited with status {proc.popen.returncode}:\n{proc.tail()}")
            return check()

        self.wait_for(proc.name, ready_or_dead, timeout, proc.tail)

    @staticmethod
    def wait_for(what: str, ready: Callable[[], bool], timeout: float, log: Callable[[], str]) -> None:
        """Wait until `ready()` holds; on timeout fail with what `log()` shows. Also for daemons
        this supervisor did not start (they daemonize themselves)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.2)
        raise DemoFailure(f"{what} was not ready after {timeout:.0f} s:\n{log()}")

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self._stop(proc)
        self.procs.clear()

    def stop(self, name: str) -> None:
        """Stop the daemon started as `name` (to start it again later)."""
        for proc in [p for p in self.procs if p.name == name]:
            self._stop(proc)
            self.procs.remove(proc)

    @staticmethod
    def _stop(proc: Proc) -> None:
        if proc.popen.poll() is None:
            try:
                os.killpg(proc.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            try:
                proc.popen.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait()
