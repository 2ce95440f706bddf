"""Naming new nodes by switch port (issue 18): provisioner reads the access switches'
forwarding tables over SNMP from a real agent (snmpsim) serving BRIDGE-MIB or Q-BRIDGE-MIB,
and cluster.discovery.pattern names the node from its switch and port. A name given is never
changed; uplinks name nothing; a switch that is unreachable or answers garbage is a log line
and a name from `names`, within the switch's timeouts."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import yaml

from labs.snmp import DOT1Q_TP_FDB_PORT, Agent, fdb, free_udp_port, mac_index
from provisioner.actions.switches import SwitchError, locate, port_name
from provisioner.inventory import InventoryInvalid, parse_text
from provisioner.inventory.model import Discovery, Switch
from provisioner.inventory.portname import node_name
from provisioner.logs import Logfmt
from test_join import EFI, LISTED, join_site, offered, pxe_client, serve

X, Y, Z = "52:54:00:5e:00:01", "52:54:00:5e:00:02", "52:54:00:5e:00:03"
OTHERS = [f"52:54:00:5e:01:{i:02x}" for i in range(3)]  # behind the uplink


@pytest.fixture
def agent() -> Iterator[Agent]:
    with Agent() as a:
        yield a


def policy(*switches: dict, **keys: object) -> Discovery:
    doc = {
        "cluster": {
            "name": "demo",
            "network": {"subnet": "10.77.0.0/24"},
            "discovery": {"names": "spare[1-3]", "switches": list(switches), **keys},
        }
    }
    return parse_text(yaml.safe_dump(doc), "c.yaml").cluster.discovery


def switch(agent_or_port: Agent | int, community: str | None = "sw1", **keys: object) -> dict:
    """A switch of the policy: the agent's, or a loopback port."""
    port = agent_or_port.port if isinstance(agent_or_port, Agent) else agent_or_port
    address = agent_or_port.address if isinstance(agent_or_port, Agent) else "127.0.0.1"
    return {"address": address, "port": port, "community": community, "timeout": 1, "rack": 1, **keys}


def at(sw: Switch, mac: str) -> tuple[int, int | None, str | None] | None:
    """Where locate() finds `mac` on `sw`: bridge port, ifIndex, ifName."""
    got = locate(sw, mac)
    return None if got is None else (got.port, got.ifindex, got.ifname)


def logged(caplog) -> str:
    """The records as serve writes them (logfmt)."""
    return "\n".join(Logfmt({}).format(r) for r in caplog.records)


def test_the_pattern_is_a_pure_function_checked_when_the_inventory_loads():
    assert node_name("r{rack}n{port:02}", {"rack": 3, "port": 7}) == "r3n07"
    assert node_name("{rack}-{ifname}", {"rack": "a", "ifname": "gi1-0-7"}) == "a-gi1-0-7"
    for pattern, fields, why in [
        ("r{rack}n{port}", {"port": 1}, "uses {rack}; the fields here are port"),
        ("n{port.real}", {"port": 1}, "uses {port.real}"),
        ("n{port:zz}", {"port": 1}, "does not fit"),
        ("n_{port}", {"port": 1}, "'n_1', which is not a valid host name"),
    ]:
        with pytest.raises(ValueError, match=why.replace("{", r"\{").replace("}", r"\}").replace(".", r"\.")):
            node_name(pattern, fields)
    with pytest.raises(InventoryInvalid) as e:
        policy(switch(161), switch(161, rack=None), pattern="r{rack}n{port:02}")
    assert [p.field for p in e.value.problems] == ["cluster.discovery.switches"]
    assert "[1] (127.0.0.1): 'r{rack}n{port:02}' uses {rack}" in str(e.value)
    with pytest.raises(InventoryInvalid, match="give community or community_file, not both"):
        policy(switch(161, rack=1, community_file="/etc/x"))
    p = policy(switch(161, rack=2, vars={"row": "b"}), pattern="{row}{rack:02}n{port:02}")
    assert p.switches[0].fields(5, None, None) == {"row": "b", "rack": 2, "port": 5}


def test_bridge_mib_names_a_node_from_its_rack_and_port(agent):
    agent.serve({"sw1": fdb({X: 5, Y: 12, **dict.fromkeys(OTHERS, 24)})})
    p = policy(switch(agent, rack=1))
    assert at(p.switches[0], X) == (5, 1005, "swp5")
    assert port_name(p, X) == "r1n05" and port_name(p, Y) == "r1n12"
    assert locate(p.switches[0], "52:54:00:5e:09:09") is None  # not on this switch


