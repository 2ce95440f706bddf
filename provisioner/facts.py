"""What a node reports about itself (POST /api/v1/facts), checked by one set of rules.

The HTTP server refuses a report that breaks them (400 with the reason, to that node alone)
so it is never stored; the renderers apply them again to what is stored (a database from
before these checks, or edited by hand) and leave out that one node's facts, never the
cluster's. The rules are Slurm's, since slurm.conf is where the numbers land: slurmctld
refuses to start on a value its parser rejects, and one node's report must not stop it.

A report is a JSON object; every key is optional:

    {"slurmd_C": "NodeName=n1 CPUs=8 Boards=1 SocketsPerBoard=1 CoresPerSocket=4 ThreadsPerCore=2 RealMemory=15890",
     "cpus": 8, "memory_mb": 15890,
     "gpus": [{"file": "/dev/nvidia0", "type": "a100"}, "/dev/nvidia1"],
     "rdma": ["mlx5_0", "rxe0"]}

`slurmd_C` is the first line `slurmd -C` prints on the node; it wins over `cpus`/`memory_mb`
so the NodeName line carries exactly the node's own topology. A gpu is a device path or an
object with `file` and an optional `type`. `rdma` names the node's RDMA devices (those in
/sys/class/infiniband: InfiniBand, RoCE, Soft-RoCE); an empty list says it has none, no
`rdma` key that it has not said. Other keys are kept for templates (`facts`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Slurm 22.05 parses these node options as uint16 and keeps 65534/65535 for its NO_VAL16 and
# INFINITE16 markers ("may not exceed 65533", slurm.conf(5)); a larger CPUs= is a fatal parse
# error for slurmctld. RealMemory (MB) is a uint64 there; 2^40 MB (an exabyte, a million times
# today's largest nodes) keeps a sum over the most nodes Slurm can hold far from overflowing.
_UINT16 = 65533
LIMITS: dict[str, int] = {
    "CPUs": _UINT16,
    "Boards": _UINT16,
    "SocketsPerBoard": _UINT16,
    "Sockets": _UINT16,
    "CoresPerSocket": _UINT16,
    "ThreadsPerCore": _UINT16,
    "RealMemory": 2**40,
}
HARDWARE_KEYS = tuple(LIMITS)  # in the order `slurmd -C` prints them
_SIMPLE = {"cpus": "CPUs", "memory_mb": "RealMemory"}  # report key -> the Slurm option it fills
_DIGITS = re.compile(r"[0-9]{1,20}")  # ASCII only: int() also takes '٣' or '３', Slurm does not  # noqa: RUF003
_DEVICE = re.compile(r"^/dev/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_WORD = re.compile(r"^[A-Za-z0-9_-]+$")
# The kernel's IB_DEVICE_NAME_MAX is 64 with the NUL; names land in openmpi-mca-params.conf.
_RDMA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
MAX_RDMA = 64


class FactsInvalid(ValueError):
    """A node's facts cannot describe its hardware (names the node and the key)."""


@dataclass(frozen=True)
class Gpu:
    file: str
    type: str | None = None


@dataclass(frozen=True)
class Hardware:
    """A node's hardware as Slurm wants it: (key, value) in `slurmd -C` order, and its GPUs."""

    fields: tuple[tuple[str, str], ...]
    gpus: tuple[Gpu, ...] = ()

    def as_facts(self, node: str) -> dict[str, Any]:
        """A report that `hardware()` reads back as this very hardware: how provisioner keeps
        the hardware it accepted, checked by the same rules when read again."""
        gpus = [{"file": g.file, **({"type": g.type} if g.type else {})} for g in self.gpus]
        return {"slurmd_C": " ".join([f"NodeName={node}", *(f"{k}={v}" for k, v in self.fields)]), "gpus": gpus}


