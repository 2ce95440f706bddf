"""The DHCP server against real clients in network namespaces: dhclient, udhcpc, dhcpcd and
scapy-made PXE clients (each architecture, iPXE), NAK, persistence, malformed packets.

Shared helpers here are imported by the other test_dhcp_*.py files.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

import labs.site
from labs.site import node, site_yaml
from provisioner.artifacts import bootloaders
from provisioner.paths import State

pytestmark = pytest.mark.netns

SERVER_IP = "10.99.0.1"
MACS = ["52:54:00:aa:00:01", "52:54:00:aa:00:02", "52:54:00:aa:00:03"]
NODE_IPS = ["10.99.0.11", "10.99.0.12", "10.99.0.13"]
UNKNOWN = "52:54:00:bb:00:01"


def write_site(
    site: Path,
    subnet: str = "10.99.0.0/24",
    master: str = SERVER_IP,
    mode: str = "full",
    dynamic: str = "10.99.0.200-10.99.0.210",
    efi_file: str = "ipxe.efi",
    **cluster: Any,
) -> Path:
    """node01-02 in the default profile and node03 also in `efi` (its own boot files), at .11
    to .13 of `subnet`; the master is router, DNS and time server. The leading comment must
    survive CLI edits (test_dhcp_discovery). `efi_file`: node03's UEFI boot file; `cluster`
    adds other cluster settings."""
    net = IPv4Network(subnet)
    nodes = [
        node("node[01-02]", str(net[11]), MACS[:2]),
        node("node03", str(net[13]), MACS[2], profiles=["default", "efi"]),
    ]
    profiles: dict[str, dict[str, Any]] = {
        "default": {"image": "debian12"},
        "efi": {"boot_files": {"uefi": efi_file, "ipxe": f"http://{master}:8080/custom.ipxe"}},
    }
    text = site_yaml(
        nodes,
        profiles,
        name="t",
        domain="t.cluster",
        subnet=subnet,
        network={"master": master, "gateway": master, "dns": [master], "dynamic_range": dynamic},
        time_servers=[master],
        ports={"http": 8080},
        dhcp={"mode": mode, "lease_time": 600},
        **cluster,
    )
    return labs.site.write_site(site, "# the test cluster (this comment must survive CLI edits)\n" + text)


class Server:
    """`python -m provisioner.servers.dhcp` inside the lab's server namespace."""

    def __init__(self, lab, site: Path, state: Path, extra: tuple[str, ...] = (), install: bool = True):
        self.lab, self.site, self.state, self.extra, self.install = lab, site, state, extra, install
        self.log = state / f"dhcp-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        self.state.mkdir(parents=True, exist_ok=True)
        if self.install:  # DHCP names only boot files the tree has
            bootloaders.install(State(self.state))
        self.log = self.state / f"dhcp-{time.monotonic_ns()}.log"
        self.proc = self.lab.server.popen(
            [
                sys.executable,
                "-m",
                "provisioner.servers.dhcp",
                "--site",
                str(self.site),
                "--state",
                str(self.state),
                "--interface",
                "br0",
                "--listen",
                SERVER_IP,
                *self.extra,
            ],
            log=self.log,
        )
        deadline = time.time() + 30
        while "ready" not in self.log.read_text():
            if self.proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"DHCP server did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def text(self) -> str:
        return self.log.read_text()


@pytest.fixture
def dhcp(lab, tmp_path):
    write_site(tmp_path / "site")
    server = Server(lab, tmp_path / "site", tmp_path / "state").start()
    yield server
    server.stop()
    assert server.proc is not None and server.proc.returncode == 0, server.text()
    assert "Traceback" not in server.text(), server.text()


