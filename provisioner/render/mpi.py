"""MPI host lists and the fabric MPI runs on, from the inventory and the nodes' facts.

Slots per node: the node's `mpi_slots` setting, else the CPUs it reported, else 1.

Fabric: the mpi overlay's openmpi-mca-params.conf lets OpenMPI use UCX (InfiniBand, RoCE) on a
node that reported RDMA devices, and keeps it to TCP on one that reported none. A node that
has not reported (before its first boot, or facts that break the rules) gets TCP too: it works
on every network, whereas UCX told to use a device the node lacks fails the job, and the node
reports its devices at every boot, so the next overlay build follows its fabric.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from ..facts import FactsInvalid, hardware, rdma_devices
from ..inventory.model import HOSTFILE_FORMATS, Inventory, Node

FORMATS = HOSTFILE_FORMATS


def slots(node: Node, facts: Mapping[str, Any] | None) -> int:
    if node.mpi_slots:
        return int(node.mpi_slots)
    try:
        hardware(node.name, facts)  # facts that break the rules count as none
    except FactsInvalid:
        return 1
    cpus = (facts or {}).get("cpus")
    return int(cpus) if cpus is not None else 1


def partition_nodes(inv: Inventory, partition: str | None) -> list[Node]:
    """Nodes of a partition (all nodes with any partition when None), in inventory order."""
    if partition is None:
        return [n for n in inv.nodes if n.partitions]
    return [n for n in inv.nodes if partition in n.partitions]


def hostfile(
    inv: Inventory,
    facts: Mapping[str, Mapping[str, Any]],
    partition: str | None = None,
    fmt: str = "openmpi",
    only: Collection[str] | None = None,
) -> str:
    """OpenMPI hostfile (`name slots=N`) or MPICH machinefile (`name:N`); `only`: of these
    nodes alone (those Slurm can run on now), in inventory order still."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown hostfile format {fmt!r} (one of {', '.join(FORMATS)})")
    line = "{} slots={}\n" if fmt == "openmpi" else "{}:{}\n"
    nodes = [n for n in partition_nodes(inv, partition) if only is None or n.name in only]
    return "".join(line.format(n.name, slots(n, facts.get(n.name))) for n in nodes)


def rdma(node: Node, facts: Mapping[str, Any] | None) -> tuple[str, ...] | None:
    """The RDMA devices OpenMPI may use on the node: () for none, None when not known (facts
    that break the rules count as none reported)."""
    try:
        return rdma_devices(node.name, facts)
    except FactsInvalid:
        return None