def test_q_bridge_mib_with_vlans_and_interface_names(agent):
    names = {7: "Gi1/0/7", 48: "Te1/1/1"}
    agent.serve({"sw2": fdb({X: 7, **dict.fromkeys(OTHERS, 48)}, qbridge=True, vlans=(1, 20), ifnames=names)})
    p = policy(switch(agent, "sw2", version="2c", rack="b"), pattern="{rack}-{ifname}")
    assert at(p.switches[0], X) == (7, 1007, "Gi1/0/7")  # learned in two VLANs: one port
    assert port_name(p, X) == "b-gi1-0-7"
    # SNMPv1 (GETNEXT walks) reads the same table
    assert port_name(policy(switch(agent, "sw2", version="1", rack="b"), pattern="{rack}-{ifname}"), X) == "b-gi1-0-7"


def test_uplink_ports_name_no_node(agent, caplog):
    caplog.set_level(logging.INFO)
    agent.serve({"sw1": fdb({X: 5, Y: 6, Z: 6, **dict.fromkeys(OTHERS, 24)})})
    p = policy(switch(agent, rack=1))
    assert locate(p.switches[0], OTHERS[0]) is None  # three MACs on port 24: an uplink
    assert "MAC seen on an uplink port" in caplog.text and "port=24 macs=3" in logged(caplog)
    assert locate(p.switches[0], Y) is None  # two on port 6 (a hub, or a shared BMC) ...
    assert at(policy(switch(agent, rack=1, macs_per_port=2)).switches[0], Y) == (6, 1006, "swp6")  # ... unless allowed
    # a listed uplink, by number or by interface name, names nothing even with one MAC on it
    assert locate(policy(switch(agent, rack=1, uplinks=["5"])).switches[0], X) is None
    assert locate(policy(switch(agent, rack=1, uplinks=["swp5"])).switches[0], X) is None
    assert port_name(p, OTHERS[0]) is None
    assert "MAC on no access port of a switch; it gets a name from spare[1-3]" in caplog.text


def test_the_community_can_live_in_a_root_only_file(agent, tmp_path, caplog):
    agent.serve({"s3cret": fdb({X: 9})})
    secret = tmp_path / "community"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    sw = policy(switch(agent, None, rack=1, community_file=str(secret))).switches[0]
    with pytest.raises(SwitchError, match=f"community_file {secret} is readable by others: chmod 600 it"):
        locate(sw, X)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(SwitchError, match=f"community_file {fifo} is not a file"):
        locate(policy(switch(agent, None, community_file=str(fifo))).switches[0], X)
    secret.chmod(0o600)
    assert at(sw, X) == (9, 1009, "swp9")
    # the community is in no log line, whether the switch answers or not
    caplog.set_level(logging.DEBUG)
    assert port_name(policy(switch(agent, None, community_file=str(secret))), X) == "r1n09"
    assert port_name(policy(switch(free_udp_port(), "s3cret")), X) is None
    assert "switch not read" in logged(caplog) and "s3cret" not in logged(caplog)
    shown = repr(policy(switch(161, "s3cret")))
    assert "s3cret" not in shown and "address=IPv4Address('127.0.0.1')" in shown
    # a wrong community gets no answer at all (as from a real agent): a timeout, named
    started = time.monotonic()
    with pytest.raises(SwitchError, match=r"no valid SNMP answer in 1 s \(2 tries\)"):
        locate(policy(switch(agent, "wrong", rack=1)).switches[0], X)
    assert time.monotonic() - started < 5


def test_a_mac_moved_to_another_port_changes_only_the_next_name(agent, cli, tmp_path):
    agent.serve({"sw1": fdb({X: 3, Y: 6})})
    join_site(cli, tmp_path, names="spare[1-3]", switches=[switch(agent, rack=1)])
    assert "adopted 52:54:00:5e:00:01 as r1n03" in cli("node", "approve", X).stdout
    # Y is unknown: it would be r1n06; moved to port 8 before it is adopted, it is r1n08
    assert cli("node", "locate", Y).stdout == "r1n06\n"
    agent.serve({"sw1": fdb({X: 9, Y: 8, Z: 3})})
    res = cli("node", "locate", Y)
    assert res.stdout == "r1n08\n" and 'port="127.0.0.1 port 8 (swp8)"' in res.stderr, res.stderr
    res = cli("node", "locate", "52:54:00:5e:09:09", check=False)
    assert res.returncode == 1 and "no switch port names 52:54:00:5e:09:09" in res.stderr
    assert "as r1n08" in cli("node", "approve", Y).stdout
    # X moved to port 9 keeps the name it was given; Z, now on X's old port, cannot take it
    res = cli("node", "approve", Z)
    assert "adopted 52:54:00:5e:00:03 as spare1" in res.stdout
    assert "switch-port name is taken" in res.stderr and "node=r1n03" in res.stderr
    nodes = {n["name"]: n["interfaces"][0]["mac"] for n in json.loads(cli("node", "list", "--json").stdout)}
    assert {k: v for k, v in nodes.items() if k != "node01"} == {"r1n03": X, "r1n08": Y, "spare1": Z}


