"""Pure pieces of the daemon: logfmt lines, sinfo parsing, which boot file marks which stage,
who may have secrets and the admin endpoints."""

import logging
import time
from ipaddress import IPv4Address

from labs.serve import cluster_yaml
from provisioner.inventory import parse_text
from provisioner.logs import Logfmt
from provisioner.nodestate import NodeStateDB
from provisioner.nodestate.slurm import is_ready, parse_sinfo
from provisioner.servers.http.access import Peer, is_admin, node_at, secret_refusal
from provisioner.servers.stages import StageWriter, stage_of


def test_logfmt_quotes_only_what_needs_it():
    rec = logging.LogRecord("provisioner.http", logging.WARNING, __file__, 1, "unknown node", None, None)
    rec.kv = {"mac": "52:54:00:aa:00:01", "path": "/a b", "empty": "", "skip": None, "q": 'say "hi"'}
    line = Logfmt().format(rec)
    assert line.split(" ", 1)[1] == (
        'level=warning logger=http msg="unknown node" mac=52:54:00:aa:00:01 path="/a b" empty="" q="say \\"hi\\""'
    )
    assert line.startswith("ts=") and line.split()[0].endswith("Z")


def test_sinfo_parsing_and_readiness():
    states = parse_sinfo("node01 idle\nnode02 down*\nnode01 mixed\nnode03 idle*\n\ngarbage\n")
    assert states == {"node01": "idle", "node02": "down*", "node03": "idle*"}
    assert is_ready("idle") and is_ready("allocated") and not is_ready("idle*") and not is_ready(None)


def test_boot_file_stages():
    assert stage_of("undionly.kpxe") == "bootloader" and stage_of("/grubx64.efi") == "bootloader"
    assert stage_of("images/x/vmlinuz") == "kernel" and stage_of("images\\x\\initramfs.img") == "initramfs"
    assert stage_of("boot.ipxe") == "ipxe" and stage_of("ldlinux.c32") is None


def test_a_stage_is_noted_once_across_processes(tmp_path):
    """Two writers, as two TFTP worker processes each seeing one of a node's retries."""
    db = NodeStateDB(tmp_path / "state.db")
    for _ in range(2):
        writer = StageWriter(db)
        writer.note("node01", "bootloader", "tftp undionly.kpxe")
        writer.close()
    db.record_stages([("node01", "bootloader", time.time() + 3, "tftp undionly.kpxe")], within=2.0)
    assert [r["stage"] for r in db.timeline("node01")] == ["bootloader", "bootloader"]


def test_secret_and_admin_rules():
    inv = parse_text(cluster_yaml(), "cluster.yaml")
    n1 = inv.node("node01")
    assert n1 is not None
    mine, other = IPv4Address("10.99.0.11"), IPv4Address("10.99.0.12")
    assert secret_refusal(n1, Peer(mine, 700), {}, secure=True) is None
    assert secret_refusal(n1, Peer(mine, 40000), {}, secure=True) == "unprivileged source port"
    assert secret_refusal(n1, Peer(mine, 40000), {}, secure=False) is None
    assert secret_refusal(n1, Peer(other, 700), {}, secure=True) == "not the node's address"
    leased = IPv4Address("10.99.0.150")
    leases = {"10.99.0.150": "52:54:00:aa:00:01"}
    assert secret_refusal(n1, Peer(leased, 700), leases, secure=True) is None
    assert node_at(inv, leases, Peer(leased, 700)) == n1 and node_at(inv, {}, Peer(leased, 700)) is None
    assert Peer.of(("::ffff:10.99.0.11", 700, 0, 0)) == Peer(mine, 700) and Peer.of(None).ip is None
    # Admin: root on this host (the socket's uid), or the bearer token; another local user or a
    # remote peer without the token is not.
    assert is_admin(0, None, None)
    assert not is_admin(1000, None, None) and not is_admin(None, None, None)
    assert not is_admin(None, "Bearer x", None) and not is_admin(1000, "Bearer x", "tok")
    assert is_admin(None, "Bearer tok", "tok") and not is_admin(None, "tok", "tok")
