"""`provisioner serve` as a daemon: reload on SIGHUP, on an inventory change and on a new
artifact while many downloads are in flight (none dropped, every checksum right), TFTP and
HTTP in one process following the same reload, clean stop on SIGTERM."""

import os
import signal
import time

import pytest

from labs.serve import (
    IMAGE,
    NODES,
    SERVER_IP,
    Serve,
    curl,
    plant,
    sha256,
    write_site,
    write_state,
)
from provisioner.artifacts import layout
from provisioner.paths import State

pytestmark = pytest.mark.netns

CLIENTS = 40
NODE03 = ("10.99.0.13", "52:54:00:aa:00:03")


def wait_in_flight(lab, srv, n, timeout=30, fetch=None):
    """Until serve's metrics count n HTTP transfers in flight; `fetch`, the client process,
    is named in the failure if it ended first."""
    deadline = time.time() + timeout
    seen = ""
    while time.time() < deadline:
        metrics = curl(lab.server, f"{srv.url}/metrics").stdout
        if f"provisioner_http_in_flight {n}.0" in metrics:
            return
        seen = next((line for line in metrics.splitlines() if line.startswith("provisioner_http_in_flight")), seen)
        time.sleep(0.1)
    ended = f"; the client ended with {fetch.poll()}" if fetch is not None and fetch.poll() is not None else ""
    raise AssertionError(f"never {n} transfers in flight (last seen: {seen or 'no metric'}){ended}")


def add_node03(cli):
    write_site(cli.site, nodes={**NODES, "node03": NODE03})
    plant(layout.ipxe_script(State(cli.state), "node03"), b"#!ipxe\necho node03\n")


def switch_image(cli) -> bytes:
    """A new image version switched in atomically, as the image builder does."""
    v2 = cli.state / "images" / IMAGE / "versions" / "v2"
    v2.mkdir(parents=True)
    new = os.urandom(1024 * 1024)
    (v2 / "initramfs.img").write_bytes(new)
    (v2 / "vmlinuz").write_bytes(b"kernel v2")
    tmp = cli.state / "images" / IMAGE / "current.new"
    tmp.symlink_to("versions/v2")
    os.replace(tmp, cli.state / "images" / IMAGE / "current")
    return new


def test_reload_under_load_drops_no_transfer(lab, cli):
    write_site(cli.site)
    files = write_state(cli.state, big=24 * 1024 * 1024)
    old = files[f"/images/{IMAGE}/initramfs.img"]
    with Serve(lab, cli, services="tftp,http", extra=("--tftp-port", "6969")) as srv:
        n1 = lab.host(ip=NODES["node01"][0], mac=NODES["node01"][1])
        out = f"/tmp/{lab.tag}-dl"
        urls = " ".join(f"-o {out}/{i} {srv.url}/images/{IMAGE}/initramfs.img" for i in range(CLIENTS))
        # Each client is held to 3 MB/s, so every download spans the reloads below.
        fetch = n1.popen(
            f"mkdir -p {out} && curl -sS --noproxy '*' --fail --parallel --parallel-immediate --parallel-max {CLIENTS} "
            f"--limit-rate 3M {urls}; echo rc=$?",
            text=True,
        )
        wait_in_flight(lab, srv, CLIENTS)
        mark = len(srv.lines)
        srv.signal(signal.SIGHUP)
        srv.wait_log("msg=reloaded", after=mark)
        mark = len(srv.lines)
        add_node03(cli)
        srv.wait_log("nodes=3", after=mark)
        new = switch_image(cli)
        mark = len(srv.lines)
        curl(lab.server, "-X", "POST", f"{srv.url}/api/v1/reload")
        srv.wait_log("msg=reloaded", after=mark)

        n3 = lab.host(ip=NODE03[0], mac=NODE03[1])
        assert curl(n3, f"{srv.url}/boot/{NODE03[1]}.ipxe").stdout == "#!ipxe\necho node03\n"
        assert curl(n3, f"tftp://{SERVER_IP}:6969/boot.ipxe").stdout == "#!ipxe\necho node03\n"
        got_new = n3.run(["sh", "-c", f"curl -sS --noproxy '*' {srv.url}/images/{IMAGE}/initramfs.img | sha256sum"])
        assert got_new.stdout.split()[0] == sha256(new)

        text, _ = fetch.communicate(timeout=120)
        assert text.strip().endswith("rc=0"), text
        sums = n1.run(["sh", "-c", f"sha256sum {out}/* && rm -rf {out}"]).stdout.splitlines()
        assert len(sums) == CLIENTS
        assert {line.split()[0] for line in sums} == {sha256(old)}
        assert srv.stop() == 0
    assert any("msg=stopped" in line and "failed=False" in line for line in srv.lines)


def test_invalid_inventory_keeps_serving_the_previous_one(lab, cli):
    write_site(cli.site)
    files = write_state(cli.state)
    with Serve(lab, cli) as srv:
        n1 = lab.host(ip=NODES["node01"][0], mac=NODES["node01"][1])
        mark = len(srv.lines)
        (cli.site / "cluster.yaml").write_text("cluster: [not, a, mapping\n")
        line = srv.wait_log("reload refused", after=mark)
        assert "problems=" in line
        mac = NODES["node01"][1]
        assert curl(n1, f"{srv.url}/boot/{mac}.ipxe").stdout.encode() == files[f"/boot/{mac}.ipxe"]
        assert srv.stop() == 0


def test_sigterm_stops_cleanly_and_frees_the_port(lab, cli):
    write_site(cli.site)
    write_state(cli.state)
    srv = Serve(lab, cli)
    assert srv.stop() == 0
    assert srv.lines[-1].split()[3:] == ["msg=stopped", "failed=False"]
    with Serve(lab, cli) as again:  # the port is free again at once
        assert curl(lab.server, "-o", "/dev/null", "-w", "%{http_code}", f"{again.url}/metrics").stdout == "200"


def test_sigterm_lets_a_download_in_flight_finish(lab, cli):
    write_site(cli.site)
    files = write_state(cli.state, big=16 * 1024 * 1024)  # more than socket buffers hold
    body = files[f"/images/{IMAGE}/initramfs.img"]
    srv = Serve(lab, cli)
    try:
        n1 = lab.host(ip=NODES["node01"][0])
        # 8 s at 2 MB/s: time to see it in flight on a loaded machine, and to finish inside
        # serve's 10 s shutdown grace.
        fetch = n1.popen(
            f"curl -sS --noproxy '*' --fail --limit-rate 2M {srv.url}/images/{IMAGE}/initramfs.img | sha256sum",
            text=True,
        )
        wait_in_flight(lab, srv, 1, fetch=fetch)
        srv.signal(signal.SIGTERM)
        out, _ = fetch.communicate(timeout=60)
        assert out.split()[0] == sha256(body)
        srv.wait_log("msg=stopped")
        assert any("msg=transfer" in line and "outcome=ok" in line and "bytes=16777216" in line for line in srv.lines)
    finally:
        assert srv.stop() == 0
