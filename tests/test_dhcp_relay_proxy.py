"""Relayed requests (ISC dhcrelay adding option 82) and ProxyDHCP beside dnsmasq as the site's
DHCP server, each with real peers in network namespaces."""

from __future__ import annotations

import json
import sys
import textwrap
import time

import pytest

from labs.net import Netns, uid
from test_dhcp_server import MACS, SERVER_IP, Server, pxe_client, udhcpc, write_site

pytestmark = pytest.mark.netns


def test_relayed_request_via_dhcrelay_with_option_82(lab, tmp_path):
    # client --(10.98.0.0/24)-- relay --(br0, 10.99.0.0/24)-- server
    relay = lab.host(ip="10.99.0.2")
    client = Netns(uid("pvc"))
    lab.namespaces.append(client)
    relay.run(["ip", "link", "add", "down0", "type", "veth", "peer", "name", "eth0", "netns", client.name])
    relay.run(["ip", "addr", "add", "10.98.0.1/24", "dev", "down0"])
    relay.run(["ip", "link", "set", "down0", "up"])
    client.run(["ip", "link", "set", "eth0", "address", MACS[0]])
    client.run(["ip", "link", "set", "eth0", "up"])
    lab.server.run(["ip", "route", "add", "10.98.0.0/24", "via", "10.99.0.2"])
    write_site(tmp_path / "site", subnet="10.98.0.0/24", master="10.98.0.1", dynamic="10.98.0.200-10.98.0.210")
    server = Server(lab, tmp_path / "site", tmp_path / "state").start()
    try:
        # -a adds option 82 and -D drops replies whose option 82 is not the one it sent
        relay.popen(
            ["dhcrelay", "-4", "-d", "-a", "-D", "-id", "down0", "-iu", "eth0", SERVER_IP],
            log=tmp_path / "relay.log",
        )
        time.sleep(0.5)
        got = udhcpc(client, tmp_path, "-V", "PXEClient:Arch:00000:UNDI:002001", "-O", "rootpath")
        assert got["ip"] == "10.98.0.11" and got["router"] == "10.98.0.1" and got["hostname"] == "node01"
        assert got["serverid"] == SERVER_IP and got["boot_file"] == "undionly.kpxe"
    finally:
        server.stop()
    assert "Traceback" not in server.text(), server.text()


PROXY_4011 = textwrap.dedent("""
    import json, socket, sys
    from scapy.all import BOOTP, DHCP, mac2str
    mac, ciaddr, user_class = sys.argv[1], sys.argv[2], sys.argv[3]
    opts = [("message-type", "request"), ("vendor_class_id", b"PXEClient:Arch:00007:UNDI:003016"),
            (93, b"\\x00\\x07"), (97, b"\\x00" + bytes(range(16)))]
    if user_class:
        opts.append((77, user_class.encode()))
    pkt = BOOTP(chaddr=mac2str(mac), xid=0x4011, ciaddr=ciaddr) / DHCP(options=opts + ["end"])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ciaddr, 4011))
    s.settimeout(5)
    s.sendto(bytes(pkt), ("10.99.0.1", 4011))
    data, peer = s.recvfrom(2048)
    r = BOOTP(data)
    o = {str(k): (v.hex() if isinstance(v, bytes) else v) for k, v, *_ in
         [x for x in r[DHCP].options if isinstance(x, tuple)]}
    print(json.dumps({"yiaddr": r.yiaddr, "ciaddr": r.ciaddr, "siaddr": r.siaddr, "xid": r.xid,
                      "file": r.file.rstrip(b"\\0").decode(), "options": o, "from": peer}))
""")


def test_proxydhcp_beside_dnsmasq(lab, tmp_path):
    site_dhcp = lab.host(ip="10.99.0.2")
    site_dhcp.popen(
        [
            "dnsmasq",
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--interface=eth0",
            "--bind-interfaces",
            "--no-ping",
            "--dhcp-range=10.99.0.100,10.99.0.150,1h",
            f"--dhcp-leasefile={tmp_path / 'dnsmasq.leases'}",
            f"--pid-file={tmp_path / 'dnsmasq.pid'}",
        ],
        log=tmp_path / "dnsmasq.log",
    )
    write_site(tmp_path / "site", mode="proxy")
    server = Server(lab, tmp_path / "site", tmp_path / "state").start()
    try:
        ns = lab.host(mac=MACS[0])
        got = pxe_client(
            ns,
            tmp_path,
            MACS[0],
            "--only",
            "discover",
            "--multi",
            "--arch",
            "0",
            "--vendor",
            "PXEClient:Arch:00000:UNDI:002001",
        )
        by_server = {o["options"]["server_id"]: o for o in got["offers"]}
        assert set(by_server) == {"10.99.0.2", SERVER_IP}, got
        assert by_server["10.99.0.2"]["yiaddr"].startswith("10.99.0.1")  # the address: dnsmasq's
        proxy = by_server[SERVER_IP]
        assert proxy["yiaddr"] == "0.0.0.0" and proxy["file"] == "undionly.kpxe" and proxy["siaddr"] == SERVER_IP
        assert proxy["options"]["vendor_class_id"] == b"PXEClient".hex()
        assert "lease_time" not in proxy["options"]
        # the boot-server request on port 4011, after the client took dnsmasq's address
        ns.run(["ip", "addr", "add", "10.99.0.120/24", "dev", "eth0"])
        script = tmp_path / "proxy4011.py"
        script.write_text(PROXY_4011)
        for user_class, file in (("", "snponly.efi"), ("iPXE", f"http://{SERVER_IP}:8080/boot/{MACS[0]}.ipxe")):
            res = ns.run([sys.executable, str(script), MACS[0], "10.99.0.120", user_class], timeout=60)
            ack = json.loads(res.stdout.strip().splitlines()[-1])
            assert ack["options"]["message-type"] == 5 and ack["xid"] == 0x4011
            assert ack["yiaddr"] == "0.0.0.0" and ack["ciaddr"] == "10.99.0.120"
            assert ack["file"] == file and ack["from"] == [SERVER_IP, 4011]
            assert ack["options"]["pxe_client_machine_identifier"] == "00" + bytes(range(16)).hex()
        # plain clients get nothing from a ProxyDHCP server
        plain = lab.host(mac=MACS[1])
        got = pxe_client(plain, tmp_path, MACS[1], "--only", "discover", "--multi")
        assert {o["options"]["server_id"] for o in got["offers"]} == {"10.99.0.2"}
    finally:
        server.stop()
    assert "Traceback" not in server.text(), server.text()