# A PXE client made with scapy: DISCOVER (collect offers), REQUEST, print what came back.
PXE_CLIENT = textwrap.dedent("""
    import json, random, sys, argparse
    from scapy.all import conf, Ether, IP, UDP, BOOTP, DHCP, srp, srp1, mac2str
    conf.checkIPaddr = False
    conf.verb = 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--mac"); ap.add_argument("--arch", type=int); ap.add_argument("--vendor")
    ap.add_argument("--user-class"); ap.add_argument("--uuid"); ap.add_argument("--opt175", action="store_true")
    ap.add_argument("--request-ip"); ap.add_argument("--only", choices=["discover", "request"])
    ap.add_argument("--multi", action="store_true"); ap.add_argument("--server", default="10.99.0.1")
    a = ap.parse_args()
    base = [("message-type", "discover")]
    extra = []
    if a.vendor: extra.append(("vendor_class_id", a.vendor.encode()))
    if a.arch is not None: extra += [(93, a.arch.to_bytes(2, "big")), (94, bytes([1, 3, 16]))]
    if a.uuid: extra.append((97, b"\\x00" + bytes.fromhex(a.uuid)))
    if a.user_class: extra.append((77, a.user_class.encode()))
    if a.opt175: extra.append((175, bytes([177, 5, 1, 0x10, 0xec, 0x80, 0x00])))
    xid = random.getrandbits(32)
    def pkt(opts):
        return (Ether(src=a.mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
                / UDP(sport=68, dport=67) / BOOTP(chaddr=mac2str(a.mac), xid=xid, flags=0x8000)
                / DHCP(options=opts + extra + ["end"]))
    def show(p):
        if p is None: return None
        b = p[BOOTP]
        opts = {}
        for o in b[DHCP].options:
            if isinstance(o, tuple):
                v = o[1]
                opts[str(o[0])] = v.hex() if isinstance(v, bytes) else v
        return {"yiaddr": b.yiaddr, "siaddr": b.siaddr, "ciaddr": b.ciaddr, "xid": b.xid,
                "file": b.file.rstrip(b"\\0").decode(), "options": opts, "dst": p[IP].dst}
    out = {}
    if a.only != "request":
        if a.multi:
            ans, _ = srp(pkt(base), iface="eth0", timeout=3, multi=True)
            out["offers"] = [show(r) for _, r in ans]
        else:
            r = srp1(pkt(base), iface="eth0", timeout=4)
            out["offers"] = [show(r)] if r is not None else []
    if a.only != "discover":
        ours = [
            o
            for o in out.get("offers", [])
            if o and o["options"].get("server_id") == a.server and o["yiaddr"] != "0.0.0.0"
        ]
        ip = a.request_ip or (ours[0]["yiaddr"] if ours else None)
        opts = [("message-type", "request"), ("requested_addr", ip)]
        if a.only != "request":
            opts.append(("server_id", a.server))
        r = srp1(pkt(opts), iface="eth0", timeout=4)
        out["reply"] = show(r)
    print(json.dumps(out))
""")


def pxe_client(ns, tmp_path: Path, mac: str, *args: str) -> dict:
    script = tmp_path / "pxeclient.py"
    if not script.exists():
        script.write_text(PXE_CLIENT)
    res = ns.run([sys.executable, str(script), "--mac", mac, *args], check=False, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


UDHCPC_SCRIPT = """#!/bin/sh
[ "$1" = bound ] && echo "BOUND ip=$ip mask=$mask router=$router dns=$dns hostname=$hostname domain=$domain \
siaddr=$siaddr boot_file=$boot_file rootpath=$rootpath lease=$lease serverid=$serverid ntpsrv=$ntpsrv"
exit 0
"""


def udhcpc(ns, tmp_path: Path, *args: str) -> dict[str, str]:
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    res = ns.run(
        ["udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "4", "-T", "2", "-s", str(script), *args],
        check=False,
        timeout=60,
    )
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("BOUND")), None)
    assert line, res.stdout + res.stderr
    return dict(kv.split("=", 1) for kv in line.split()[1:])


# -- tests -----------------------------------------------------------------------------------------


def test_udhcpc_pxe_bios_gets_static_lease_and_boot_file(lab, dhcp, tmp_path):
    ns = lab.host(mac=MACS[0])
    got = udhcpc(
        ns, tmp_path, "-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "93:0000", "-O", "rootpath", "-O", "ntpsrv"
    )
    assert got["ip"] == NODE_IPS[0]
    assert got["mask"] == "24" or got["mask"] == "255.255.255.0"
    assert got["router"] == SERVER_IP and got["dns"] == SERVER_IP
    assert got["hostname"] == "node01" and got["domain"] == "t.cluster"
    assert got["siaddr"] == SERVER_IP and got["boot_file"] == "undionly.kpxe"
    assert got["rootpath"] == ""  # a root path is for the booted system, not for firmware
    assert got["lease"] == "600" and got["serverid"] == SERVER_IP
    assert got["ntpsrv"] == SERVER_IP


