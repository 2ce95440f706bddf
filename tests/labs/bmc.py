"""Real BMCs for the tests: OpenIPMI's ipmi_sim (its chassis_control program powers a machine
on and off, qemu or any program) and sushy-tools' Redfish emulator (its fake driver, or its
libvirt driver over a libvirtd of our own running real qemu guests)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

CHASSIS = Path(__file__).with_name("chassis.py")
SERIAL_REDFISH = Path(__file__).with_name("sushy_serial.py")


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
    """ipmi_sim on address:port (default 127.0.0.1 and a free port) with user/password
    (admin), powering `machine` (argv, `{boot}` replaced by n or c); `extra_conf`: more
    lan.conf lines (sol_qemu's carry the machine's serial console over SOL)."""

    def __init__(
        self,
        work: Path,
        user: str = "admin",
        password: str = "secret",
        machine: Sequence[str] = ("sleep", "3600"),
        extra_conf: str = "",
        address: str = "127.0.0.1",
        port: int | None = None,
    ):
        self.dir = work
        self.dir.mkdir(parents=True, exist_ok=True)
        self.address, self.port = address, port or free_port()
        self.user, self.password = user, password
        (self.dir / "machine.json").write_text(json.dumps({"argv": list(machine)}))
        prog = self.dir / "chassis"
        prog.write_text(f'#!/bin/sh\nexec {sys.executable} {CHASSIS} {self.dir} "$@"\n')
        prog.chmod(0o755)
        (self.dir / "lan.conf").write_text(
            f"""name "bmc-sim"
