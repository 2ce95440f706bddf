"""Zero-touch join (issue 18) against a real `provisioner serve` (DHCP and HTTP) and scapy PXE
clients whose MACs no inventory names: under `mode: auto` a client is adopted at once (its
inventory entry, overlay and boot config made before serve answers it); under `mode: approve`
(the default) it waits, with no inventory entry and no secrets (its iPXE script is one that
waits and asks again), until `node approve`; a
burst of made-up MACs is adopted no faster than the policy's rate, and running out of names
is a log line."""

from __future__ import annotations

import hashlib
import json
import sys
import time

import pytest
import yaml

from labs.busyroot import make_root
from labs.pxe import pxe_site
from labs.serve import Serve, curl
from labs.site import write_site
from provisioner.artifacts import layout
from provisioner.artifacts.images import import_image
from provisioner.bootfiles import WAIT
from provisioner.paths import State
from test_dhcp_server import pxe_client

pytestmark = pytest.mark.netns

EFI = ("--arch", "7", "--vendor", "PXEClient:Arch:00007:UNDI:003016")
PRIV = ("--local-port", "700-900")  # root in the node's namespace may bind these
NEW = "52:54:00:cd:00:01"
LISTED = "52:54:00:aa:00:01"


def join_site(cli, tmp_path, **policy: object) -> None:
    """node01 booting the tiny image, a dynamic range, cluster.discovery = `policy`; the image
    imported and every listed node built, as an admin's site would be."""
    data = yaml.safe_load(pxe_site({"node01": LISTED}))
    data["cluster"]["network"]["dynamic_range"] = "10.99.0.200-10.99.0.220"
    data["cluster"]["discovery"] = {"addresses": "10.99.0.50-10.99.0.59", "profiles": ["default"], **policy}
    import_image(State(cli.state), "tiny", make_root(tmp_path / "root", "#!/bin/sh\npoweroff -f\n"))
    write_site(cli.site, yaml.safe_dump(data, sort_keys=False))
    cli("boot", "install")
    cli("overlay", "build")


def serve(lab, cli) -> Serve:
    return Serve(lab, cli, services="dhcp,http", extra=("--interface", "br0"))


