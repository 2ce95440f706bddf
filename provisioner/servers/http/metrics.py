"""Prometheus metrics. Transfers, nodes by stage and build durations are read from the
node-state database at scrape time, because TFTP, DHCP and the builders record there (the
builders from other processes); live in-process figures come from callables."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from ...inventory import Inventory
from ...nodestate import NodeStateDB

OK = "ok"


class StateCollector(Collector):
    def __init__(
        self,
        db: NodeStateDB | None,
        inventory: Callable[[], Inventory],
        dhcp_packets: Callable[[], Mapping[str, int]] | None = None,
        in_flight: Callable[[], int] | None = None,
    ):
        self.db = db
        self.inventory = inventory
        self.dhcp_packets = dhcp_packets
        self.in_flight = in_flight

    def collect(self) -> Iterator[Metric]:
        if self.db is not None:
            yield from self._transfers()
            yield self._stages()
            yield self._builds()
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
