"""`provisioner status` after a scripted boot: a node walks the HTTP boot path with curl
(iPXE script, kernel, initramfs, overlay from a privileged port, stage and facts reports),
and the table, --json, --timeline (with the time each stage took) and --watch show it."""

import json
import os
import subprocess
import time
from typing import Any

import pytest

from labs.serve import IMAGE, NODES, Serve, auth, curl, write_site, write_state
from provisioner.nodestate import NodeStateDB
from provisioner.nodestate.summary import latest_boot, timeline

PRIV = ("--local-port", "700-900")


def scripted_boot(ns, url, mac):
    for path in (f"/boot/{mac}.ipxe", f"/images/{IMAGE}/vmlinuz", f"/images/{IMAGE}/initramfs.img"):
        curl(ns, "-o", "/dev/null", "--fail", url + path)
        time.sleep(0.05)
    curl(ns, "-o", "/dev/null", "--fail", *PRIV, f"{url}/overlays/node01.cpio.gz")
    # The reports carry the credential the overlay holds, as the initramfs and facts script send it.
    curl(
        ns,
        "--fail",
        *PRIV,
        *auth("node01"),
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        '{"stage": "overlay", "detail": "applied"}',
        f"{url}/api/v1/stage",
    )
    curl(
        ns,
        "--fail",
        *PRIV,
        *auth("node01"),
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        '{"stage": "switch-root", "detail": "nfs 10.99.0.1:/images/img1"}',
        f"{url}/api/v1/stage",
    )
    curl(
        ns,
        "--fail",
        *PRIV,
        *auth("node01"),
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        '{"slurmd": "NodeName=node01 CPUs=2", "cpus": 2}',
        f"{url}/api/v1/facts",
    )


@pytest.mark.netns
def test_status_and_timeline_after_a_scripted_boot(lab, cli):
    write_site(cli.site)
    write_state(cli.state)
    NodeStateDB(cli.state / "nodes.sqlite").record_stage("node01", "dhcp", "an older boot", at=time.time() - 600)
    NodeStateDB(cli.state / "nodes.sqlite").record_stage("node01", "registered", None, at=time.time() - 590)
    with Serve(lab, cli) as srv:
        ip, mac = NODES["node01"]
        n1 = lab.host(ip=ip, mac=mac)
        scripted_boot(n1, srv.url, mac)

    rows = {r["node"]: r for r in json.loads(cli("status", "--json").stdout)}
    assert rows["node01"]["stage"] == "registered" and rows["node01"]["ip"] == ip
    assert rows["node01"]["image"] == IMAGE and rows["node01"]["last_seen"] >= rows["node01"]["since"]
    assert rows["node02"]["stage"] is None

    table = cli("status", "node[01-02]").stdout.splitlines()
    assert table[0].split() == ["NODE", "STAGE", "SINCE", "IP", "IMAGE", "SLURM", "SEEN", "RUNTIME"]
    assert table[1].split()[:2] == ["node01", "registered"] and table[2].split()[:2] == ["node02", "-"]

    steps = json.loads(cli("status", "node01", "--timeline", "--json").stdout)
    assert [s["stage"] for s in steps] == ["ipxe", "kernel", "initramfs", "overlay", "switch-root", "registered"]
    assert all(s["took"] >= 0 for s in steps[:-1]) and steps[-1]["took"] is None
    assert steps[1]["detail"] == f"/images/{IMAGE}/vmlinuz"
    assert steps[3]["detail"] == "applied"  # the node's own report: the fetch is no stage of its own

    text = cli("status", "node01", "--timeline").stdout
    lines = text.splitlines()
    assert lines[0].split() == ["STAGE", "AT", "TOOK", "DETAIL"]
    assert [line.split()[0] for line in lines[1:7]] == [
        "ipxe",
        "kernel",
        "initramfs",
        "overlay",
        "switch-root",
        "registered",
    ]
    assert lines[1].split()[3].endswith("s") and lines[-1].startswith("total ")


def test_timeline_keeps_one_boot_together():
    def ev(*stages: str) -> list[dict[str, Any]]:
        return [{"stage": s, "at": float(i), "detail": None} for i, s in enumerate(stages)]

    boot = ["dhcp", "bootloader", "dhcp", "ipxe", "kernel", "initramfs", "dhcp", "overlay", "registered", "idle"]
    assert [e["stage"] for e in latest_boot(ev(*boot))] == boot
    two = ev("dhcp", "ipxe", "kernel", "dhcp", "bootloader", "bootloader", "dhcp", "ipxe", "kernel")
    assert [e["stage"] for e in latest_boot(two)] == ["dhcp", "bootloader", "bootloader", "dhcp", "ipxe", "kernel"]
    assert [e["stage"] for e in latest_boot(ev("ipxe", "kernel", "dhcp", "ipxe"))] == ["dhcp", "ipxe"]
    steps = timeline(ev("dhcp", "ipxe", "kernel"))
    assert [s.took for s in steps] == [1.0, 1.0, None]


def test_status_errors_and_watch(cli):
    write_site(cli.site)
    res = cli("status", "node09", check=False)
    assert res.returncode == 1 and "no such node or profile: node09" in res.stderr and "Traceback" not in res.stderr
    res = cli("status", "--timeline", check=False)
    assert res.returncode == 1 and "exactly one node" in res.stderr
    assert cli("status", "node02", "--timeline").stdout.strip() == "node02: no boot recorded"

    env = {**os.environ, "PROVISIONER_SITE": str(cli.site), "PROVISIONER_STATE": str(cli.state)}
    watch = subprocess.Popen(
        [cli.exe, "status", "--watch", "--interval", "0.2"], env=env, stdout=subprocess.PIPE, text=True
    )
    assert watch.stdout is not None
    try:
        seen: list[str] = []
        while sum("node01" in line for line in seen) < 2:
            seen.append(watch.stdout.readline())
        assert any("every 0.2s" in line for line in seen)
    finally:
        watch.terminate()
        watch.wait(timeout=10)


@pytest.mark.netns
def test_tftp_requests_mark_bootloader_and_ipxe_stages(lab, cli):
    write_site(cli.site)
    write_state(cli.state)
    (cli.state / "boot").mkdir(parents=True, exist_ok=True)
    (cli.state / "boot" / "undionly.kpxe").write_bytes(b"\x55\xaa" * 40000)
    with Serve(lab, cli, services="tftp,http", extra=("--tftp-port", "6969")) as srv:
        ip, mac = NODES["node01"]
        n1 = lab.host(ip=ip, mac=mac)
        tftp = "tftp://10.99.0.1:6969"
        curl(n1, "-o", "/dev/null", "--fail", f"{tftp}/undionly.kpxe")
        curl(n1, "-o", "/dev/null", "--fail", f"{tftp}/undionly.kpxe")  # a retry is no new stage
        time.sleep(0.05)
        curl(n1, "-o", "/dev/null", "--fail", f"{tftp}/boot.ipxe")
        time.sleep(0.05)
        curl(n1, "-o", "/dev/null", "--fail", f"{srv.url}/images/{IMAGE}/vmlinuz")
        stranger = lab.host(ip="10.99.0.79")
        curl(stranger, "-o", "/dev/null", "--fail", f"{tftp}/undionly.kpxe")
    steps = json.loads(cli("status", "node01", "--timeline", "--json").stdout)
    assert [(s["stage"], s["detail"]) for s in steps] == [
        ("bootloader", "tftp undionly.kpxe"),
        ("ipxe", "tftp boot.ipxe"),
        ("kernel", f"/images/{IMAGE}/vmlinuz"),
    ]
