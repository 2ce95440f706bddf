"""Admin endpoints (localhost, or a bearer token from elsewhere) and Prometheus /metrics
after real transfers, refusals and a recorded overlay build."""

import json

import pytest

from labs.serve import IMAGE, NODES, Serve, curl, http_code, write_site, write_state
from provisioner.nodestate import NodeStateDB

pytestmark = pytest.mark.netns


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


def test_admin_needs_localhost_or_token(lab, cli):
    write_site(cli.site)
    write_state(cli.state)
    token_file = cli.state / "secrets" / "api.token"
    token_file.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    token_file.write_text("s3cret-token\n")
    with Serve(lab, cli) as srv:
        n2 = lab.host(ip=NODES["node02"][0])
        assert http_code(n2, f"{srv.url}/api/v1/nodes") == "403"
        assert http_code(n2, "-H", "Authorization: Bearer wrong", f"{srv.url}/api/v1/nodes") == "403"
        srv.wait_log("admin endpoint refused")
        nodes = json.loads(curl(n2, "-H", "Authorization: Bearer s3cret-token", f"{srv.url}/api/v1/nodes").stdout)
        assert [n["node"] for n in nodes] == ["node01", "node02"]
        # On the server itself no token is needed.
        assert (
            http_code(
                lab.server,
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                '{"stage": "maintenance", "detail": "disk swap"}',
                f"{srv.url}/api/v1/nodes/node02/stage",
            )
            == "200"
        )
        assert (
            http_code(
                lab.server, "-X", "POST", "--data-binary", '{"stage": "x"}', f"{srv.url}/api/v1/nodes/node09/stage"
            )
            == "404"
        )
        steps = json.loads(curl(lab.server, f"{srv.url}/api/v1/nodes/node02/timeline").stdout)
        assert [(s["stage"], s["detail"]) for s in steps] == [("maintenance", "disk swap")]
        token_file.write_text("rotated\n")  # a reload picks up a new token
        mark = len(srv.lines)
        assert http_code(lab.server, "-X", "POST", f"{srv.url}/api/v1/reload") == "202"
        srv.wait_log("msg=reloaded", after=mark)
        assert http_code(n2, "-H", "Authorization: Bearer s3cret-token", f"{srv.url}/api/v1/nodes") == "403"
        assert http_code(n2, "-H", "Authorization: Bearer rotated", f"{srv.url}/api/v1/nodes") == "200"
        assert http_code(n2, "-X", "POST", f"{srv.url}/api/v1/reload") == "403"
        assert http_code(lab.server, "-X", "POST", f"{srv.url}/api/v1/reload") == "202"
        srv.wait_log("msg=reloaded")


def test_metrics_count_transfers_errors_stages_and_builds(lab, cli):
    write_site(cli.site)
    files = write_state(cli.state)
    NodeStateDB(cli.state / "nodes.sqlite").record_build("overlay", "node01", 0.25)
    NodeStateDB(cli.state / "nodes.sqlite").record_transfer(
        "tftp", "10.99.0.11:2000", "undionly.kpxe", 70000, 0.1, "ok", node="node01"
    )
    with Serve(lab, cli) as srv:
        n1 = lab.host(ip=NODES["node01"][0], mac=NODES["node01"][1])
        mac = NODES["node01"][1]
        curl(n1, "-o", "/dev/null", f"{srv.url}/boot/{mac}.ipxe")
        curl(n1, "-o", "/dev/null", f"{srv.url}/images/{IMAGE}/initramfs.img")
        curl(n1, "-o", "/dev/null", f"{srv.url}/overlays/node01.cpio.gz")  # refused: unprivileged port
        text = curl(lab.server, f"{srv.url}/metrics").stdout
    sent = len(files[f"/boot/{mac}.ipxe"]) + len(files[f"/images/{IMAGE}/initramfs.img"])
    assert metric(text, 'provisioner_transfers_total{outcome="ok",protocol="http"}') == 2
    assert metric(text, 'provisioner_transfer_bytes_total{protocol="http"}') == sent
    assert metric(text, 'provisioner_transfer_bytes_total{protocol="tftp"}') == 70000
    assert metric(text, 'provisioner_transfer_errors_total{protocol="tftp"}') == 0
    assert metric(text, 'provisioner_nodes{stage="initramfs"}') == 1
    assert metric(text, 'provisioner_nodes{stage="none"}') == 1
    assert metric(text, 'provisioner_build_seconds_count{kind="overlay"}') == 1
    assert metric(text, 'provisioner_build_seconds_sum{kind="overlay"}') == 0.25
    assert metric(text, "provisioner_http_in_flight") == 0
    assert metric(text, 'provisioner_http_refused_total{status="403"}') == 1
