"""`provisioner monitoring render` against the real thing: Debian's Prometheus scrapes a real
`provisioner serve` (DHCP and HTTP) and real prometheus-node-exporter processes, each in a
namespace standing in for a node at the node's address (no qemu boot: the demo boots one).
promtool accepts the configuration and the rules, every target is up, and every query of
every dashboard panel returns data. Also: /metrics' boot figures stay cheap for 10,000 nodes."""

import json
import subprocess
import time
import urllib.parse
from functools import partial
from typing import Any

import pytest
import yaml

from labs.net import terminate
from labs.serve import IMAGE, NODES, SERVER_IP, Serve, curl, write_state
from labs.services import until
from labs.site import node, site_yaml, write_site
from provisioner.artifacts.images import DEFAULT_PACKAGES
from provisioner.inventory.parse import load_inventory
from provisioner.nodestate import NodeStateDB
from provisioner.paths import State
from provisioner.render.monitoring import CONFIG, DASHBOARD, NODE_EXPORTER_PORT, RULES, dashboard_queries
from provisioner.servers.http.metrics import StateCollector
from test_render_overlays import fake_image

pytestmark = pytest.mark.netns

PORT = 8080
PROM = "127.0.0.1:9390"
PROFILE = {"image": IMAGE, "overlays": ["node-exporter"]}
WAIT = 120.0  # seconds: a loaded machine scrapes late


def site(cli):
    write_site(
        cli.site,
        nodes=[node(n, ip, mac) for n, (ip, mac) in NODES.items()],
        profiles={"default": {"image": IMAGE}},
        domain="lab.cluster",
        network={"dynamic_range": "10.99.0.100-10.99.0.120"},
        ports={"http": PORT},
    )


def query(lab, expr):
    q = urllib.parse.quote(expr, safe="")
    out = json.loads(curl(lab.server, f"http://{PROM}/api/v1/query?query={q}").stdout)
    assert out["status"] == "success", out
    return out["data"]["result"]


def test_prometheus_scrapes_serve_and_node_exporters(lab, cli, tmp_path):
    site(cli)
    write_state(cli.state)
    out = tmp_path / "monitoring"
    with Serve(lab, cli, services="dhcp,http", port=PORT, extra=("--interface", "br0")) as srv:
        hosts, procs = {}, []
        try:
            for name, (_ip, mac) in NODES.items():
                ns = hosts[name] = lab.host(mac=mac)
                procs.append(
                    ns.popen(["prometheus-node-exporter", "--web.listen-address=:9100"], log=tmp_path / f"{name}.log")
                )
            # node01 boots as far as its initramfs over real DHCP and HTTP; node02's overlay is
            # refused (an unprivileged source port): a failing boot for the dashboard to show.
            n1, n2 = hosts["node01"], hosts["node02"]
            n1.run(["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-T", "1", "-s", "/bin/true"])
            n1.run(["ip", "addr", "add", f"{NODES['node01'][0]}/24", "dev", "eth0"])
            n2.run(["ip", "addr", "add", f"{NODES['node02'][0]}/24", "dev", "eth0"])
            for path in (
                f"/boot/{NODES['node01'][1]}.ipxe",
                f"/images/{IMAGE}/vmlinuz",
                f"/images/{IMAGE}/initramfs.img",
            ):
                curl(n1, "-o", "/dev/null", f"{srv.url}{path}")
            assert (
                curl(n2, "-o", "/dev/null", "-w", "%{http_code}", f"{srv.url}/overlays/node02.cpio.gz").stdout == "403"
            )

            cli("monitoring", "render", "--out", out, "--scrape-interval", "1s")
            config = yaml.safe_load((out / CONFIG).read_text())
            targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
            assert targets == [f"{SERVER_IP}:{PORT}", "10.99.0.11:9100", "10.99.0.12:9100"]
            lab.server.run(["promtool", "check", "config", str(out / CONFIG)])
            rules = lab.server.run(["promtool", "check", "rules", str(out / RULES)]).stdout
            assert "SUCCESS: 6 rules found" in rules, rules

            procs.append(
                lab.server.popen(
                    [
                        "prometheus",
                        f"--config.file={out / CONFIG}",
                        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                        f"--web.listen-address={PROM}",
                    ],
                    log=tmp_path / "prometheus.log",
                )
            )

            seen: list[tuple[str, str, str]] = []

            def all_up():
                try:
                    got = json.loads(curl(lab.server, f"http://{PROM}/api/v1/targets", check=False).stdout or "{}")
                except json.JSONDecodeError:
                    return None
                active = got.get("data", {}).get("activeTargets", [])
                seen[:] = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in active]
                return len(active) == 3 and all(t["health"] == "up" for t in active) and active

            active = until(all_up, WAIT)
            assert active, f"targets: {seen}\n{(tmp_path / 'prometheus.log').read_text()[-3000:]}"
            assert {t["labels"]["job"] for t in active} == {"provisioner", "node"}
            board = json.loads((out / DASHBOARD).read_text())
            queries = dashboard_queries(board)
            assert len(queries) >= 10
            for title, expr in queries:
                assert until(partial(query, lab, expr), WAIT), f"no data for panel {title!r}: {expr}"
            stages = {r["metric"]["stage"] for r in query(lab, "provisioner_boot_stage_seconds_count")}
            assert {"ipxe", "kernel"} <= stages
            failing = query(lab, "provisioner_boot_failures")
            assert [(r["metric"]["stage"], r["metric"]["reason"], r["value"][1]) for r in failing] == [
                ("overlay", "refused", "1")
            ]
            assert query(lab, "provisioner_dhcp_dynamic_addresses")[0]["value"][1] == "21"
            assert query(lab, 'provisioner_slurm_nodes{state="unknown"}')[0]["value"][1] == "2"
            # The rules match what is exported: node02's refused overlay makes NodeBootFailing
            # pending, and so does NodeDown once node02's exporter stops.
            terminate(procs[1])
            for alert in ("NodeBootFailing", "NodeDown"):
                pending = f'ALERTS{{alertname="{alert}", alertstate="pending"}}'
                assert until(partial(query, lab, pending), WAIT), f"{alert} never pending"
            assert query(lab, 'ALERTS{alertname="NodeDown"}')[0]["metric"]["node"] == "node02"
        finally:
            for p in procs:
                terminate(p)


