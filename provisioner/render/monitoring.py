"""Prometheus and Grafana configuration for a cluster: `provisioner monitoring render`.

Three files from the inventory: a scrape configuration (serve's /metrics on the master, and
each node's node exporter, which the `node-exporter` overlay enables on port 9100), alert
rules over what those export, and a Grafana dashboard whose panels query the same series.
Pure: the caller decides where the files go.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml

from ..inventory.model import Inventory, Node

NODE_EXPORTER_PORT = 9100
CONFIG = "prometheus.yml"
RULES = "provisioner-rules.yml"
DASHBOARD = "provisioner-dashboard.json"
DYNAMIC_FULL = 0.9  # share of the dynamic range leased that raises the alert
CLOCK_SKEW = 0.1  # seconds of NTP offset that raise the alert (MUNGE credentials expire on skew)
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@dataclass(frozen=True)
class Options:
    scrape_interval: str = "30s"
    evaluation_interval: str = "30s"


def node_target(node: Node, domain: str) -> str:
    """Where a node's exporter answers: its static address, else its name in the cluster's
    domain (nodes on dynamic leases, resolved by `configure dns`)."""
    host = str(node.ip) if node.ip is not None else f"{node.name}.{domain}"
    return f"{host}:{NODE_EXPORTER_PORT}"


def scrape_config(inv: Inventory, opts: Options) -> dict[str, Any]:
    c = inv.cluster
    return {
        "global": {"scrape_interval": opts.scrape_interval, "evaluation_interval": opts.evaluation_interval},
        "rule_files": [RULES],
        "scrape_configs": [
            {
                "job_name": "provisioner",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"{c.network.master}:{c.ports.http}"], "labels": {"cluster": c.name}}],
            },
            {
                "job_name": "node",
                "static_configs": [
                    {"targets": [node_target(n, c.domain)], "labels": {"cluster": c.name, "node": n.name}}
                    for n in inv.nodes
                ],
            },
        ],
    }


def _alert(name: str, expr: str, wait: str, severity: str, summary: str, fix: str) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": wait,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": fix},
    }


def alert_rules() -> dict[str, Any]:
    return {
        "groups": [
            {
                "name": "provisioner",
                "rules": [
                    _alert(
                        "ProvisionerDown",
                        'up{job="provisioner"} == 0',
                        "2m",
                        "critical",
                        "provisioner serve on {{ $labels.instance }} does not answer",
                        "No node can boot: check `systemctl status provisioner` on the master.",
                    ),
                    _alert(
                        "NodeDown",
                        'up{job="node"} == 0',
                        "5m",
                        "warning",
                        "node {{ $labels.node }} is down (its node exporter does not answer)",
                        "Find where its boot stopped: `provisioner doctor {{ $labels.node }}`.",
                    ),
                    _alert(
                        "NodeBootFailing",
                        "provisioner_boot_failures > 0",
                        "10m",
                        "warning",
                        "{{ $value }} node(s) fail to boot at stage {{ $labels.stage }}: {{ $labels.reason }}",
                        "`provisioner status` lists them; `provisioner doctor NODE` names the fix.",
                    ),
                    _alert(
                        "DhcpDynamicRangeNearlyFull",
                        f"provisioner_dhcp_dynamic_leased > {DYNAMIC_FULL} * provisioner_dhcp_dynamic_addresses "
                        "and provisioner_dhcp_dynamic_addresses > 0",
                        "15m",
                        "warning",
                        "{{ $value }} addresses of the DHCP dynamic range are leased",
                        "Approve or remove discovered nodes, or widen network.dynamic_range.",
                    ),
                    _alert(
                        "NodeClockSkew",
                        f"abs(node_timex_offset_seconds) > {CLOCK_SKEW} or node_timex_sync_status == 0",
                        "10m",
                        "warning",
                        "node {{ $labels.node }}'s clock is off or not synchronised",
                        "MUNGE refuses skewed credentials: check chrony on the master "
                        "(`provisioner configure ntp`) and timesyncd on the node.",
                    ),
                    _alert(
                        "SlurmNodeDrained",
                        "provisioner_slurm_node_drained == 1",
                        "15m",
                        "info",
                        "Slurm node {{ $labels.node }} is drained",
                        "`sinfo -R` says why; `scontrol update NodeName={{ $labels.node }} State=RESUME` once fixed.",
                    ),
                ],
            }
        ]
    }


# (title, panel type, unit, [(expression, legend)]): what the dashboard shows, in order.
PANELS: tuple[tuple[str, str, str, tuple[tuple[str, str], ...]], ...] = (
    ("Nodes by boot stage", "bargauge", "none", (("sum by (stage) (provisioner_nodes)", "{{stage}}"),)),
    ("Nodes by Slurm state", "bargauge", "none", (("sum by (state) (provisioner_slurm_nodes)", "{{state}}"),)),
    (
        "Failing boots by stage and reason",
        "table",
        "none",
        (("sum by (stage, reason) (provisioner_boot_failures)", "{{stage}}: {{reason}}"),),
    ),
    ("Drained Slurm nodes", "stat", "none", (("count(provisioner_slurm_node_drained) or vector(0)", "drained"),)),
    (
        "Boot stage duration (90th percentile of latest boots)",
        "bargauge",
        "s",
        (("histogram_quantile(0.9, sum by (stage, le) (provisioner_boot_stage_seconds_bucket))", "{{stage}}"),),
    ),
    (
        "Transfers",
        "timeseries",
        "ops",
        (("sum by (protocol, outcome) (rate(provisioner_transfers_total[5m]))", "{{protocol}} {{outcome}}"),),
    ),
    (
        "Bytes sent",
        "timeseries",
        "Bps",
        (("sum by (protocol) (rate(provisioner_transfer_bytes_total[5m]))", "{{protocol}}"),),
    ),
    (
        "DHCP packets",
        "timeseries",
        "pps",
        (("sum by (type) (rate(provisioner_dhcp_packets_total[5m]))", "{{type}}"),),
    ),
    (
        "Dynamic range leased",
        "gauge",
        "percentunit",
        (("provisioner_dhcp_dynamic_leased / clamp_min(provisioner_dhcp_dynamic_addresses, 1)", "leased"),),
    ),
    ("Targets up", "stat", "none", (("sum by (job) (up)", "{{job}}"),)),
    ("Node clock offset", "timeseries", "s", (("node_timex_offset_seconds", "{{node}}"),)),
    ("Node load (1 min)", "timeseries", "none", (("node_load1", "{{node}}"),)),
    ("Node memory available", "timeseries", "bytes", (("node_memory_MemAvailable_bytes", "{{node}}"),)),
)


def dashboard(inv: Inventory) -> dict[str, Any]:
    panels = []
    for i, (title, kind, unit, targets) in enumerate(PANELS):
        panels.append(
            {
                "id": i + 1,
                "title": title,
                "type": kind,
                "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [
                    {"refId": chr(ord("A") + j), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
                    for j, (expr, legend) in enumerate(targets)
                ],
            }
        )
    return {
        "title": f"Provisioner: {inv.cluster.name}",
        "uid": f"provisioner-{inv.cluster.name}"[:40],
        "tags": ["provisioner"],
        "timezone": "utc",
        "schemaVersion": 38,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}]
        },
        "panels": panels,
    }


def dashboard_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) of every query of every panel."""
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p["targets"]]


HEADER = "# Written by `provisioner monitoring render`; edits are lost on the next run.\n"


def render(inv: Inventory, opts: Options) -> dict[str, str]:
    """File name -> text of the three files."""
    return {
        CONFIG: HEADER + yaml.safe_dump(scrape_config(inv, opts), sort_keys=False),
        RULES: HEADER + yaml.safe_dump(alert_rules(), sort_keys=False, width=1000),
        DASHBOARD: json.dumps(dashboard(inv), indent=2) + "\n",
    }
