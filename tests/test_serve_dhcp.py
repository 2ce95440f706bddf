"""All three services in one `provisioner serve`: a real DHCP client gets the node's static
lease, fetches its iPXE script over TFTP and HTTP, and the dhcp stage, the packet counters
and a reload reach status and /metrics."""

import json
import signal

import pytest

from labs.serve import NODES, SERVER_IP, Serve, curl, write_site, write_state

pytestmark = pytest.mark.netns


def metric(text, prefix):
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(prefix))


def test_dhcp_tftp_http_in_one_process(lab, cli):
    write_site(cli.site)
    files = write_state(cli.state)
    with Serve(lab, cli, services="dhcp,tftp,http", extra=("--tftp-port", "6969", "--interface", "br0")) as srv:
        ip, mac = NODES["node01"]
        n1 = lab.host(mac=mac)
        n1.run(["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-T", "1", "-s", "/bin/true"])
        n1.run(["ip", "addr", "add", f"{ip}/24", "dev", "eth0"])
        script = files[f"/boot/{mac}.ipxe"]
        assert curl(n1, f"tftp://{SERVER_IP}:6969/boot.ipxe").stdout.encode() == script
        assert curl(n1, f"{srv.url}/boot/ipxe").stdout.encode() == script
        rows = {r["node"]: r for r in json.loads(cli("status", "--json").stdout)}
        assert rows["node01"]["stage"] == "ipxe"
        steps = [s["stage"] for s in json.loads(cli("status", "node01", "--timeline", "--json").stdout)]
        assert steps[0] == "dhcp" and steps[-1] == "ipxe", steps
        text = curl(lab.server, f"{srv.url}/metrics").stdout
        assert metric(text, "provisioner_dhcp_packets_total") >= 2
        assert metric(text, 'provisioner_dhcp_packets_total{type="discover"}') >= 1
        assert metric(text, 'provisioner_dhcp_packets_total{type="request"}') >= 1
        mark = len(srv.lines)
        srv.signal(signal.SIGHUP)
        srv.wait_log("msg=reloaded", after=mark)
        assert srv.stop() == 0