def test_render_refuses_a_bad_interval_and_writes_nothing(cli, tmp_path):
    site(cli)
    res = cli("monitoring", "render", "--out", tmp_path / "m", "--scrape-interval", "soon", check=False)
    assert res.returncode == 2 and "not a duration" in res.stderr
    assert not (tmp_path / "m").exists()


def test_boot_figures_for_10000_nodes_are_cheap(tmp_path):
    """A scrape reads every node's latest boot: 10,000 nodes with 8 events each, failed
    transfers on every fifth, in a few seconds at worst; the series stay a handful."""
    n = 10_000
    write_site(
        tmp_path, site_yaml([node("n[00000-09999]", "10.0.0.2")], name="big", subnet="10.0.0.0/16", interface=None)
    )
    inv = load_inventory(tmp_path / "cluster.yaml")
    db = NodeStateDB(tmp_path / "nodes.sqlite")
    t0 = time.time() - 3600
    stages = ("dhcp", "ipxe", "kernel", "initramfs", "network", "root", "overlay", "registered")
    db.record_stages([(f"n{i:05d}", s, t0 + i * 0.01 + k, None) for i in range(n) for k, s in enumerate(stages)])
    db.record_transfers(
        [
            # every tenth node fails after its boot; every tenth but five failed before it, which
            # its boot put behind it
            (
                "http",
                "10.0.0.9:1",
                f"n{i:05d}",
                "/overlays/x.cpio.gz",
                0,
                0.0,
                0,
                "not found",
                t0 + (200 if i % 10 else -9),
            )
            for i in range(0, n, 5)
        ]
    )
    collector = StateCollector(db, lambda: inv, slurm_states=lambda: {})
    start = time.perf_counter()
    metrics = {m.name: m for m in collector.collect()}
    took = time.perf_counter() - start
    assert took < 5.0, f"collect took {took:.2f} s"  # ~1-2 s with the machine at load 13
    hist = metrics["provisioner_boot_stage_seconds"]
    counts = {s.labels["stage"]: s.value for s in hist.samples if s.name.endswith("_count")}
    assert counts == {s: n for s in stages[:-1]}
    failures = metrics["provisioner_boot_failures"].samples
    assert [(s.labels["stage"], s.labels["reason"], s.value) for s in failures] == [("overlay", "not found", 1000)]
    assert sum(len(m.samples) for m in metrics.values()) < 200
    print(f"collect for {n} nodes: {took * 1000:.0f} ms")


