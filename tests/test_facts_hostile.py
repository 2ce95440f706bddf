"""One node's facts never break Slurm (or the MPI settings of its overlay) for the others.
Hostile reports (digits Python's int() takes but Slurm does not, counts past Slurm's limits, a
topology that does not add up, RDMA device names that are not plain names) get a 400 with
the reason from the real `provisioner serve`, are kept out of the database and shown in that
node's status; stored facts that break the rules (a database from before the checks)
leave that node out of slurm.conf without stopping `slurm render` or the `slurm apply --watch`
unit; and a real slurmctld keeps running with every other node idle."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from labs.serve import NODES, Serve, auth, curl, write_site, write_state
from labs.slurm import NODE_CURL, slurm_cluster
from provisioner.facts import MAX_RDMA, FactsInvalid, check, hardware, rdma_devices
from provisioner.nodestate import NodeStateDB
from test_slurm_cluster import INVENTORY as CLUSTER
from test_slurm_render import INVENTORY, facts_for

PRIV = ("--local-port", "700-900")
GOOD: dict[str, Any] = {
    "slurmd_C": "NodeName=node01 CPUs=8 Boards=1 SocketsPerBoard=2 CoresPerSocket=2 ThreadsPerCore=2 RealMemory=15890",
    "cpus": 8,
    "memory_mb": 15890,
    "gpus": [],
}
HOSTILE = [  # (report, what the refusal names)
    ({"cpus": "\u0663"}, "cpus='\u0663' is not a whole number from 1 to 65533"),  # Arabic-Indic 3
    ({"cpus": "\u00b2"}, "cpus='\u00b2' is not a whole number"),  # superscript 2
    ({**GOOD, "slurmd_C": GOOD["slurmd_C"].replace("CPUs=8", "CPUs=\uff18")}, "CPUs='\uff18'"),  # fullwidth 8
    ({**GOOD, "slurmd_C": GOOD["slurmd_C"].replace("CPUs=8", "CPUs=99999")}, "CPUs='99999'"),
    ({**GOOD, "slurmd_C": GOOD["slurmd_C"].replace("CPUs=8", "CPUs=64")}, "CPUs=64 is neither the cores nor"),
    ({**GOOD, "slurmd_C": GOOD["slurmd_C"].replace("CoresPerSocket=2", "CoresPerSocket=65533")}, "at most 65533"),
    ({"cpus": 4, "memory_mb": 2**41}, f"memory_mb={2**41}"),
    ({"cpus": 0}, "cpus=0"),
    ({"cpus": True}, "cpus=True"),
    ({"cpus": 2.5}, "cpus=2.5"),
    ({"slurmd_C": ["NodeName=x"]}, "slurmd_C must be the text"),
    (
        {**GOOD, "slurmd_C": GOOD["slurmd_C"].replace("SocketsPerBoard=2", "SocketsPerBoard=2 Sockets=2")},
        "both Sockets= and SocketsPerBoard=",
    ),
    # RDMA device names land in openmpi-mca-params.conf: a list of plain, distinct names only.
    ({**GOOD, "rdma": "rxe0"}, "rdma must be a list of at most 64 device names"),
    ({**GOOD, "rdma": {"rxe0": 1}}, "rdma must be a list"),
    ({**GOOD, "rdma": [f"r{i}" for i in range(MAX_RDMA + 1)]}, "at most 64"),
    ({**GOOD, "rdma": [1]}, "rdma device 1 is not a device name"),
    ({**GOOD, "rdma": [None]}, "rdma device None is not"),
    ({**GOOD, "rdma": ["../../etc/passwd"]}, "rdma device '../../etc/passwd' is not"),
    ({**GOOD, "rdma": ["rxe0\nopal_common_ucx_tls = tcp"]}, "is not a device name"),  # a line of its own
    ({**GOOD, "rdma": ["rxe0,mlx5_0"]}, "'rxe0,mlx5_0' is not"),  # a second device by the back door
    ({**GOOD, "rdma": ["-rxe0"]}, "'-rxe0' is not"),
    ({**GOOD, "rdma": ["\uff52xe0"]}, "is not a device name"),  # fullwidth r
    ({**GOOD, "rdma": ["m" * 64]}, "is not a device name"),  # the kernel's names are 63 at most
    ({**GOOD, "rdma": ["rxe0", "rxe0"]}, "names a device twice"),
]


@pytest.mark.parametrize("report,reason", HOSTILE)
def test_the_rules(report, reason):
    with pytest.raises(FactsInvalid, match=f"^n1: .*{re.escape(reason)}"):
        check("n1", report)


def test_rdma_devices_none_reported_and_not_yet_said():
    assert rdma_devices("n1", {**GOOD, "rdma": ["rxe0", "mlx5_0"]}) == ("mlx5_0", "rxe0")
    assert rdma_devices("n1", {**GOOD, "rdma": ["m" * 63]}) == ("m" * 63,)
    assert rdma_devices("n1", {**GOOD, "rdma": []}) == ()  # said: no device
    assert rdma_devices("n1", GOOD) is None and rdma_devices("n1", None) is None  # not said


def test_what_slurmd_C_prints_passes():
    hw = hardware("n1", GOOD)
    assert hw is not None and dict(hw.fields)["CPUs"] == "8"
    small = hardware("n1", {"cpus": "010", "memory_mb": 7})
    assert small is not None and small.fields == (("CPUs", "10"), ("RealMemory", "7"))
    one = "NodeName=n1 CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=2 RealMemory=900"
    assert hardware("n1", {"slurmd_C": one}) is not None  # CPUs counts cores, as Slurm allows


@pytest.mark.netns
def test_hostile_reports_get_400_the_reason_and_a_status(lab, cli):
    write_site(cli.site)
    write_state(cli.state)
    db = NodeStateDB(cli.state / "nodes.sqlite")
    with Serve(lab, cli) as srv:
        n1 = lab.host(ip=NODES["node01"][0], mac=NODES["node01"][1])
        n2 = lab.host(ip=NODES["node02"][0], mac=NODES["node02"][1])

        def post(ns, body):
            node = "node01" if ns is n1 else "node02"
            out = curl(
                ns,
                *PRIV,
                *auth(node),
                "-w",
                "\n%{http_code}",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                json.dumps(body),
                f"{srv.url}/api/v1/facts",
            ).stdout
            text, _, code = out.rpartition("\n")
            return code, text

        assert post(n1, GOOD) == ("200", json.dumps({"node": "node01", "facts": 4}))
        for report, reason in HOSTILE:
            code, text = post(n1, report)
            assert code == "400" and text.startswith("facts refused: node01: ") and reason in text, (report, text)
        srv.wait_log("facts refused")
        good2 = {**GOOD, "slurmd_C": GOOD["slurmd_C"].replace("node01", "node02"), "rdma": ["mlx5_0"]}
        assert post(n2, good2)[0] == "200"
    assert db.facts("node01") == GOOD  # the last good report stands
    assert (db.facts("node02") or {}).get("rdma") == ["mlx5_0"]
    assert (db.facts("node02") or {}).get("cpus") == 8
    status = {r["node"]: r for r in json.loads(cli("status", "--json").stdout)}
    assert status["node01"]["stage"] == "facts-rejected" and status["node02"]["stage"] == "registered"
    steps = json.loads(cli("status", "node01", "--timeline", "--json").stdout)
    assert steps[-1]["stage"] == "facts-rejected" and "is not a whole number" in steps[-1]["detail"]


def test_render_skips_bad_stored_facts_and_keeps_the_rest(cli):
    cli.site.mkdir()
    (cli.site / "cluster.yaml").write_text(INVENTORY)
    db = NodeStateDB(cli.state / "nodes.sqlite")
    db.set_facts("c01", facts_for("c01"))
    db.set_facts("c02", {"cpus": "\u00b2"})  # int() raises on it: the old render crashed
    db.set_facts("c03", {"slurmd_C": facts_for("c03")["slurmd_C"].replace("CPUs=8", "CPUs=99999")})
    db.close()
    res = cli("slurm", "render")
    assert "NodeName=c01 CPUs=8 " in res.stdout and "PartitionName=batch Nodes=c01 " in res.stdout
    assert "NodeName=c02 State=FUTURE" in res.stdout and "NodeName=c03 State=FUTURE" in res.stdout
    assert "99999" not in res.stdout
    assert "warning: c02: facts cpus='\u00b2'" in res.stderr and "warning: c03: facts CPUs='99999'" in res.stderr
    assert cli("mpi", "hostfile", "--partition", "batch").stdout.startswith("c01 slots=8\nc02 slots=1\nc03 slots=1\n")


@pytest.mark.netns
@pytest.mark.daemons
def test_a_real_slurmctld_keeps_running_and_the_other_nodes_their_facts():
    nodes = ["node01", "node02", "node03"]
    with slurm_cluster(CLUSTER) as sl:
        for name in nodes:
            sl.boot(name)
        sl.wait_idle(nodes)
        conf = sl.conf_dir / "slurm.conf"
        before = conf.read_text()
        url = f"http://{sl.inv.cluster.network.master}:{sl.inv.cluster.ports.http}/api/v1/facts"
        real = sl.db.facts("node02")
        assert real is not None
        for bad in ("CPUs=99999", "CPUs=\uff18", "CPUs=\u00b2"):
            body = json.dumps({**real, "slurmd_C": real["slurmd_C"].replace(f"CPUs={real['cpus']}", bad)})
            res = sl.nodes["node02"].run(
                [
                    *NODE_CURL,
                    "-sS",
                    "--local-port",
                    "600-1023",
                    "-w",
                    "\n%{http_code}",
                    "-H",
                    "Content-Type: application/json",
                    "--data",
                    body,
                    url,
                ]
            )
            assert res.stdout.endswith("\n400") and "facts refused: node02" in res.stdout, res.stdout
        # The node's own facts script, on a node whose slurmd -C says 99999 CPUs: it stops at the
        # 400 and logs the master's reason instead of retrying for a minute.
        fake = (
            "mkdir -p /tmp/fake && printf '#!/bin/sh\\necho NodeName=node02 CPUs=99999 RealMemory=900\\n' "
            "> /tmp/fake/slurmd && chmod +x /tmp/fake/slurmd && PATH=/tmp/fake:$PATH provisioner-facts"
        )
        res = sl.nodes["node02"].run(["sh", "-c", fake], check=False, timeout=20)
        assert res.returncode == 1, res.stderr
        assert "provisioner-facts: the master refused the facts: facts refused: node02: facts cpus=99999" in res.stderr
        assert sl.db.facts("node02") == real
        # A database from before the checks: node03's stored facts break the rules. Its line
        # keeps the hardware accepted at its first report (test_slurm_render covers a node
        # whose first report is broken: it stays FUTURE).
        stored = sl.db.facts("node03")
        assert stored is not None
        sl.db.set_facts("node03", {**stored, "cpus": "\u00b2"})
        warned = "warning: node03: facts cpus='\u00b2' is not a whole number from 1 to 65533 (slurm.conf keeps"
        sl.wait(lambda: warned in (sl.work / "master" / "watcher.out").read_text(), "the watcher's warning")
        assert sl.watcher.poll() is None and sl.serve.poll() is None
        assert "Traceback" not in (sl.work / "master" / "watcher.out").read_text()
        text = conf.read_text()
        assert "99999" not in text and text == before
        assert sorted(sl.ctl.run(["srun", "-N3", "hostname"]).stdout.split()) == nodes
        sl.report_facts("node03")  # its real facts again: nothing changes
        sl.wait_idle(nodes)
        assert conf.read_text() == before
