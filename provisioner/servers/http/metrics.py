"""Prometheus metrics. Transfers, nodes by stage, boot figures and build durations are read
from the node-state database at scrape time, because TFTP, DHCP and the builders record there
(the builders from other processes); live in-process figures come from callables.

Per-node boot figures are aggregated, never labelled by node, so a 10,000-node cluster costs
the same few series as a small one: each node's latest boot feeds a histogram of stage
durations, and each node that failed since it last finished a boot (a reboot loop included)
counts once, at the stage and for the reason of its latest failure. Only drained Slurm nodes get a
series of their own (an alert must name them)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from ipaddress import IPv4Address

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from ...inventory import Inventory
from ...nodestate import NodeStateDB
from ...nodestate.summary import BOOT_MARKERS
from ..stages import stage_of

OK = "ok"
SUCCESS = (OK, "size probe")  # transfer outcomes that are no failure (TFTP's tsize probe)
BOOT_SLACK = 120.0  # seconds before a node's latest boot marker that its DHCP and bootloader may be
EARLY = ("dhcp", "bootloader")
STAGE_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# Stages that show a boot finished: a failure before the latest of them is over.
BOOTED = ("switch_root", "registered", "idle")
# Events a node's boot reports when it fails: the stage it failed at and the reason.
FAILURE_EVENTS = {"failed": ("initramfs", "reported failure"), "facts-rejected": ("registered", "facts rejected")}
DRAINED = ("drained", "draining", "drain")


def failure_stage(path: str) -> str:
    """The boot stage a failed transfer of `path` belongs to."""
    if path.endswith(".ipxe"):
        return "ipxe"
    if path.startswith("/overlays/"):
        return "overlay"
    return stage_of(path) or "transfer"


def failure_reason(outcome: str) -> str:
    """A transfer outcome as a label from a small set: "refused: DETAIL" is "refused"."""
    return outcome.partition(":")[0][:40]


class StateCollector(Collector):
    def __init__(
        self,
        db: NodeStateDB | None,
        inventory: Callable[[], Inventory],
        dhcp_packets: Callable[[], Mapping[str, int]] | None = None,
        in_flight: Callable[[], int] | None = None,
        slurm_states: Callable[[], Mapping[str, str] | None] | None = None,
    ):
        self.db = db
        self.inventory = inventory
        self.dhcp_packets = dhcp_packets
        self.in_flight = in_flight
        self.slurm_states = slurm_states

    def collect(self) -> Iterator[Metric]:
        if self.db is not None:
            yield from self._transfers()
            yield self._stages()
            yield self._builds()
            yield from self._boots()
            yield from self._dynamic_range()
        if self.slurm_states is not None:
            yield from self._slurm(self.slurm_states() or {})
        if self.dhcp_packets is not None:
            packets = CounterMetricFamily("provisioner_dhcp_packets", "DHCP packets by message type", labels=["type"])
            for kind, n in sorted(self.dhcp_packets().items()):
                packets.add_metric([kind], n)
            yield packets
        if self.in_flight is not None:
            yield GaugeMetricFamily(
                "provisioner_http_in_flight", "HTTP file transfers in progress", value=self.in_flight()
            )

    def _transfers(self) -> Iterator[Metric]:
        count = CounterMetricFamily(
            "provisioner_transfers", "Transfers by protocol and outcome", labels=["protocol", "outcome"]
        )
        sent = CounterMetricFamily("provisioner_transfer_bytes", "Bytes sent by protocol", labels=["protocol"])
        errors = CounterMetricFamily(
            "provisioner_transfer_errors", "Transfers that did not complete", labels=["protocol"]
        )
        bytes_by: dict[str, int] = {}
        errors_by: dict[str, int] = {}
        for r in self.db.transfer_totals():  # type: ignore[union-attr]
            count.add_metric([r["protocol"], r["outcome"]], r["n"])
            bytes_by[r["protocol"]] = bytes_by.get(r["protocol"], 0) + r["bytes"]
            errors_by.setdefault(r["protocol"], 0)
            if r["outcome"] != OK:
                errors_by[r["protocol"]] += r["n"]
        for proto in sorted(bytes_by):
            sent.add_metric([proto], bytes_by[proto])
            errors.add_metric([proto], errors_by[proto])
        return iter((count, sent, errors))

    def _stages(self) -> Metric:
        nodes = GaugeMetricFamily("provisioner_nodes", "Inventory nodes by their latest boot stage", labels=["stage"])
        last = self.db.last_stages()  # type: ignore[union-attr]
        by_stage: dict[str, int] = {}
        for n in self.inventory().nodes:
            stage = last[n.name]["stage"] if n.name in last else "none"
            by_stage[stage] = by_stage.get(stage, 0) + 1
        for stage in sorted(by_stage):
            nodes.add_metric([stage], by_stage[stage])
        return nodes

    def _builds(self) -> Metric:
        builds = SummaryMetricFamily(
            "provisioner_build_seconds", "Artifact build durations (overlays, images)", labels=["kind"]
        )
        for r in self.db.build_totals():  # type: ignore[union-attr]
            builds.add_metric([r["kind"]], r["n"], r["seconds"])
        return builds

    def _boots(self) -> Iterator[Metric]:
        durations = HistogramMetricFamily(
            "provisioner_boot_stage_seconds",
            "Time from each boot stage to the next in every node's latest boot",
            labels=["stage"],
        )
        failures = GaugeMetricFamily(
            "provisioner_boot_failures",
            "Nodes that failed since they last finished a boot, by the stage of their latest failure and its reason",
            labels=["stage", "reason"],
        )
        db = self.db
        assert db is not None
        latest: dict[str, tuple[float, tuple[str, str]]] = {}  # node -> its latest failure
        for r in db.failures_since_booted(BOOTED, tuple(FAILURE_EVENTS), SUCCESS):
            where = (
                FAILURE_EVENTS[r["what"]]
                if r["kind"] == "event"
                else (failure_stage(r["what"]), failure_reason(r["outcome"]))
            )
            if r["at"] >= latest.get(r["node"], (0.0, where))[0]:
                latest[r["node"]] = (r["at"], where)
        failing: dict[tuple[str, str], int] = {}
        for _at, where in latest.values():
            failing[where] = failing.get(where, 0) + 1
        for r in db.boot_stage_durations(BOOT_MARKERS, EARLY, BOOT_SLACK, STAGE_BUCKETS):
            buckets = [(str(le), r[f"b{i}"]) for i, le in enumerate(STAGE_BUCKETS)]
            durations.add_metric([r["stage"]], [*buckets, ("+Inf", r["n"])], r["total"])
        for (stage, reason), count in sorted(failing.items()):
            failures.add_metric([stage, reason], count)
        return iter((durations, failures))

    def _dynamic_range(self) -> Iterator[Metric]:
        """The dynamic range's size and its addresses leased now (both 0 without a range)."""
        size = leased = 0
        span = self.inventory().cluster.network.dynamic_range
        if span is not None:
            size = int(span[1]) - int(span[0]) + 1
            now, db = time.time(), self.db
            assert db is not None
            leased = len([r for r in db.leases() if r["expires"] > now and span[0] <= IPv4Address(r["ip"]) <= span[1]])
        yield GaugeMetricFamily("provisioner_dhcp_dynamic_addresses", "Addresses in the DHCP dynamic range", value=size)
        yield GaugeMetricFamily(
            "provisioner_dhcp_dynamic_leased", "Addresses of the DHCP dynamic range leased now", value=leased
        )

    def _slurm(self, states: Mapping[str, str]) -> Iterator[Metric]:
        """Inventory nodes by Slurm state ("unknown": Slurm does not list it or does not
        answer), and one series for each drained node, for the alert to name it."""
        by_state: dict[str, int] = {}
        drained = GaugeMetricFamily(
            "provisioner_slurm_node_drained", "1 for each node Slurm holds drained or draining", labels=["node"]
        )
        for n in self.inventory().nodes:
            state = states.get(n.name, "unknown")
            by_state[state] = by_state.get(state, 0) + 1
            if state.rstrip("*~#!%$@^-") in DRAINED:
                drained.add_metric([n.name], 1)
        nodes = GaugeMetricFamily("provisioner_slurm_nodes", "Inventory nodes by Slurm state", labels=["state"])
        for state in sorted(by_state):
            nodes.add_metric([state], by_state[state])
        return iter((nodes, drained))