def test_node_exporter_overlay_enables_the_exporter(cli):
    """The stock overlay the default profile lists: the unit enabled, listening on :9100."""
    write_site(cli.site, site_yaml([node("node01", "10.99.0.11", "52:54:00:aa:00:01")], {"default": PROFILE}))
    fake_image(State(cli.state), IMAGE)
    cli("overlay", "build")
    shown = cli("overlay", "show", "node01").stdout
    want = "etc/systemd/system/multi-user.target.wants/prometheus-node-exporter.service -> /lib/systemd/system/"
    assert want in shown, shown
    defaults = cli("overlay", "show", "node01", "/etc/default/prometheus-node-exporter").stdout
    assert f'ARGS="--web.listen-address=:{NODE_EXPORTER_PORT}"' in defaults
    assert "prometheus-node-exporter" in DEFAULT_PACKAGES


def test_every_alert_fires_on_the_series_it_watches(cli, tmp_path):
    """promtool's rule unit tests: each of the six alerts fires on made-up series of the
    metrics serve and the node exporter really export (their names checked above)."""
    site(cli)
    cli("monitoring", "render", "--out", tmp_path)
    n = {"job": "node", "instance": "10.99.0.11:9100", "node": "node01"}
    p = {"job": "provisioner", "instance": f"{SERVER_IP}:{PORT}"}

    def series(name, labels, values):
        inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
        return {"series": f"{name}{{{inner}}}", "values": values}

    expect = {
        "ProvisionerDown": (series("up", p, "0x20"), p),
        "NodeDown": (series("up", n, "0x20"), n),
        "NodeBootFailing": (
            series("provisioner_boot_failures", {**p, "stage": "overlay", "reason": "refused"}, "1x20"),
            {**p, "stage": "overlay", "reason": "refused"},
        ),
        "NodeClockSkew": (series("node_timex_offset_seconds", n, "0.5x20"), n),
        "SlurmNodeDrained": (
            series("provisioner_slurm_node_drained", {**p, "node": "node01"}, "1x20"),
            {**p, "node": "node01"},
        ),
    }
    inputs = [s for s, _ in expect.values()]
    inputs += [
        series("provisioner_dhcp_dynamic_leased", p, "20x20"),
        series("provisioner_dhcp_dynamic_addresses", p, "21x20"),
    ]
    alerts: list[dict[str, Any]] = [
        {"eval_time": "19m", "alertname": name, "exp_alerts": [{"exp_labels": labels}]}
        for name, (_s, labels) in expect.items()
    ]
    alerts.append({"eval_time": "19m", "alertname": "DhcpDynamicRangeNearlyFull", "exp_alerts": [{"exp_labels": p}]})
    summaries = {  # the templates filled in: what an admin reads
        "ProvisionerDown": f"provisioner serve on {SERVER_IP}:{PORT} does not answer",
        "NodeDown": "node node01 is down (its node exporter does not answer)",
        "NodeBootFailing": "1 node(s) fail to boot at stage overlay: refused",
        "NodeClockSkew": "node node01's clock is off or not synchronised",
        "SlurmNodeDrained": "Slurm node node01 is drained",
        "DhcpDynamicRangeNearlyFull": "20 addresses of the DHCP dynamic range are leased",
    }
    rules = {r["alert"]: r for g in yaml.safe_load((tmp_path / RULES).read_text())["groups"] for r in g["rules"]}
    for a in alerts:
        rule = rules[a["alertname"]]
        for e in a["exp_alerts"]:
            e["exp_labels"] = {**e["exp_labels"], "severity": rule["labels"]["severity"]}
            description = rule["annotations"]["description"].replace("{{ $labels.node }}", "node01")
            e["exp_annotations"] = {"summary": summaries[a["alertname"]], "description": description}
    tests = {
        "rule_files": [str(tmp_path / RULES)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": inputs, "alert_rule_test": alerts}],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    res = subprocess.run(["promtool", "test", "rules", str(tmp_path / "tests.yml")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
