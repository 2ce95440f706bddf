"""The renderers of the master's daemons (render/dns, ntp, logs): pure text from the inventory."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from labs.site import node, site_yaml
from provisioner.inventory.parse import parse_text
from provisioner.render.dns import DnsFiles, host_entries, render_dnsmasq, render_hosts, render_servers, reverse_zones
from provisioner.render.logs import LogFiles, render_rotate, render_rsyslog, render_table
from provisioner.render.ntp import NtpFiles, render_chrony

DNS = DnsFiles(Path("/etc/d.conf"), Path("/var/h"), Path("/var/s"), Path("/run/d.pid"))
LOGS = LogFiles(Path("/etc/r.conf"), Path("/st/t.json"), Path("/st/rot.sh"), Path("/st/logs"), Path("/run/r.pid"))


def inventory(**cluster):
    nodes = [
        node("node01", "10.99.0.11"),
        {"name": "io01", "interfaces": [{"name": "eth0", "ip": "10.99.0.21"}, {"name": "ib0", "ip": "10.99.0.121"}]},
        node("spare01"),
    ]
    return parse_text(site_yaml(nodes, {"default": {}}, **cluster), "cluster.yaml")


def test_hosts_name_the_master_nodes_interfaces_and_aliases():
    inv = inventory(dns={"aliases": {"login": "node01", "nas": "10.99.0.5", "gone": "node09"}})
    assert host_entries(inv.cluster, inv.nodes) == [
        (IPv4Address("10.99.0.1"), ("master.lab.test", "master")),
        (IPv4Address("10.99.0.11"), ("node01.lab.test", "node01")),
        (IPv4Address("10.99.0.21"), ("io01.lab.test", "io01")),
        (IPv4Address("10.99.0.121"), ("io01-ib0.lab.test", "io01-ib0")),
        (IPv4Address("10.99.0.11"), ("login.lab.test", "login")),
        (IPv4Address("10.99.0.5"), ("nas.lab.test", "nas")),
    ]
    text = render_hosts(inv.cluster, inv.nodes)
    assert text.startswith("# Written by `provisioner configure dns`")
    assert "10.99.0.11\tnode01.lab.test node01\n" in text


@pytest.mark.parametrize(
    ("subnet", "zones"),
    [
        ("10.99.0.0/24", ["0.99.10.in-addr.arpa"]),
        ("10.99.4.0/22", [f"{i}.99.10.in-addr.arpa" for i in range(4, 8)]),
        ("172.16.0.0/16", ["16.172.in-addr.arpa"]),
        ("10.99.0.128/25", ["0.99.10.in-addr.arpa"]),
    ],
)
def test_reverse_zones_cover_the_subnet_at_octets(subnet, zones):
    assert reverse_zones(IPv4Network(subnet)) == zones


def test_dnsmasq_is_dns_only_local_for_the_cluster_and_takes_options():
    inv = inventory(dns={"options": ["cache-size=1000"]})
    conf = render_dnsmasq(inv.cluster, DNS)
    lines = conf.splitlines()
    assert "listen-address=10.99.0.1" in lines and "no-resolv" in lines and "no-hosts" in lines
    assert "local=/lab.test/" in lines and "local=/0.99.10.in-addr.arpa/" in lines
    assert "addn-hosts=/var/h" in lines and "servers-file=/var/s" in lines and "pid-file=/run/d.pid" in lines
    assert lines[-1] == "cache-size=1000"
    assert not any(line.startswith(("dhcp-", "enable-tftp")) for line in lines)
    assert render_servers([IPv4Address("192.0.2.53")]).splitlines()[1:] == ["server=192.0.2.53"]


def test_chrony_serves_the_subnet_with_a_local_fallback():
    files = NtpFiles(Path("/etc/c.conf"), Path("/var/drift"), Path("/run/c.pid"), Path("/run/c/c.sock"))
    conf = render_chrony(inventory(ntp={"upstream": ["192.0.2.123", "ntp.example.org"]}).cluster, files).splitlines()
    assert conf[1:3] == ["server 192.0.2.123 iburst", "server ntp.example.org iburst"]
    assert "allow 10.99.0.0/24" in conf and "local stratum 10 orphan" in conf and "cmdport 0" in conf
    assert "bindcmdaddress /run/c/c.sock" in conf
    alone = render_chrony(inventory().cluster, files)
    assert "server" not in alone.replace("# Written", "")


def test_rsyslog_files_nodes_by_address_bounded():
    inv = inventory(logs={"max_mb": 4})
    conf = render_rsyslog(inv.cluster, LOGS)
    assert 'input(type="imudp" address="10.99.0.1" port="514"' in conf
    assert 'input(type="imtcp" address="10.99.0.1" port="514"' in conf
    assert 'string="/st/logs/%$.node%/messages"' in conf
    assert 'rotation.sizeLimit="4m" rotation.sizeLimitCommand="/bin/sh /st/rot.sh"' in conf
    assert "-size +4095k" in render_rotate(LOGS, 4)
    table = json.loads(render_table(inv.nodes))
    assert table["table"] == [
        {"index": "10.99.0.11", "value": "node01"},
        {"index": "10.99.0.21", "value": "io01"},
        {"index": "10.99.0.121", "value": "io01"},
    ]
    with pytest.raises(ValueError, match="rsyslog cannot take the path"):
        render_rsyslog(inv.cluster, LogFiles(LOGS.conf, LOGS.table, LOGS.rotate, Path("/st/my logs"), LOGS.pidfile))
