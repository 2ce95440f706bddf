"""Real BMCs for the tests: OpenIPMI's ipmi_sim (its chassis_control program powers a machine
on and off, qemu or any program) and sushy-tools' Redfish emulator (fake driver)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

CHASSIS = Path(__file__).with_name("chassis.py")


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


EMU = """mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
mc_enable 0x20
"""


class _Peer:
    """A peer process in its own session: killed with all it started, as a context manager."""

    proc: subprocess.Popen

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class IpmiSim(_Peer):
    """ipmi_sim on 127.0.0.1:port with user/password (admin), powering `machine` (argv, `{boot}`
    replaced by n or c). `sol_port`: the machine's serial console as a telnet server there."""

    def __init__(
        self,
        work: Path,
        user: str = "admin",
        password: str = "secret",
        machine: Sequence[str] = ("sleep", "3600"),
        extra_conf: str = "",
    ):
        self.dir = work
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.user, self.password = user, password
        (self.dir / "machine.json").write_text(json.dumps({"argv": list(machine)}))
        prog = self.dir / "chassis"
        prog.write_text(f'#!/bin/sh\nexec {sys.executable} {CHASSIS} {self.dir} "$@"\n')
        prog.chmod(0o755)
        (self.dir / "lan.conf").write_text(
            f"""name "bmc-sim"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {self.port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{prog}"
{extra_conf}
  user 2 true "{user}" "{password}" admin 10 none md2 md5 straight
"""
        )
        (self.dir / "sim.emu").write_text(EMU)
        (self.dir / "state").mkdir(exist_ok=True)
        with open(self.dir / "ipmi_sim.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    "ipmi_sim",
                    "-c",
                    str(self.dir / "lan.conf"),
                    "-f",
                    str(self.dir / "sim.emu"),
                    "-s",
                    str(self.dir / "state"),
                    "-n",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        time.sleep(0.3)
        if self.proc.poll() is not None:
            raise RuntimeError(f"ipmi_sim exited: {(self.dir / 'ipmi_sim.log').read_text()[-2000:]}")

    def machine_pid(self) -> int | None:
        try:
            pid = int((self.dir / "pid").read_text())
        except (OSError, ValueError):
            return None
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return None
        return None if state in ("Z", "X") else pid

    def events(self) -> list[str]:
        p = self.dir / "events"
        return p.read_text().split("\n")[:-1] if p.exists() else []

    def close(self) -> None:
        pid = self.machine_pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
        super().close()


class SushyEmulator(_Peer):
    """sushy-tools' Redfish emulator with its fake driver (power and boot state only; a change
    lands 1-11 s later), HTTP on 127.0.0.1:port, basic auth with user/password."""

    def __init__(self, work: Path, user: str = "admin", password: str = "redfish-secret", tls: bool = False):
        """`tls`: https with a self-signed certificate made here, as BMCs ship."""
        import bcrypt

        self.dir = work
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(socket.SOCK_STREAM)
        self.user, self.password = user, password
        auth = self.dir / "htpasswd"
        auth.write_text(f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()}\n")
        conf = self.dir / "emulator.conf"
        conf.write_text(
            f"SUSHY_EMULATOR_AUTH_FILE = {str(auth)!r}\n"
            f"SUSHY_EMULATOR_STATE_DIR = {str(self.dir / 'state')!r}\n"
            "SUSHY_EMULATOR_FAKE_DRIVER = True\n"
        )
        tls_args: list[str] = []
        if tls:
            key, cert = self.dir / "bmc.key", self.dir / "bmc.crt"
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bmc",
                 "-keyout", str(key), "-out", str(cert)],
                check=True, capture_output=True,
            )  # fmt: skip
            tls_args = ["--ssl-certificate", str(cert), "--ssl-key", str(key)]
        env = {**os.environ, "SUSHY_EMULATOR_STATE_DIR": str(self.dir / "state")}
        with open(self.dir / "emulator.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("sushy-emulator")),
                    "--config",
                    str(conf),
                    "--fake",
                    "-i",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    *tls_args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sushy-emulator exited: {(self.dir / 'emulator.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        self.close()
        raise RuntimeError("sushy-emulator did not listen within 30 s")


def sol_qemu(extra: Sequence[str] = ()) -> tuple[list[str], str]:
    """A qemu guest (no disk, no NIC: SeaBIOS prints and retries) wired to ipmi_sim as in the
    lab notes: qemu's ipmi-bmc-extern device connects to ipmi_sim's `serial` port, and ipmi_sim
    carries the guest's serial line (a telnet server socket of qemu) over SOL. Returns qemu's
    argv and the lan.conf lines to give IpmiSim(extra_conf=...)."""
    bmc_port, serial_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-m", "128", "-nographic", "-monitor", "none", "-nic", "none",
        "-chardev", f"socket,id=ipmi0,host=127.0.0.1,port={bmc_port},reconnect=10",
        "-device", "ipmi-bmc-extern,id=bmc0,chardev=ipmi0", "-device", "isa-ipmi-kcs,bmc=bmc0",
        "-chardev", f"socket,id=ser0,host=127.0.0.1,port={serial_port},server=on,wait=on,telnet=on",
        "-serial", "chardev:ser0", *extra,
    ]  # fmt: skip
    conf = f'  serial 15 127.0.0.1 {bmc_port} codec VM\n  sol "telnet:127.0.0.1:{serial_port}" 115200\n'
    return argv, conf