def offered(ns, tmp_path, mac: str, name: str | None = None, timeout: float = 40) -> dict:
    """The server's offer to `mac` (naming it `name`, if given), PXE-booting again (like
    firmware) until it gets one."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = pxe_client(ns, tmp_path, mac, *EFI, "--only", "discover")["offers"]
        if got and (name is None or hostname(got[0]) == name):
            return got[0]
    raise AssertionError(f"no offer to {mac} in {timeout}s")


def hostname(offer: dict) -> str | None:
    name = offer["options"].get("hostname")
    return bytes.fromhex(name).decode() if name else None


def assert_joined(cli, srv, ns, tmp_path, mac: str, name: str, ip: str) -> None:
    """`mac` is node `name` at `ip` in the default profile, built, answered as such by DHCP,
    and given its secret overlay from its address."""
    node = json.loads(cli("node", "show", name, "--json").stdout)[0]
    assert (node["interfaces"][0]["mac"], node["interfaces"][0]["ip"], node["profiles"]) == (mac, ip, ["default"])
    state = State(cli.state)
    archive = layout.overlay_archive(state, name)
    assert archive.is_file() and layout.ipxe_script(state, name).is_file()
    offer = offered(ns, tmp_path, mac, name)  # once serve has reloaded the edited inventory
    assert offer["yiaddr"] == ip
    assert offer["file"], offer  # a boot file: it can boot now
    ns.run(["ip", "addr", "add", f"{ip}/24", "dev", "eth0"])
    got = ns.run(["sh", "-c", f"curl -sS --noproxy '*' {' '.join(PRIV)} {srv.url}/overlays/{name}.cpio.gz | sha256sum"])
    assert got.stdout.split()[0] == hashlib.sha256(archive.read_bytes()).hexdigest()


def assert_waits(cli, ns, srv, mac: str) -> None:
    """`mac` gets, by MAC and by address, a copy of the wait script as the build wrote it; no
    copy names a node, an overlay or anything from the secrets folder."""
    state = State(cli.state)
    copies = {layout.wait_script(state, n).read_text() for n in range(WAIT.variants)}
    secret = [p.read_bytes() for p in state.secrets.rglob("*") if p.is_file()]
    for path in (f"/boot/{mac}.ipxe", "/boot/ipxe"):
        got = curl(ns, f"{srv.url}{path}").stdout
        assert got in copies and "chain --replace --autofree ${filename}" in got
    for text in copies:
        assert "overlay" not in text and "node01" not in text and "provisioner." not in text, text
        assert not any(s.strip() and s.strip() in text.encode() for s in secret)


def discovered(cli) -> dict[str, str | None]:
    return {r["mac"]: r["adopted_as"] for r in json.loads(cli("node", "discovered", "--all", "--json").stdout)}


def test_auto_mode_adopts_an_unknown_pxe_client_with_everything_it_needs(lab, tmp_path, cli):
    join_site(cli, tmp_path, mode="auto", names="auto[01-10]")
    with serve(lab, cli) as srv:
        ns = lab.host(mac=NEW)
        # the first DISCOVER is taken on and not answered; the node is built off the packet loop
        assert pxe_client(ns, tmp_path, NEW, *EFI, "--only", "discover")["offers"] == []
        line = srv.wait_log("msg=adopted")
        assert f"mac={NEW}" in line and "node=auto01" in line and "ip=10.99.0.50" in line
        assert_joined(cli, srv, ns, tmp_path, NEW, "auto01", "10.99.0.50")
        assert discovered(cli) == {NEW: "auto01"}
    assert srv.stop() == 0
    assert "Traceback" not in "\n".join(srv.lines)


def test_approve_mode_keeps_an_unknown_client_out_until_the_admin_approves(lab, tmp_path, cli):
    join_site(cli, tmp_path, names="new[1-9]")
    with serve(lab, cli) as srv:
        ns = lab.host(mac=NEW)
        offer = offered(ns, tmp_path, NEW)
        assert offer["yiaddr"] == "10.99.0.200" and hostname(offer) is None  # a dynamic lease only
        assert discovered(cli) == {NEW: None}
        assert NEW not in cli("node", "list", "--json").stdout
        assert not layout.overlay_archive(State(cli.state), "new1").exists()
        ns.run(["ip", "addr", "add", "10.99.0.200/24", "dev", "eth0"])
        code = curl(ns, *PRIV, "-o", "/dev/null", "-w", "%{http_code}", f"{srv.url}/overlays/new1.cpio.gz").stdout
        assert code == "404"
        # its iPXE script is one that waits and asks again: nothing of a node, nothing secret
        assert_waits(cli, ns, srv, NEW)
        ns.run(["ip", "addr", "flush", "dev", "eth0"])
        out = cli("node", "approve", NEW, "new1").stdout
        assert f"adopted {NEW} as new1 (10.99.0.50)" in out
        assert_joined(cli, srv, ns, tmp_path, NEW, "new1", "10.99.0.50")
        own = layout.ipxe_script(State(cli.state), "new1").read_text()
        assert curl(ns, f"{srv.url}/boot/{NEW}.ipxe").stdout == own  # the script its next chain gets
        # without a NAME, approve takes the next of the policy's names
        assert "as new2 (10.99.0.51)" in cli("node", "approve", "52:54:00:cd:00:02").stdout
    assert srv.stop() == 0
    assert "Traceback" not in "\n".join(srv.lines)


FLOOD = """
import random, sys
from scapy.all import Ether, IP, UDP, BOOTP, DHCP, sendp, mac2str, conf
conf.verb = 0
macs = ["52:54:00:%02x:%02x:%02x" % (0xf0, i, random.randrange(256)) for i in range(int(sys.argv[1]))]
sendp([Ether(src=m, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
       / BOOTP(chaddr=mac2str(m), xid=random.getrandbits(32), flags=0x8000)
       / DHCP(options=[("message-type", "discover"), ("vendor_class_id", b"PXEClient:Arch:00007:UNDI:003016"),
                       (93, b"\\x00\\x07"), (94, bytes([1, 3, 16])), "end"]) for m in macs], iface="eth0")
print(" ".join(macs))
"""


def test_a_burst_of_random_macs_is_adopted_no_faster_than_the_rate(lab, tmp_path, cli):
    join_site(cli, tmp_path, mode="auto", names="auto[1-3]", rate=4)
    script = tmp_path / "flood.py"
    script.write_text(FLOOD)
    with serve(lab, cli) as srv:
        ns = lab.host()
        macs = ns.run([sys.executable, str(script), "12"]).stdout.split()
        srv.wait_log("adoption rate limit reached")
        # four taken on: three names, so three adopted and a clear line for the fourth
        line = srv.wait_log("every name of auto[1-3] is taken", timeout=60)
        assert "could not adopt" in line
        seen = discovered(cli)
        assert set(seen) == set(macs)
        assert sorted(v for v in seen.values() if v) == ["auto1", "auto2", "auto3"]
        nodes = [n["name"] for n in json.loads(cli("node", "list", "--json").stdout)]
        assert sorted(nodes) == ["auto1", "auto2", "auto3", "node01"]
        time.sleep(2)  # a flood's later packets adopt nothing more within the minute
        assert sum(1 for v in discovered(cli).values() if v) == 3
    assert srv.stop() == 0
    assert "Traceback" not in "\n".join(srv.lines)