@pytest.fixture
def junk_switch() -> Iterator[int]:
    """A UDP peer that answers every SNMP request with bytes that are no SNMP message."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", free_udp_port()))
    sock.settimeout(0.2)
    done = threading.Event()

    def answer() -> None:
        while not done.is_set():
            try:
                _, peer = sock.recvfrom(65535)
            except TimeoutError:
                continue
            sock.sendto(b"\x30\x82\xff\xff" + os.urandom(40), peer)

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        yield sock.getsockname()[1]
    finally:
        done.set()
        t.join()
        sock.close()


def test_unreachable_or_garbage_switches_fall_back_to_the_names_range(agent, junk_switch, cli, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    garbage_type = [(f"{DOT1Q_TP_FDB_PORT}.1.{mac_index(X)}", 4, "port five")]
    garbage_index = [(f"{DOT1Q_TP_FDB_PORT}.1.82.84.0", 2, 5)]
    agent.serve({"typed": garbage_type, "indexed": garbage_index, "good": fdb({X: 4})})
    with pytest.raises(SwitchError, match="garbage answer: dot1qTpFdbPort is OctetString 'port five', not a number"):
        locate(policy(switch(agent, "typed")).switches[0], X)
    with pytest.raises(SwitchError, match=r"garbage answer: dot1qTpFdbPort\.1\.82\.84\.0 is no MAC address index"):
        locate(policy(switch(agent, "indexed")).switches[0], X)
    closed = free_udp_port()
    for port in (junk_switch, closed):
        started = time.monotonic()
        with pytest.raises(SwitchError, match=r"no valid SNMP answer in 1 s \(2 tries\)"):
            locate(policy(switch(port)).switches[0], X)
        assert time.monotonic() - started < 4
    # the switches that cannot be read are skipped, each with its line; a good one still names;
    # they are asked at once, so dead ones cost one timeout, not one each
    bad = [switch(junk_switch, rack=1), switch(closed, rack=2), switch(agent, "typed", rack=3)]
    started = time.monotonic()
    assert port_name(policy(*bad, switch(agent, "good", rack=7)), X) == "r7n04"
    assert time.monotonic() - started < 4
    for where in (f"switch=127.0.0.1:{junk_switch}", f"switch=127.0.0.1:{closed}", "garbage answer"):
        assert where in logged(caplog)
    # with none readable, approve takes a name from the range and says why
    join_site(cli, tmp_path, names="spare[1-3]", switches=bad)
    started = time.monotonic()
    res = cli("node", "approve", X)
    assert "adopted 52:54:00:5e:00:01 as spare1" in res.stdout
    assert f'msg="switch not read" switch=127.0.0.1:{closed}' in res.stderr, res.stderr
    assert "it gets a name from spare[1-3]" in res.stderr
    assert time.monotonic() - started < 30


@pytest.mark.netns
def test_auto_mode_adopts_an_unknown_pxe_client_under_its_switch_port_name(lab, tmp_path, cli):
    """The switch's agent at its management address on the lab's network; serve asks it, and a
    second switch that never answers, while the DHCP server goes on answering listed nodes."""
    new = "52:54:00:5e:00:10"
    with Agent(lab.host(ip="10.99.0.250"), "10.99.0.250") as agent:
        agent.serve({"sw1": fdb({new: 17, **dict.fromkeys(OTHERS, 48)}, qbridge=True)})
        dead = {"address": "10.99.0.250", "port": 1161, "rack": 5, "timeout": 10}
        join_site(cli, tmp_path, mode="auto", names="auto[01-10]", switches=[switch(agent, rack=4), dead])
        with serve(lab, cli) as srv:
            ns = lab.host(mac=new)
            assert pxe_client(ns, tmp_path, new, *EFI, "--only", "discover")["offers"] == []
            # the adoption waits 20 s for the dead switch; the packet path does not
            listed = pxe_client(lab.host(mac=LISTED), tmp_path, LISTED, *EFI, "--only", "discover")["offers"]
            assert listed and listed[0]["yiaddr"] == "10.99.0.11"
            assert not any("msg=adopted" in line for line in srv.lines)
            srv.wait_log("switch=10.99.0.250:1161", timeout=40)
            line = srv.wait_log("msg=adopted")
            assert f"mac={new}" in line and "node=r4n17" in line and "ip=10.99.0.50" in line
            assert "named by switch port" in "\n".join(srv.lines)
            offer = offered(ns, tmp_path, new, "r4n17")
            assert offer["yiaddr"] == "10.99.0.50" and offer["file"]
        assert srv.stop() == 0
    assert "Traceback" not in "\n".join(srv.lines)
