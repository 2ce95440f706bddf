"""External commands an artifact build runs: their output goes to the progress callback as it
comes, and a failure is a UserError that ends with the command's last lines."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from ..errors import UserError

Progress = Callable[[str], None]


def run_logged(argv: list[str], progress: Progress, what: str) -> None:
    """Run `argv`, its stdout and stderr line by line to `progress`; fail naming `what`."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail = [*tail, line][-5:]
        progress(line)
    if proc.wait() != 0:
        raise UserError(f"{what} failed (exit {proc.returncode}): {' / '.join(tail)}")
