"""ipmi_sim's chassis_control program: `chassis.py STATEDIR get|set PARM [VALUE]...` (some
ipmi_sim builds put the MC address before get|set).

Power on starts the machine whose argv is in STATEDIR/machine.json (qemu, or any program),
power off kills it; `boot` pxe|default is kept in STATEDIR/boot and given to the machine as
`{boot}` in its argv (qemu's -boot order=n). Answers fast: ipmi_sim resends after ~1 s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def running(d: Path) -> int | None:
    try:
        pid = int((d / "pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def start(d: Path) -> None:
    if running(d):
        return
    spec = json.loads((d / "machine.json").read_text())
    boot = (d / "boot").read_text().strip() if (d / "boot").exists() else "default"
    argv = [a.replace("{boot}", "n" if boot == "pxe" else "c") for a in spec["argv"]]
    with open(d / "machine.log", "ab") as log:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    (d / "pid").write_text(str(p.pid))
    with open(d / "events", "a") as f:
        f.write(f"start {boot}\n")


def stop(d: Path) -> None:
    pid = running(d)
    if pid is None:
        return
    os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        if not alive(pid):
            break
        time.sleep(0.01)
    with open(d / "events", "a") as f:
        f.write("stop\n")


def main(argv: list[str]) -> None:
    d = Path(argv[0])
    args = argv[1:]
    while args and args[0] not in ("get", "set"):
        args = args[1:]
    op, rest = args[0], args[1:]
    if op == "get":
        for parm in rest:
            if parm == "power":
                print(f"power:{1 if running(d) else 0}")
            elif parm == "boot":
                print(f"boot:{(d / 'boot').read_text().strip() if (d / 'boot').exists() else 'default'}")
        return
    for parm, value in zip(rest[::2], rest[1::2], strict=False):
        if parm == "power":
            start(d) if value == "1" else stop(d)
        elif parm == "reset" and value == "1":
            stop(d)
            start(d)
        elif parm == "boot":
            (d / "boot").write_text(value)


if __name__ == "__main__":
    main(sys.argv[1:])
