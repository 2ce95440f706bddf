"""Per-node status and boot timelines from the node-state database: shared by
`provisioner status` and the HTTP admin API so both say the same thing."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..inventory import Node
from .db import NodeStateDB

# A boot is recognised by its first fetch of a boot program: the TFTP bootloader, or the
# iPXE script when the NIC runs iPXE itself. The DHCP exchange just before belongs to it.
# ('dhcp' alone is no marker: the initramfs asks for a lease again mid-boot.)
BOOT_MARKERS = ("bootloader", "ipxe")


@dataclass(frozen=True)
class NodeStatus:
    node: str
    stage: str | None
    since: float | None
    ip: str | None
    image: str | None
    slurm: str | None
    last_seen: float | None
    runtime: str | None = None  # "latest", "behind" (its runtime overlay) or None: not reported
    detail: str | None = None  # what the latest stage said (a failure's reason)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Step:
    stage: str
    at: float
    took: float | None  # until the next stage; None for the latest one
    detail: str | None


def node_statuses(
    nodes: Iterable[Node],
    db: NodeStateDB,
    slurm: Mapping[str, str] | None = None,
    runtime: Mapping[str, str | None] | None = None,
) -> list[NodeStatus]:
    lease_ip = {r["mac"]: r["ip"] for r in db.leases()}
    return statuses_from(nodes, db.last_stages(), db.last_seen(), lease_ip, slurm, runtime)


def statuses_from(
    nodes: Iterable[Node],
    last: Mapping[str, Any],  # node -> its latest event: a row or dict with stage, at, detail
    seen: Mapping[str, float],
    lease_ip: Mapping[str, str],
    slurm: Mapping[str, str] | None = None,
    runtime: Mapping[str, str | None] | None = None,
) -> list[NodeStatus]:
    """The rows from each node's latest event (stage, at, detail), when it was last heard
    from and the DHCP leases (mac -> ip): node_statuses reads them from the database, the
    web console keeps them up to date in memory."""
    out = []
    for n in nodes:
        ev = last.get(n.name)
        ip = n.ip or next((lease_ip[i.mac] for i in n.interfaces if i.mac and i.mac in lease_ip), None)
        out.append(
            NodeStatus(
                n.name,
                ev["stage"] if ev else None,
                ev["at"] if ev else None,
                str(ip) if ip else None,
                n.image,
                (slurm or {}).get(n.name),
                seen.get(n.name),
                (runtime or {}).get(n.name),
                ev["detail"] if ev else None,
            )
        )
    return out


def runtime_states(
    nodes: Iterable[Node], reported: Mapping[str, str], published: Callable[[str], str | None]
) -> dict[str, str | None]:
    """node -> "latest" (its agent reported the published runtime archive's hash), "behind",
    or None (no agent has reported, or the node has no runtime archive)."""
    out: dict[str, str | None] = {}
    for n in nodes:
        have, want = reported.get(n.name), published(n.name) if n.name in reported else None
        out[n.name] = None if have is None or want is None else "latest" if have == want else "behind"
    return out


def latest_boot(events: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The events since the node last started to boot (all of them if no boot marker)."""
    start, prev = 0, None
    for i, e in enumerate(events):
        stage = e["stage"]
        if stage in BOOT_MARKERS and stage != prev and not (stage == "ipxe" and prev == "bootloader"):
            start = i
        if stage != "dhcp":
            prev = stage
    while start > 0 and events[start - 1]["stage"] == "dhcp":
        start -= 1
    return list(events[start:])


def timeline(events: Sequence[Mapping[str, Any]]) -> list[Step]:
    return [
        Step(e["stage"], e["at"], events[i + 1]["at"] - e["at"] if i + 1 < len(events) else None, e["detail"])
        for i, e in enumerate(events)
    ]