set_working_mc 0x20
  startlan 1
    addr {address} {self.port}
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
    """sushy-tools' Redfish emulator, HTTP on 127.0.0.1:port, basic auth with user/password: its
    fake driver (power and boot state only; a change lands 1-11 s later), or with `libvirt_uri`
    its libvirt driver, whose systems are that libvirtd's domains."""

    def __init__(
        self,
        work: Path,
        user: str = "admin",
        password: str = "redfish-secret",
        tls: bool = False,
        libvirt_uri: str | None = None,
        serial_console: Sequence[str] = (),
        address: str = "127.0.0.1",
    ):
        """`tls`: https with a self-signed certificate made here, as BMCs ship. `serial_console`:
        its managers offer the serial console over these protocols (labs/sushy_serial.py)."""
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
            + ("SUSHY_EMULATOR_FAKE_DRIVER = True\n" if libvirt_uri is None else "")
        )
        driver = ["--fake"] if libvirt_uri is None else ["--libvirt-uri", libvirt_uri]
        exe = [str(Path(sys.executable).with_name("sushy-emulator"))]
        if serial_console:
            exe = [sys.executable, str(SERIAL_REDFISH), ",".join(serial_console)]
        self.address = address
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
                    *exe,
                    "--config",
                    str(conf),
                    *driver,
                    "-i",
                    address,
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
                socket.create_connection((address, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        self.close()
        raise RuntimeError("sushy-emulator did not listen within 30 s")


# A tiny machine for libvirt: TCG (domain type qemu), 64 MiB, an empty disk (SeaBIOS finds
# nothing to boot and retries), no NIC, so the guest sends nothing anywhere.
DOMAIN = """<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='{disk}'/><target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='{serial}'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""


class Libvirtd(_Peer):
    """A libvirtd of our own: session mode, as the unprivileged user `nobody` (root's libvirtd
    would be the host's system daemon, and there is no systemd here to run one), with its home,
    runtime and cache in a scratch folder; clients connect to its socket (`uri`), root too.
    `domain(name)` defines a tiny TCG guest; close() ends the guests with the daemon."""

    USER = "nobody"

    def __init__(self) -> None:
        pw = pwd.getpwnam(self.USER)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        # Not under pytest's tmp_path: its 0700 folders are closed to the daemon's user.
        self.dir = Path(tempfile.mkdtemp(prefix="bmc-libvirt-"))
        for d in ("run", "config", "cache", "config/libvirt"):
            (self.dir / d).mkdir(mode=0o700)
        # qemu's output to a file of its own, not through virtlogd, which libvirtd would start
        # as a daemon of its own that outlives it
        (self.dir / "config/libvirt/qemu.conf").write_text('stdio_handler = "file"\n')
        for p in (self.dir, *self.dir.rglob("*")):
            os.chown(p, self.uid, self.gid)
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.dir),
            "XDG_RUNTIME_DIR": str(self.dir / "run"),
            "XDG_CONFIG_HOME": str(self.dir / "config"),
            "XDG_CACHE_HOME": str(self.dir / "cache"),
        }
        self.socket = self.dir / "run/libvirt/libvirt-sock"
        self.uri = f"qemu:///session?socket={self.socket}"
        with open(self.dir / "libvirtd.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "libvirtd"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=self.dir,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while self.virsh("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = (self.dir / "libvirtd.log").read_text()[-3000:]
                self.close()
                raise RuntimeError(f"libvirtd did not start: {text}")
            time.sleep(0.3)

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True, check=check, timeout=60)

    def domain(self, name: str) -> str:
        """Defines a tiny guest (shut off); returns its UUID."""
        ident = str(uuid.uuid4())
        disk = self.dir / f"{name}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
        os.chown(disk, self.uid, self.gid)
        xml = self.dir / f"{name}.xml"
        xml.write_text(DOMAIN.format(name=name, uuid=ident, disk=disk, serial=self.dir / f"{name}.serial"))
        self.virsh("define", str(xml))
        return ident

    def qemu_pid(self, name: str) -> int | None:
        """The guest's qemu process, if it runs (libvirt's pid file, checked against /proc)."""
        try:
            pid = int((self.dir / f"config/libvirt/qemu/run/{name}.pid").read_text())
        except (OSError, ValueError):
            try:
                pid = int((self.dir / f"run/libvirt/qemu/run/{name}.pid").read_text())
            except (OSError, ValueError):
                return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if f"guest={name}".encode() in cmdline else None

    def close(self) -> None:
        # qemu runs in a session of its own (libvirt daemonizes it): end the guests first.
        guests = [p.name[: -len(".xml")] for p in self.dir.glob("*.xml")]
        pids = [pid for pid in map(self.qemu_pid, guests) if pid]
        if self.proc.poll() is None:
            for name in guests:
                self.virsh("destroy", name, check=False)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        super().close()
        shutil.rmtree(self.dir, ignore_errors=True)


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


def read_until(proc: subprocess.Popen, needle: bytes, timeout: float) -> bytes:
    """What `proc` printed until `needle` (fails the test if it never does)."""
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    got = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and needle not in got:
        chunk = proc.stdout.read()
        if chunk:
            got += chunk
        elif proc.poll() is not None:
            break
        time.sleep(0.2)
    # stderr only once the process ended: reading it before would wait for that
    err = proc.stderr.read() if proc.stderr and proc.poll() is not None else b"(still running)"
    assert needle in got, f"{needle!r} not seen: {got[-2000:]!r} (stderr: {err!r})"
    return got


def console_shows(cli, node: str, power_on: Callable[[], object], needle: bytes, timeout: float) -> None:
    """`provisioner console NODE` attached while `power_on()` starts the machine: it shows
    `needle`, and `~.` at a line start detaches it with exit status 0."""
    env = {**os.environ, "PROVISIONER_SITE": str(cli.site), "PROVISIONER_STATE": str(cli.state)}
    con = subprocess.Popen(
        [cli.exe, "console", node], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        power_on()
        read_until(con, needle, timeout)
        assert con.stdin is not None
        con.stdin.write(b"\r~.")
        con.stdin.flush()
        assert con.wait(timeout=30) == 0
    finally:
        if con.poll() is None:
            con.kill()
        con.wait()
