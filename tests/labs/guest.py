"""Boot a qemu guest (provisioner.demo.qemu.Guest) for a test and read its serial console.

The guest's serial line is qemu's stdio (leave Guest.serial unset): its output goes to the
console file and the test can type on it."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from provisioner.demo.qemu import Guest

from .net import Netns


def boot(
    guest: Guest,
    console: Path,
    until: str | tuple[str, ...],
    timeout: float,
    ns: Netns | None = None,
    send: Sequence[tuple[str, str]] = (),
    watch: Callable[[str], None] | None = None,
) -> str:
    """Run `guest` (inside `ns` when given, where its tap lives) until one of `until` shows on
    its console, it exits (it powers off, or reboots under -no-reboot) or `timeout` passes;
    it is killed then. Returns the console text.

    `send` types on the console: for each (after, text) in turn, once the console shows
    `after` (past where the previous one was seen), write `text`; `until` counts only after
    the last of them. `watch` is called with the console text at every look (to act on what
    the guest shows while it runs); what it raises stops the guest and the test."""
    wanted = (until,) if isinstance(until, str) else until
    argv = guest.prepare()
    pending, seen = list(send), 0
    with open(console, "wb") as out:
        proc = subprocess.Popen(
            ns.prefix(argv) if ns else argv,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    assert proc.stdin is not None
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            text = console.read_bytes()
            if watch is not None:
                watch(text.decode(errors="replace"))
            if pending:
                after, typed = pending[0]
                if (at := text.find(after.encode(), seen)) >= 0:
                    seen = at + len(after)
                    try:
                        proc.stdin.write(typed.encode())
                        proc.stdin.flush()
                    except BrokenPipeError:  # the guest is gone: the loop ends
                        pass
                    pending.pop(0)
                    continue
            elif any(w.encode() in text[seen:] for w in wanted):
                break
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdin.close()
    return console.read_text(errors="replace")