def test_dhclient_plain_client_gets_static_lease(lab, dhcp, tmp_path):
    ns = lab.host(mac=MACS[1])
    script = tmp_path / "dhclient.sh"
    script.write_text(
        '#!/bin/sh\n[ "$reason" = BOUND ] && echo "BOUND $new_ip_address $new_host_name '
        '$new_domain_name $new_routers $new_filename"\nexit 0\n'
    )
    script.chmod(0o755)
    res = ns.run(
        [
            "timeout",
            "40",
            "dhclient",
            "-4",
            "-1",
            "-d",
            "-sf",
            str(script),
            "-lf",
            str(tmp_path / "dh.leases"),
            "-pf",
            str(tmp_path / "dh.pid"),
            "eth0",
        ],
        check=False,
    )
    line = next((ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("BOUND")), None)
    assert line, res.stdout + res.stderr
    assert line.split() == ["BOUND", NODE_IPS[1], "node02", "t.cluster", SERVER_IP]  # no boot file: not PXE


def test_dhcpcd_gets_static_lease(lab, dhcp, tmp_path):
    ns = lab.host(mac=MACS[2])
    log = tmp_path / "dhcpcd.out"
    # test mode: print the offer, configure nothing; its privsep helpers may outlive it, so
    # its output goes to a file (not a pipe) and the lab's teardown reaps them
    ns.popen(["dhcpcd", "-4", "-B", "-T", "-t", "20", "-f", "/dev/null", "eth0"], log=log)
    deadline = time.time() + 30
    while "new_host_name" not in log.read_text() and time.time() < deadline:
        time.sleep(0.1)
    out = log.read_text()
    assert f"new_ip_address='{NODE_IPS[2]}'" in out, out
    assert "new_host_name='node03'" in out and "new_dhcp_message_type='2'" in out, out
    assert f"new_root_path='{SERVER_IP}:/images/debian12/current/rootfs'" in out, out


@pytest.mark.parametrize(
    "arch,vendor,file,vclass",
    [
        (0, "PXEClient:Arch:00000:UNDI:002001", "undionly.kpxe", "PXEClient"),
        (7, "PXEClient:Arch:00007:UNDI:003016", "snponly.efi", "PXEClient"),
        (9, "PXEClient:Arch:00009:UNDI:003016", "snponly.efi", "PXEClient"),
        (6, "PXEClient:Arch:00006:UNDI:003016", "grubia32.efi", "PXEClient"),
        (16, "HTTPClient:Arch:00016:UNDI:003001", "http://10.99.0.1:8080/boot/ipxe.efi", "HTTPClient"),
    ],
)
def test_pxe_firmware_each_arch(lab, dhcp, tmp_path, arch, vendor, file, vclass):
    uuid = "00112233445566778899aabbccddeeff"
    ns = lab.host(mac=MACS[0])
    got = pxe_client(ns, tmp_path, MACS[0], "--arch", str(arch), "--vendor", vendor, "--uuid", uuid)
    offer, ack = got["offers"][0], got["reply"]
    for r, kind in ((offer, "offer"), (ack, "ack")):
        assert r["options"]["message-type"] == 2 if kind == "offer" else 5
        assert r["yiaddr"] == NODE_IPS[0]
        assert r["siaddr"] == SERVER_IP and r["file"] == file
        assert r["options"]["vendor_class_id"] == vclass.encode().hex()
        assert r["options"]["pxe_client_machine_identifier"] == "00" + uuid  # option 97 echoed
        if vclass == "PXEClient":
            assert r["options"]["vendor_specific"] == "060108ff"  # no ProxyDHCP wait
        assert r["dst"] == "255.255.255.255"  # broadcast flag set, client has no address


def test_ipxe_gets_its_script_url_and_profile_override(lab, dhcp, tmp_path):
    ns = lab.host(mac=MACS[0])
    got = pxe_client(
        ns, tmp_path, MACS[0], "--arch", "7", "--vendor", "PXEClient:Arch:00007:UNDI:003016", "--user-class", "iPXE"
    )
    assert got["reply"]["file"] == f"http://{SERVER_IP}:8080/boot/{MACS[0]}.ipxe"
    # option 175 alone marks iPXE too; node03's profile overrides both the script and UEFI file
    ns3 = lab.host(mac=MACS[2])
    got = pxe_client(ns3, tmp_path, MACS[2], "--arch", "7", "--vendor", "PXEClient:Arch:00007:UNDI:003016", "--opt175")
    assert got["reply"]["file"] == f"http://{SERVER_IP}:8080/custom.ipxe"
    got = pxe_client(ns3, tmp_path, MACS[2], "--arch", "7", "--vendor", "PXEClient:Arch:00007:UNDI:003016")
    assert got["reply"]["file"] == "ipxe.efi"


