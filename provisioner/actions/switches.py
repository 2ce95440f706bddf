"""Which switch port a MAC is plugged into, read from the access switches of
cluster.discovery over SNMP (pysnmp), and the name that port gives a new node.

A switch's forwarding table is Q-BRIDGE-MIB dot1qTpFdbPort (per VLAN) or, where that is
empty, BRIDGE-MIB dot1dTpFdbPort; a bridge port is mapped to its interface through
dot1dBasePortIfIndex and IF-MIB ifName where the switch has them. A port that learned more
MACs than the switch's `macs_per_port`, or that is listed in `uplinks`, leads to other
switches and names nothing. Every read has a timeout and a deadline: a switch that does not
answer, or answers garbage, is one log line and the caller falls back to its name range."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pyasn1.error import PyAsn1Error
from pyasn1.type.univ import Integer, OctetString
from pysnmp.error import PySnmpError
from pysnmp.hlapi.v1arch.asyncio import (
    CommunityData,
    ObjectIdentity,
    ObjectType,
    SnmpDispatcher,
    UdpTransportTarget,
    bulk_walk_cmd,
    get_cmd,
    walk_cmd,
)

from ..inventory.model import Discovery, Switch
from ..inventory.portname import ifname_label, node_name
from ..logs import kv

log = logging.getLogger("provisioner.switches")

DOT1Q_TP_FDB_PORT = (1, 3, 6, 1, 2, 1, 17, 7, 1, 2, 2, 1, 2)  # .fdbId.mac(6) = bridge port
DOT1D_TP_FDB_PORT = (1, 3, 6, 1, 2, 1, 17, 4, 3, 1, 2)  # .mac(6) = bridge port
DOT1D_BASE_PORT_IF_INDEX = (1, 3, 6, 1, 2, 1, 17, 1, 4, 1, 2)  # .port = ifIndex
IF_NAME = (1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 1)  # .ifIndex = ifName
MAX_ROWS = 100_000  # a forwarding table larger than this is garbage, not read to its end
DEADLINE = 30  # seconds for reading one switch, whatever it answers


class SwitchError(Exception):
    """A switch that could not be read: unreachable, refusing, or answering garbage."""


@dataclass(frozen=True)
class SwitchPort:
    switch: Switch
    port: int  # the bridge port (the front-panel number on most access switches)
    ifindex: int | None
    ifname: str | None

    @property
    def where(self) -> str:
        return f"{self.switch.address} port {self.port}" + (f" ({self.ifname})" if self.ifname else "")

    def name(self, pattern: str) -> str:
        """The node name `pattern` gives this port (ValueError saying why it gives none)."""
        label = ifname_label(self.ifname) if self.ifname else None
        return node_name(pattern, self.switch.fields(self.port, self.ifindex, label or None))


def community(sw: Switch) -> str:
    """The switch's community, from its root-only file when it has one."""
    if sw.community_file is None:
        return sw.community or "public"
    try:
        fd = os.open(sw.community_file, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO does not hang it
    except OSError as e:
        raise SwitchError(f"community_file {sw.community_file}: {e.strerror}") from None
    with os.fdopen(fd) as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise SwitchError(f"community_file {sw.community_file} is not a file")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SwitchError(f"community_file {sw.community_file} is readable by others: chmod 600 it")
        text = f.read(4096).strip()
    if not text:
        raise SwitchError(f"community_file {sw.community_file} is empty")
    return text


class _Reader:
    """One switch's SNMP session: walks and gets with the switch's timeout, one retry."""

    def __init__(self, sw: Switch, target: UdpTransportTarget):
        self.sw = sw
        self.target = target
        self.auth = CommunityData(community(sw), mpModel=0 if sw.version == "1" else 1)
        self.dispatcher = SnmpDispatcher()

    def close(self) -> None:
        self.dispatcher.transport_dispatcher.close_dispatcher()

    def _failed(self, indication: Any, status: Any) -> SwitchError:
        if indication:
            tries = self.target.retries + 1
            return SwitchError(f"no valid SNMP answer in {self.sw.timeout} s ({tries} tries): {indication}")
        return SwitchError(f"the agent answered {status.prettyPrint()}")

    async def walk(self, column: tuple[int, ...]) -> dict[tuple[int, ...], Any]:
        """The column's rows by index (the OID after `column`)."""
        start = ObjectType(ObjectIdentity(column))
        opts = {"lexicographicMode": False, "lookupMib": False, "maxRows": MAX_ROWS}
        if self.sw.version == "1":
            rows = walk_cmd(self.dispatcher, self.auth, self.target, start, **opts)
        else:
            rows = bulk_walk_cmd(self.dispatcher, self.auth, self.target, 0, 50, start, **opts)
        out: dict[tuple[int, ...], Any] = {}
        async for indication, status, _, binds in rows:
            if indication or status:
                await rows.aclose()  # a timed-out walk would otherwise ask again forever
                raise self._failed(indication, status)
            for oid, value in binds:
                oid = tuple(oid)
                if oid[: len(column)] == column:
                    out[oid[len(column) :]] = value
        return out

    async def get(self, column: tuple[int, ...], index: int) -> Any:
        """One value, None where the switch has no such object."""
        req = ObjectType(ObjectIdentity((*column, index)))
        indication, status, _, binds = await get_cmd(self.dispatcher, self.auth, self.target, req, lookupMib=False)
        if indication:
            raise self._failed(indication, status)
        if status:  # SNMPv1's noSuchName
            return None
        value = binds[0][1]
        return value if isinstance(value, (Integer, OctetString)) else None


def _whole(value: Any, what: str) -> int:
    if not isinstance(value, Integer):
        raise SwitchError(f"garbage answer: {what} is {type(value).__name__} {value.prettyPrint()!r}, not a number")
    return int(value)


def forwarding(rows: dict[tuple[int, ...], Any], table: str, key: int) -> dict[str, set[int]]:
    """MAC -> the bridge ports it was learned on, from a forwarding-table column whose index
    ends in the 6 bytes of the MAC (`key` index parts in all)."""
    macs: dict[str, set[int]] = {}
    for index, value in rows.items():
        if len(index) != key or not all(0 <= b <= 255 for b in index[-6:]):
            raise SwitchError(f"garbage answer: {table}.{'.'.join(map(str, index))} is no MAC address index")
        port = _whole(value, table)
        if port > 0:  # 0: learned, but the bridge does not know where
            macs.setdefault(":".join(f"{b:02x}" for b in index[-6:]), set()).add(port)
    return macs


async def _locate(sw: Switch, mac: str) -> SwitchPort | None:
    target = await UdpTransportTarget.create((str(sw.address), sw.port), timeout=sw.timeout, retries=1)
    reader = _Reader(sw, target)
    try:
        macs = forwarding(await reader.walk(DOT1Q_TP_FDB_PORT), "dot1qTpFdbPort", 7)
        if not macs:
            macs = forwarding(await reader.walk(DOT1D_TP_FDB_PORT), "dot1dTpFdbPort", 6)
        ports = macs.get(mac, set())
        if len(ports) != 1:
            if ports:
                log.warning("MAC learned on several ports; names no node", extra=kv(switch=sw.address, mac=mac))
            return None
        (port,) = ports
        learned = sum(1 for p in macs.values() if port in p)
        if learned > sw.macs_per_port:
            log.info("MAC seen on an uplink port", extra=kv(switch=sw.address, port=port, macs=learned, mac=mac))
            return None
        ifindex = await reader.get(DOT1D_BASE_PORT_IF_INDEX, port)
        ifindex = None if ifindex is None else _whole(ifindex, "dot1dBasePortIfIndex")
        ifname = None if ifindex is None else await reader.get(IF_NAME, ifindex)
        name = None if ifname is None else bytes(ifname).decode("utf-8", "replace")
        if str(port) in sw.uplinks or name in sw.uplinks:
            log.info("MAC seen on a listed uplink", extra=kv(switch=sw.address, port=port, mac=mac))
            return None
        return SwitchPort(sw, port, ifindex, name)
    finally:
        reader.close()


async def _located(sw: Switch, mac: str) -> SwitchPort | SwitchError | None:
    """_locate within the deadline, a failure as a SwitchError."""
    try:
        return await asyncio.wait_for(_locate(sw, mac), DEADLINE)
    except SwitchError as e:
        return e
    except TimeoutError:
        return SwitchError(f"not read within {DEADLINE} s")
    except (PySnmpError, PyAsn1Error, OSError, UnicodeError) as e:
        return SwitchError(f"{type(e).__name__}: {e}")


async def _locate_all(switches: Sequence[Switch], mac: str) -> list[SwitchPort | SwitchError | None]:
    """Every switch asked at once: a lookup takes as long as the slowest switch, not their sum."""
    return list(await asyncio.gather(*(_located(sw, mac) for sw in switches)))


def locate(sw: Switch, mac: str) -> SwitchPort | None:
    """The access port of `sw` that learned `mac`; None when it is not there (or only on an
    uplink). SwitchError when the switch cannot be read within its timeouts."""
    (got,) = asyncio.run(_locate_all([sw], mac))
    if isinstance(got, SwitchError):
        raise got
    return got


def port_name(policy: Discovery, mac: str) -> str | None:
    """The name `policy.pattern` gives the switch port `mac` is plugged into; None, with a log
    line saying why, when no switch names it (the caller then takes a name from `names`)."""
    found: list[SwitchPort] = []
    for sw, got in zip(policy.switches, asyncio.run(_locate_all(policy.switches, mac)), strict=True):
        if isinstance(got, SwitchError):
            log.warning("switch not read", extra=kv(switch=f"{sw.address}:{sw.port}", mac=mac, error=got))
        elif got is not None:
            found.append(got)
    fallback = f"a name from {policy.names}" if policy.names else "no name (cluster.discovery.names is empty)"
    if len(found) != 1:
        why = "on no access port of a switch" if not found else "on access ports of several switches"
        log.warning(f"MAC {why}; it gets {fallback}", extra=kv(mac=mac, ports=[p.where for p in found] or None))
        return None
    try:
        name = found[0].name(policy.pattern)
    except ValueError as e:
        log.warning(f"switch port gives no name; it gets {fallback}", extra=kv(mac=mac, port=found[0].where, error=e))
        return None
    log.info("named by switch port", extra=kv(mac=mac, port=found[0].where, node=name))
    return name
