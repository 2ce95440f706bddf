"""`provisioner serve` runs each service in a process of its own, supervised: a service process
killed with SIGKILL is started again within seconds and answers (DHCP, TFTP, HTTP), its
counters carry on in /metrics, a reload reaches every process, and a stop leaves no process
of serve behind (service processes, TFTP workers)."""

import os
import re
import signal
import time
from pathlib import Path

import pytest

from labs.serve import NODES, SERVER_IP, Serve, curl, write_site, write_state
from test_serve_reload import NODE03, add_node03

pytestmark = pytest.mark.netns

TFTP_PORT = 6969
BACK_WITHIN = 30.0  # seconds: a Python start-up and an import of scapy on a loaded machine


def metric(text: str, prefix: str) -> float:
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(prefix))


def lease(host) -> str:
    """The address DHCP leases to `host` (busybox udhcpc, the address not applied)."""
    res = host.run(["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-T", "1", "-s", "/bin/true"])
    got = re.search(r"lease of ([\d.]+) obtained", res.stdout + res.stderr)
    assert got, res.stdout + res.stderr
    return got.group(1)


def ours(site: Path) -> list[int]:
    """Every process started for this serve: they all carry its PROVISIONER_SITE."""
    mark = f"PROVISIONER_SITE={site}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mark in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return got


def test_killed_services_come_back_and_stop_leaves_nothing(lab, cli):
    write_site(cli.site)
    files = write_state(cli.state)
    extra = ("--tftp-port", str(TFTP_PORT), "--tftp-workers", "2", "--interface", "br0")
    with Serve(lab, cli, services="dhcp,tftp,http", extra=extra) as srv:
        pids = {name: srv.pid_of(name) for name in ("dhcp", "tftp", "http")}
        assert len({srv.proc.pid, *pids.values()}) == 4, pids
        ip, mac = NODES["node01"]
        n1 = lab.host(mac=mac)
        assert lease(n1) == ip
        n1.run(["ip", "addr", "add", f"{ip}/24", "dev", "eth0"])
        script = files[f"/boot/{mac}.ipxe"]
        before = until(
            lambda: metric(
                curl(lab.server, f"{srv.url}/metrics").stdout, 'provisioner_dhcp_packets_total{type="discover"}'
            ),
            30,
            "DHCP's counters never reached /metrics",
        )

        for name in ("dhcp", "tftp", "http"):
            mark = len(srv.lines)
            t0 = time.monotonic()
            os.kill(pids[name], signal.SIGKILL)
            srv.wait_log(f'msg="service ready again" service={name} ', timeout=BACK_WITHIN, after=mark)
            back = time.monotonic() - t0
            assert back < BACK_WITHIN, (name, back)
            pids[name] = srv.pid_of(name, after=mark)
            assert f"service={name} code=-9" in srv.wait_log('msg="service ended, starting it again"', after=mark)
        assert srv.proc.poll() is None

        # Every service answers from its new process.
        assert lease(n1) == ip
        assert curl(n1, f"tftp://{SERVER_IP}:{TFTP_PORT}/boot.ipxe").stdout.encode() == script
        assert curl(n1, f"{srv.url}/boot/ipxe").stdout.encode() == script
        # DHCP's counters carry on across its restart.
        after = until(
            lambda: (
                v
                if (
                    v := metric(
                        curl(lab.server, f"{srv.url}/metrics").stdout, 'provisioner_dhcp_packets_total{type="discover"}'
                    )
                )
                > before
                else 0
            ),
            30,
            "DHCP's counters went back or stopped",
        )
        assert after >= before + 1

        # A reload reaches every process: node03 is answered by each service.
        mark = len(srv.lines)
        add_node03(cli)
        srv.signal(signal.SIGHUP)
        srv.wait_log("msg=reloaded", after=mark)
        n3 = lab.host(ip=NODE03[0], mac=NODE03[1])
        assert curl(n3, f"tftp://{SERVER_IP}:{TFTP_PORT}/boot.ipxe").stdout == "#!ipxe\necho node03\n"
        assert curl(n3, f"{srv.url}/boot/{NODE03[1]}.ipxe").stdout == "#!ipxe\necho node03\n"
        assert lease(n3) == NODE03[0]
        assert srv.stop() == 0
    until(lambda: not ours(cli.site), 15, f"processes of serve left behind: {ours(cli.site)}")
    assert re.search(r"msg=stopped failed=False$", srv.lines[-1]), srv.lines[-1]
