"""`provisioner configure dns|ntp|logs` against the real daemons, each run in the lab's server
namespace with the files `configure --root` put in a scratch root: dnsmasq answers the cluster
forward and reverse and forwards the rest; a node added is answered within seconds while a
client queries in a loop, none of its queries lost; chrony serves the subnet; rsyslog files a
node's lines under the state directory by sender address, bounded by rotation."""

from __future__ import annotations

import subprocess
import time

import pytest
import yaml

from labs.services import chronyd, dnsmasq, rsyslogd, start, until
from labs.site import node, site_yaml

pytestmark = pytest.mark.netns

UPSTREAM = "10.99.0.2"
N1, N2, N3 = "10.99.0.11", "10.99.0.12", "10.99.0.13"


def write_site(cli, **cluster) -> None:
    cli.site.mkdir(parents=True, exist_ok=True)
    nodes = [node("node01", N1), node("node02", N2)]
    (cli.site / "cluster.yaml").write_text(site_yaml(nodes, **cluster))


def edit_site(cli, fn) -> None:
    """Change cluster.yaml through a YAML load/dump (never a text edit)."""
    path = cli.site / "cluster.yaml"
    doc = yaml.safe_load(path.read_text())
    fn(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def dig(ns, *args) -> str:
    return ns.run(["dig", "+short", "+tries=1", "+time=2", "@10.99.0.1", *args]).stdout.strip()


@pytest.fixture
def dns(lab, cli, tmp_path):
    """dnsmasq started from `configure dns`, an upstream dnsmasq (answering example.org) at
    UPSTREAM, and a client namespace."""
    root = tmp_path / "root"
    write_site(cli, dns={"upstream": [UPSTREAM], "aliases": {"login": "node01"}})
    out = cli("configure", "dns", "--root", root).stdout
    assert "not running" in out, out
    upstream = lab.host(UPSTREAM)
    start(
        upstream,
        ["dnsmasq", "-k", "--conf-file=/dev/null", "--user=root", "--no-resolv", "--address=/example.org/192.0.2.7"],
        lambda: ":53 " in upstream.run(["ss", "-lunH", "sport = :53"]).stdout,
    )
    dnsmasq(lab.server, root)
    client = lab.host("10.99.0.50")
    until(lambda: dig(client, "node01.lab.test"))
    yield root, client


def test_dns_answers_the_cluster_forward_reverse_and_forwards_the_rest(dns):
    _, client = dns
    assert dig(client, "node01.lab.test") == N1
    assert dig(client, "node02.lab.test") == N2
    assert dig(client, "master.lab.test") == "10.99.0.1"
    assert dig(client, "login.lab.test") == N1
    assert dig(client, "-x", N2) == "node02.lab.test."
    assert dig(client, "-x", "10.99.0.1") == "master.lab.test."
    assert dig(client, "www.example.org") == "192.0.2.7"  # from the upstream server
    # The cluster's own zones are never forwarded: a name it lacks is NXDOMAIN at once.
    status = client.run(["dig", "+tries=1", "+time=2", "@10.99.0.1", "node09.lab.test"]).stdout
    assert "status: NXDOMAIN" in status, status


def test_a_node_added_is_answered_within_seconds_no_query_dropped(dns, cli):
    """A client asks for node01 in a loop while node03 is added and removed: every query is
    answered, node03 resolves (and then stops resolving) within seconds, by SIGHUP only."""
    _, client = dns
    loop = client.popen(
        "while :; do dig +short +tries=1 +time=1 @10.99.0.1 node01.lab.test | grep -qx "
        f"{N1} && echo ok || echo FAIL; done"
    )
    try:
        time.sleep(1)
        out = cli("node", "add", "node03", "--ip", N3).stdout
        added = time.monotonic()  # dnsmasq has its SIGHUP: the build before it is not the DNS's time
        assert "dns:" in out and "reloaded" in out, out
        assert until(lambda: dig(client, "node03.lab.test") == N3, 5), "node03 not answered"
        assert dig(client, "-x", N3) == "node03.lab.test."
        took = time.monotonic() - added
        out = cli("node", "rm", "node03").stdout
        assert "reloaded" in out, out
        assert until(lambda: dig(client, "node03.lab.test") == "", 5)
        time.sleep(0.5)
    finally:
        loop.kill()
    answers = loop.communicate()[0].decode().split()
    assert len(answers) > 10, answers
    assert "FAIL" not in answers, f"{answers.count('FAIL')} of {len(answers)} queries failed"
    assert took < 5


def test_a_refused_configuration_leaves_the_previous_one(dns, cli):
    root, client = dns
    conf = root / "etc/dnsmasq.d/provisioner.conf"
    before = conf.read_text()
    edit_site(cli, lambda d: d["cluster"]["dns"].update(options=["no-such-option=1"]))
    res = cli("configure", "dns", "--root", root, check=False)
    assert res.returncode == 1
    assert "dnsmasq refused the new" in res.stderr and "bad option" in res.stderr, res.stderr
    assert str(conf) in res.stderr and ".candidate" not in res.stderr
    assert conf.read_text() == before
    assert dig(client, "node02.lab.test") == N2
    # The same with a node added at once: its hosts line waits for a configuration that passes.
    edit_site(cli, lambda d: d["nodes"].append({"name": "node03", "ip": N3}))
    assert cli("configure", "dns", "--root", root, check=False).returncode == 1
    assert "node03" not in (root / "var/lib/provisioner-dns/hosts").read_text()


def test_check_rejects_a_name_that_is_no_dns_label(cli):
    write_site(cli, domain="lab_x.test")
    edit_site(cli, lambda d: d["nodes"].append({"name": "node_3", "ip": N3}))
    vlan = {"name": "io01", "interfaces": [{"ip": "10.99.0.21"}, {"name": "eth0.100", "ip": "10.99.0.121"}]}
    edit_site(cli, lambda d: d["nodes"].append(vlan))
    res = cli("check", check=False)
    assert res.returncode == 1
    text = res.stdout + res.stderr
    assert "cluster.domain: 'lab_x.test' is not a DNS domain" in text, text
    assert "'node_3' is not a valid hostname" in text, text
    assert "interfaces[1].name: 'eth0.100' cannot be part of a DNS name" in text, text
    lines = (cli.site / "cluster.yaml").read_text().splitlines()
    at = next(i for i, ln in enumerate(lines, 1) if "node_3" in ln)
    assert f"cluster.yaml:{at}:" in text, text


def test_ntp_chrony_serves_the_subnet(lab, cli, tmp_path):
    root = tmp_path / "root"
    write_site(cli)
    cli("configure", "ntp", "--root", root)
    conf = root / "etc/chrony/chrony.conf"
    assert "allow 10.99.0.0/24" in conf.read_text()
    sock = root / "run/chrony/chronyd.sock"
    chronyd(lab.server, root)
    node01 = lab.host(N1)
    res = node01.run(["chronyd", "-Q", "-t", "20", "server 10.99.0.1 iburst maxsamples 1"], check=False)
    assert res.returncode == 0 and "System clock wrong by" in res.stdout + res.stderr, res
    clients = lab.server.run(["chronyc", "-h", str(sock), "-n", "clients"]).stdout
    assert N1 in clients, clients
    # A restart is said, not done, without a service manager: the upstream changed.
    edit_site(cli, lambda d: d["cluster"].update(ntp={"upstream": ["10.99.0.2"]}))
    out = cli("configure", "ntp", "--root", root).stdout
    assert "restart needed" in out, out
    assert "server 10.99.0.2 iburst" in conf.read_text()


@pytest.fixture
def rsyslog(lab, cli, tmp_path):
    root = tmp_path / "root"
    write_site(cli, logs={"max_mb": 1})
    cli("configure", "logs", "--root", root)
    rsyslogd(lab.server, root)
    return root


def logger(ns, message: str, *args: str) -> None:
    ns.run(["logger", "-n", "10.99.0.1", "-P", "514", "-t", "test", *args, message])


def test_logs_filed_per_node_by_address(lab, cli, rsyslog):
    node01, stranger = lab.host(N1), lab.host("10.99.0.60")
    logger(node01, "over udp", "-d")
    logger(node01, "over tcp", "-T")
    logger(stranger, "from a stranger", "-d")
    assert until(lambda: "over tcp" in cli("logs", "node01").stdout and "over udp" in cli("logs", "node01").stdout)
    assert "stranger" not in "".join(p.read_text() for p in (cli.state / "logs").rglob("messages*"))
    # A node added is filed at once: the lookup table is re-read on SIGHUP, no restart.
    out = cli("node", "add", "node03", "--ip", N3).stdout
    assert "logs:" in out and "reloaded" in out, out
    logger(lab.host(N3), "node03 here", "-T")
    assert until(lambda: "node03 here" in cli("logs", "node03").stdout)
    assert cli("logs", "node09", check=False).returncode == 1


def test_logs_boot_follow_and_rotation(lab, cli, rsyslog):
    node01 = lab.host(N1)
    logger(node01, "an earlier boot", "-T")
    logger(node01, "provisioner: boot begins (node01)", "-T")
    logger(node01, "this boot", "-T")
    assert until(lambda: "this boot" in cli("logs", "node01").stdout)
    boot = cli("logs", "node01", "--boot").stdout
    assert "boot begins" in boot and "this boot" in boot and "an earlier boot" not in boot, boot
    follower = subprocess.Popen(
        [cli.exe, "logs", "node01", "--follow"],
        env={"PROVISIONER_SITE": str(cli.site), "PROVISIONER_STATE": str(cli.state), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1)
        logger(node01, "followed line", "-T")
        seen = ""
        deadline = time.monotonic() + 10
        while "followed line" not in seen and time.monotonic() < deadline:
            seen += follower.stdout.readline()  # type: ignore[union-attr]
        assert "followed line" in seen
    finally:
        follower.kill()
        follower.wait()
    # max_mb 1: 3 MB of lines leave the current file and one rotated file, each about 1 MB.
    node01.run('yes "$(head -c 400 /dev/zero | tr "\\0" x)" | head -n 8000 | logger -n 10.99.0.1 -P 514 -T -t flood')
    d = cli.state / "logs" / "node01"
    assert until(lambda: (d / "messages.1").exists())
    time.sleep(1)
    sizes = [p.stat().st_size for p in d.iterdir()]
    assert sorted(p.name for p in d.iterdir()) == ["messages", "messages.1"]
    assert max(sizes) < 1.2 * 1024 * 1024, sizes