def parse_slurmd_c(text: str) -> dict[str, str]:
    """The key=value pairs of the NodeName line of `slurmd -C` output (the first line)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    pairs: dict[str, str] = {}
    for word in line.split():
        key, sep, value = word.partition("=")
        if not sep:
            raise ValueError(f"not a key=value word: {word!r}")
        pairs[key] = value
    if "NodeName" not in pairs:
        raise ValueError("no NodeName= in slurmd -C output")
    return pairs


def _count(node: str, key: str, option: str, value: Any) -> str:
    """`value` as Slurm's `option` takes it: ASCII digits (an int, or a string of them), from 1
    to the option's limit, without leading zeros (Slurm would read 010 as octal)."""
    text = str(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= LIMITS[option]:
        raise FactsInvalid(f"{node}: facts {key}={value!r} is not a whole number from 1 to {LIMITS[option]}")
    return str(int(text))


def _topology(node: str, values: Mapping[str, int]) -> None:
    """The relations slurmctld checks: Sockets and SocketsPerBoard exclusive, and CPUs is the
    node's cores (Boards x sockets x CoresPerSocket) or its threads (x ThreadsPerCore)."""
    if "Sockets" in values and "SocketsPerBoard" in values:
        raise FactsInvalid(f"{node}: slurmd_C has both Sockets= and SocketsPerBoard= (Slurm takes one)")
    if not any(k in values for k in ("Sockets", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")):
        return
    sockets = values.get("Boards", 1) * values.get("SocketsPerBoard", values.get("Sockets", 1))
    cores = sockets * values.get("CoresPerSocket", 1)
    threads = cores * values.get("ThreadsPerCore", 1)
    if threads > _UINT16 or values.get("CPUs", threads) not in (cores, threads):
        shown = " x ".join(f"{k}={values[k]}" for k in HARDWARE_KEYS[1:6] if k in values)
        raise FactsInvalid(
            f"{node}: slurmd_C CPUs={values.get('CPUs')} is neither the cores nor the threads of "
            f"{shown} ({cores}, {threads}; at most {_UINT16})"
        )


def _gpus(node: str, raw: Any) -> tuple[Gpu, ...]:
    """GPUs from facts; paths and types are checked, as they land verbatim in gres.conf."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise FactsInvalid(f"{node}: facts gpus must be a list")
    out = []
    for g in raw:
        file, gtype = (g, None) if isinstance(g, str) else (None, None)
        if isinstance(g, dict):
            file, gtype = g.get("file"), g.get("type")
        if not isinstance(file, str) or not _DEVICE.match(file):
            raise FactsInvalid(f"{node}: gpu {g!r} is neither a /dev path nor {{file: /dev/..., type: ...}}")
        if gtype is not None and (not isinstance(gtype, str) or not _WORD.match(gtype)):
            raise FactsInvalid(f"{node}: gpu type {gtype!r} is not a plain word")
        out.append(Gpu(file, gtype))
    return tuple(out)


def rdma_devices(node: str, facts: Any) -> tuple[str, ...] | None:
    """The node's RDMA devices from its facts: () when it reported none, None when it has not
    reported (no facts yet, or a reporter that predates the field); FactsInvalid when the list
    is not one of at most MAX_RDMA distinct device names."""
    if not facts:
        return None
    if not isinstance(facts, Mapping):
        raise FactsInvalid(f"{node}: facts must be a JSON object")
    raw = facts.get("rdma")
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) > MAX_RDMA:
        raise FactsInvalid(f"{node}: facts rdma must be a list of at most {MAX_RDMA} device names")
    for dev in raw:
        if not isinstance(dev, str) or not _RDMA_NAME.fullmatch(dev):
            raise FactsInvalid(f"{node}: rdma device {dev!r} is not a device name (letters, digits, _ . -)")
    if len(set(raw)) != len(raw):
        raise FactsInvalid(f"{node}: facts rdma names a device twice")
    return tuple(sorted(raw))


def check(node: str, facts: Any) -> None:
    """Every rule a report must pass before it is stored (FactsInvalid names the first broken)."""
    hardware(node, facts)
    rdma_devices(node, facts)


def hardware(node: str, facts: Any) -> Hardware | None:
    """The node's hardware from its facts, or None when it has reported nothing usable;
    FactsInvalid when anything it reported breaks the rules."""
    if not facts:
        return None
    if not isinstance(facts, Mapping):
        raise FactsInvalid(f"{node}: facts must be a JSON object")
    gpus = _gpus(node, facts.get("gpus"))
    simple = {_SIMPLE[k]: _count(node, k, _SIMPLE[k], facts[k]) for k in _SIMPLE if facts.get(k) is not None}
    if facts.get("slurmd_C"):
        if not isinstance(facts["slurmd_C"], str):
            raise FactsInvalid(f"{node}: slurmd_C must be the text slurmd -C printed")
        try:
            pairs = parse_slurmd_c(facts["slurmd_C"])
        except ValueError as e:
            raise FactsInvalid(f"{node}: slurmd_C: {e}") from None
        if "CPUs" not in pairs:
            raise FactsInvalid(f"{node}: slurmd_C has no CPUs=")
        fields = tuple((k, _count(node, k, k, pairs[k])) for k in HARDWARE_KEYS if k in pairs)
        _topology(node, {k: int(v) for k, v in fields})
        return Hardware(fields, gpus)
    if "CPUs" not in simple:
        return None
    return Hardware(tuple(simple.items()), gpus)