def test_nak_for_wrong_requested_address(lab, dhcp, tmp_path):
    ns = lab.host(mac=MACS[0])
    got = pxe_client(ns, tmp_path, MACS[0], "--only", "request", "--request-ip", "10.99.0.77")
    assert got["reply"]["options"]["message-type"] == 6  # NAK
    got = pxe_client(ns, tmp_path, MACS[0], "--only", "request", "--request-ip", NODE_IPS[0])
    assert got["reply"]["options"]["message-type"] == 5


def _db_rows(state: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(state / "nodes.sqlite") as c:
        return list(c.execute(sql))


def test_unknown_pxe_client_discovered_and_dynamic_lease_survives_restart(lab, tmp_path, cli):
    write_site(cli.site)
    server = Server(lab, cli.site, cli.state).start()
    try:
        ns = lab.host(mac=UNKNOWN)
        plain = lab.host(mac="52:54:00:bb:00:99")
        uuid = "00112233445566778899aabbccddeeff"
        got = pxe_client(
            ns, tmp_path, UNKNOWN, "--arch", "7", "--vendor", "PXEClient:Arch:00007:UNDI:003016", "--uuid", uuid
        )
        ip = got["reply"]["yiaddr"]
        assert got["reply"]["options"]["message-type"] == 5 and ip == "10.99.0.200"
        assert got["reply"]["file"] == "snponly.efi"
        # a client that does not PXE boot and is not in the inventory gets nothing
        assert pxe_client(plain, tmp_path, "52:54:00:bb:00:99", "--only", "discover")["offers"] == []
        server.stop()
        assert _db_rows(cli.state, "SELECT mac, ip FROM leases") == [(UNKNOWN, ip)]
        server.start()
        got = pxe_client(ns, tmp_path, UNKNOWN, "--only", "request", "--request-ip", ip)  # INIT-REBOOT
        assert got["reply"]["options"]["message-type"] == 5 and got["reply"]["yiaddr"] == ip
        got = pxe_client(ns, tmp_path, UNKNOWN, "--only", "discover", "--arch", "0")
        assert got["offers"][0]["yiaddr"] == ip
        listed = json.loads(cli("node", "discovered", "--json").stdout)
        assert [(r["mac"], r["arch"], r["uuid"], r["ip"]) for r in listed] == [
            (UNKNOWN, 7, "33221100-5544-7766-8899-aabbccddeeff", ip)
        ]
    finally:
        server.stop()
    assert "Traceback" not in server.text(), server.text()


def test_malformed_packets_are_dropped_and_server_keeps_answering(lab, dhcp, tmp_path):
    import struct

    from scapy.layers.dhcp import BOOTP, DHCP

    good = bytes(
        BOOTP(chaddr=bytes.fromhex("525400aa0001"), xid=7) / DHCP(options=[("message-type", "discover"), "end"])
    )
    bad = [
        b"",
        b"\x01",
        good[:100],
        good[:240],  # truncated
        b"\x02" + good[1:],  # BOOTREPLY op code
        good[:240] + b"\x35\x01\x09\xff",  # unknown message type
        good[:240] + b"\x35\x01\x01\x0c\xff\x00",  # option length beyond the packet
        good[:240] + b"\x35\x01\x01\x34\x01\x03" + b"\x00" * 10,  # overload, no END
        good[:240] + b"\x35\x01\x01\x34\x01\x07\xff",  # bad overload value
        good[:236] + b"\x00\x00\x00\x00" + good[240:],  # no magic cookie
        good + b"\x00" * 5000,  # oversized
        good[:240] + b"\x35\x01\x03\x32\x02\x0a\x00\xff",  # REQUEST with a 2-byte address
        good[:240] + b"\x35\x01\x03\xff",  # REQUEST naming no address
        struct.pack("!BBBB", 1, 6, 6, 0) + good[4:],  # token ring
    ]
    sender = lab.host(ip="10.99.0.50")
    code = (
        "import socket,sys,json\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "for h in json.load(sys.stdin):\n    s.sendto(bytes.fromhex(h),('10.99.0.1',67))\n"
    )
    sender.run([sys.executable, "-c", code], input=json.dumps([b.hex() for b in bad]))
    ns = lab.host(mac=MACS[1])
    assert udhcpc(ns, tmp_path)["ip"] == NODE_IPS[1]
    # One line for the lot: a repeated error is logged once per interval (logs.Collapse).
    assert dhcp.text().count("dropped a malformed packet") == 1


RS_CLIENT = textwrap.dedent("""
    import sys
    from scapy.all import conf, Ether, IPv6, ICMPv6ND_RS, ICMPv6ND_RA, srp1
    conf.verb = 0
    mac = sys.argv[1]
    rs = Ether(src=mac, dst="33:33:00:00:00:02") / IPv6(src="fe80::1234", dst="ff02::2", hlim=255) / ICMPv6ND_RS()
    for _ in range(5):
        ra = srp1(rs, iface="eth0", timeout=2)
        if ra is not None and ICMPv6ND_RA in ra:
            r = ra[ICMPv6ND_RA]
            print(r.routerlifetime, r.M, r.O, ra[IPv6].hlim, ra[IPv6].src.startswith("fe80:"), ra[Ether].src)
            break
    else:
        print("no RA")
""")


def test_router_solicitation_is_answered_so_ipxe_does_not_wait(lab, dhcp, tmp_path):
    ns = lab.host(mac=MACS[0])
    script = tmp_path / "rs.py"
    script.write_text(RS_CLIENT)
    out = ns.run([sys.executable, str(script), MACS[0]], timeout=60).stdout.split()
    bridge_mac = lab.server.run(["ip", "-br", "link", "show", "br0"]).stdout.split()[2]
    # no default route, no managed/other configuration: nothing for iPXE to wait for
    assert out == ["0", "0", "0", "255", "True", bridge_mac]


UDP_CLIENT = textwrap.dedent("""
    import json, socket, sys
    from scapy.all import BOOTP, DHCP, mac2str
    mac, ciaddr, msgtype, requested = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    opts = [("message-type", msgtype), ("server_id", "10.99.0.1")]
    if requested:
        opts.append(("requested_addr", requested))
    bootp = BOOTP(chaddr=mac2str(mac), xid=99, ciaddr=ciaddr if msgtype != "decline" else "0.0.0.0")
    pkt = bootp / DHCP(options=opts + ["end"])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ciaddr, 68))
    s.settimeout(3)
    s.sendto(bytes(pkt), ("10.99.0.1", 67))
    try:
        r = BOOTP(s.recvfrom(2048)[0])
    except socket.timeout:
        print(json.dumps(None))
        sys.exit(0)
    o = {str(x[0]): (x[1].hex() if isinstance(x[1], bytes) else x[1]) for x in r[DHCP].options if isinstance(x, tuple)}
    print(json.dumps({"yiaddr": r.yiaddr, "ciaddr": r.ciaddr, "options": o}))
""")


def udp_client(ns, tmp_path: Path, mac: str, ciaddr: str, msgtype: str, requested: str = "") -> dict:
    script = tmp_path / "udpclient.py"
    script.write_text(UDP_CLIENT)
    res = ns.run([sys.executable, str(script), mac, ciaddr, msgtype, requested], timeout=60)
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_inform_release_decline(lab, dhcp, tmp_path):
    node = lab.host(ip=NODE_IPS[0], mac=MACS[0])
    got = udp_client(node, tmp_path, MACS[0], NODE_IPS[0], "inform")
    assert got["options"]["message-type"] == 5 and got["yiaddr"] == "0.0.0.0" and got["ciaddr"] == NODE_IPS[0]
    assert got["options"]["hostname"] == b"node01".hex() and "lease_time" not in got["options"]

    ns = lab.host(mac=UNKNOWN)
    efi = ("--arch", "7", "--vendor", "PXEClient:Arch:00007:UNDI:003016")
    assert pxe_client(ns, tmp_path, UNKNOWN, *efi)["reply"]["yiaddr"] == "10.99.0.200"
    # DECLINE by the holder: someone else uses the address, so the next offer is another one
    ns.run(["ip", "addr", "add", "10.99.0.200/24", "dev", "eth0"])
    assert udp_client(ns, tmp_path, UNKNOWN, "10.99.0.200", "decline", "10.99.0.200") is None
    ns.run(["ip", "addr", "del", "10.99.0.200/24", "dev", "eth0"])
    assert _db_rows(dhcp.state, "SELECT mac FROM leases") == []
    assert pxe_client(ns, tmp_path, UNKNOWN, *efi)["reply"]["yiaddr"] == "10.99.0.201"
    # RELEASE by the holder frees its lease
    ns.run(["ip", "addr", "add", "10.99.0.201/24", "dev", "eth0"])
    assert udp_client(ns, tmp_path, UNKNOWN, "10.99.0.201", "release") is None  # no answer to a RELEASE
    deadline = time.time() + 5
    while _db_rows(dhcp.state, "SELECT mac FROM leases") and time.time() < deadline:
        time.sleep(0.1)
    assert _db_rows(dhcp.state, "SELECT mac FROM leases") == []


RELAY_CLIENT = textwrap.dedent("""
    import json, socket
    from scapy.all import BOOTP, DHCP, mac2str
    agent = bytes([1, 4]) + b"port" + bytes([2, 3]) + b"sw1"
    pkt = BOOTP(chaddr=mac2str("52:54:00:aa:00:02"), xid=82, giaddr="10.99.0.5", hops=1) / DHCP(
        options=[("message-type", "discover"), (82, agent), "end"])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("10.99.0.5", 67))
    s.settimeout(5)
    s.sendto(bytes(pkt), ("10.99.0.1", 67))
    data, peer = s.recvfrom(2048)
    r = BOOTP(data)
    o = {str(x[0]): (x[1].hex() if isinstance(x[1], bytes) else x[1]) for x in r[DHCP].options if isinstance(x, tuple)}
    print(json.dumps({"yiaddr": r.yiaddr, "giaddr": r.giaddr, "hops": r.hops, "options": o,
                      "agent": agent.hex(), "last": data.rstrip(b"\\0")[-1 - len(agent) - 2:-1].hex()}))
""")


def test_relayed_reply_goes_to_the_relay_with_option_82_last(lab, dhcp, tmp_path):
    relay = lab.host(ip="10.99.0.5")
    script = tmp_path / "relay.py"
    script.write_text(RELAY_CLIENT)
    got = json.loads(relay.run([sys.executable, str(script)], timeout=60).stdout.strip().splitlines()[-1])
    assert got["yiaddr"] == NODE_IPS[1] and got["giaddr"] == "10.99.0.5" and got["hops"] == 1
    assert got["options"]["relay_agent_information"] == got["agent"]
    assert got["last"] == "52" + "%02x" % (len(got["agent"]) // 2) + got["agent"]  # the last option, RFC 3046


def test_reload_takes_a_changed_inventory(lab, dhcp, tmp_path):
    ns = lab.host(mac=MACS[0])
    assert udhcpc(ns, tmp_path)["ip"] == NODE_IPS[0]
    cluster = dhcp.site / "cluster.yaml"
    cluster.write_text(cluster.read_text().replace("ip: 10.99.0.11", "ip: 10.99.0.31"))
    dhcp.proc.send_signal(signal.SIGHUP)  # __main__ maps SIGHUP to DhcpServer.reload
    deadline = time.time() + 20
    while time.time() < deadline:
        if udhcpc(ns, tmp_path)["ip"] == "10.99.0.31":
            break
    assert udhcpc(ns, tmp_path)["ip"] == "10.99.0.31"


SHUTDOWN = textwrap.dedent("""
    import threading
    from pathlib import Path
    from provisioner.inventory import load_inventory
    from provisioner.paths import State
    from provisioner.servers.dhcp import DhcpServer
    import sys
    inv = load_inventory(sys.argv[1])
    never = DhcpServer(inv, State(Path(sys.argv[2])), "br0", "10.99.0.1")
    never.shutdown()  # never served: releases its sockets
    srv = DhcpServer(inv, State(Path(sys.argv[2])), "br0", "10.99.0.1")  # so port 67 is free again
    t = threading.Thread(target=srv.serve_forever)
    t.start()
    srv.shutdown()
    t.join(5)
    print("stopped" if not t.is_alive() else "still running")
""")


def test_shutdown_from_another_thread(lab, tmp_path):
    write_site(tmp_path / "site")
    script = tmp_path / "shutdown.py"
    script.write_text(SHUTDOWN)
    res = lab.server.run(
        [sys.executable, str(script), str(tmp_path / "site" / "cluster.yaml"), str(tmp_path / "state")], timeout=60
    )
    assert res.stdout.strip().splitlines()[-1] == "stopped"
