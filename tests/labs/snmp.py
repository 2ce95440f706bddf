"""A real SNMP agent serving access switches' forwarding tables: snmpsim's `snmpsimd` on a free
loopback UDP port, one .snmprec data file per community (a community is a switch).

`fdb()` writes a switch's table as BRIDGE-MIB (dot1dTpFdbPort) or Q-BRIDGE-MIB (dot1qTpFdbPort,
per VLAN) rows, with dot1dBasePortIfIndex and IF-MIB ifName for its ports; `Agent.serve()`
(re)starts the agent on the tables given, as a switch whose table changed answers anew."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from .net import Netns, terminate

SNMPSIMD = "/usr/bin/snmpsimd"
Record = tuple[str, int | str, object]  # OID, snmprec tag (2 integer, 4 string, 4x hex), value

DOT1Q_TP_FDB_PORT = "1.3.6.1.2.1.17.7.1.2.2.1.2"
DOT1D_TP_FDB_PORT = "1.3.6.1.2.1.17.4.3.1.2"
DOT1D_BASE_PORT_IF_INDEX = "1.3.6.1.2.1.17.1.4.1.2"
IF_NAME = "1.3.6.1.2.1.31.1.1.1.1"


def mac_index(mac: str) -> str:
    return ".".join(str(int(b, 16)) for b in mac.split(":"))


def fdb(
    macs: Mapping[str, int],
    *,
    qbridge: bool = False,
    vlans: Iterable[int] = (1,),
    ifnames: Mapping[int, str] | None = None,
) -> list[Record]:
    """The rows of a switch where each MAC of `macs` was learned on its bridge port; bridge
    port P is ifIndex 1000+P, named ifnames[P] (default: swpP)."""
    rows: list[Record] = [("1.3.6.1.2.1.1.1.0", 4, "provisioner test switch")]
    for mac, port in macs.items():
        if qbridge:
            rows += [(f"{DOT1Q_TP_FDB_PORT}.{vlan}.{mac_index(mac)}", 2, port) for vlan in vlans]
        else:
            rows.append((f"{DOT1D_TP_FDB_PORT}.{mac_index(mac)}", 2, port))
    for port in sorted(set(macs.values())):
        rows.append((f"{DOT1D_BASE_PORT_IF_INDEX}.{port}", 2, 1000 + port))
        rows.append((f"{IF_NAME}.{1000 + port}", 4, (ifnames or {}).get(port, f"swp{port}")))
    return rows


def snmprec(rows: Iterable[Record]) -> str:
    """snmpsim's data file: one `OID|TAG|VALUE` line per object, in OID order."""
    ordered = sorted(rows, key=lambda r: tuple(int(p) for p in r[0].split(".")))
    return "".join(f"{oid}|{tag}|{value}\n" for oid, tag, value in ordered)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Agent:
    """snmpsimd at `address`:`port`: on a free loopback port, or in a namespace of the test's
    (a switch's management address on the lab's network) on 161. It drops to nobody, so its
    files live in a world-readable directory of its own (not pytest's root-only tmp_path),
    removed on exit."""

    def __init__(self, ns: Netns | None = None, address: str = "127.0.0.1") -> None:
        self.ns, self.address = ns, address
        self.port = free_udp_port() if ns is None else 161
        self.dir = Path(tempfile.mkdtemp(prefix="snmp-agent-"))
        self.dir.chmod(0o755)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def serve(self, tables: Mapping[str, Iterable[Record] | str]) -> None:
        """Serve `tables` (community: rows, or a data file's raw text), restarting the agent."""
        self.stop()
        data, cache = self.dir / "data", self.dir / "cache"
        for d in (data, cache):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(mode=0o755)
        shutil.chown(cache, "nobody", "nogroup")
        for community, rows in tables.items():
            (data / f"{community}.snmprec").write_text(rows if isinstance(rows, str) else snmprec(rows))
        log = self.dir / "log"
        cmd = [
            SNMPSIMD,
            f"--data-dir={data}",
            f"--cache-dir={cache}",
            f"--agent-udpv4-endpoint={self.address}:{self.port}",
            "--process-user=nobody",
            "--process-group=nogroup",
        ]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd if self.ns is None else self.ns.prefix(cmd), stdout=out, stderr=out)
        deadline = time.time() + 30
        while "Listening at UDP/IPv4 endpoint" not in log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"snmpsimd did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
            self.proc = None
