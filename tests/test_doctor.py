"""`provisioner doctor NODE` against a real serve (DHCP, TFTP, HTTP) and real clients in
namespaces standing in for nodes (no qemu: each break is at a link a client can reach on its
own). One node goes through every link; each other node is broken at one link (an unknown
MAC, a missing boot file named by DHCP, a missing boot script, an image version no NFS export
lists, another MUNGE key and a skewed clock, an overlay asked for from an unprivileged port),
and doctor must name that link first, with its evidence and fix."""

import hashlib
import json
import os
import re
import time

import pytest

from labs.serve import CREDENTIALS, IMAGE, NODES, SERVER_IP, Serve, curl, plant, write_state
from labs.services import until
from labs.site import node, numbered, site_yaml, write_site
from labs.slurm import lab_site, slurm_cluster
from provisioner.artifacts import layout, secrets
from provisioner.paths import State

pytestmark = pytest.mark.netns

TFTP_PORT = 6969
PXE_VENDOR = "PXEClient:Arch:00000:UNDI:002001"
ADDRESS = {  # name: (ip, mac); node01 and node02 are the serve lab's
    **NODES,
    "node03": ("10.99.0.13", "52:54:00:aa:00:03"),
    "node04": ("10.99.0.14", "52:54:00:aa:00:04"),
    "node05": ("10.99.0.15", "52:54:00:aa:00:05"),
    "node06": ("10.99.0.16", "52:54:00:aa:00:06"),
    "node07": ("10.99.0.17", "52:54:00:aa:00:07"),
}
STRANGER_MAC = "52:54:00:bb:00:02"  # node02's real NIC, which the inventory does not know
PRIVILEGED = ("--local-port", "600-1023")


def setup_state(cli) -> str:
    """The lab's artifacts plus: img1's root, an image img2 whose version is complete but not
    current (so no export lists it), node04's boot script pinning it, node05's credential and
    node06's overlay (node03 has no boot script at all). Returns the master's MUNGE key hash."""
    write_state(cli.state)
    state = State(cli.state)
    layout.image_rootfs(state, IMAGE, "v1").mkdir()
    v1 = layout.image_dir(state, "img2", "v1")
    for name in ("vmlinuz", "initramfs.img"):
        plant(v1 / name, os.urandom(4096))
    (v1 / "rootfs").mkdir()
    script = f"#!ipxe\nkernel http://{SERVER_IP}:8080/images/img2/versions/v1/vmlinuz provisioner.node=node04\nboot\n"
    plant(layout.ipxe_script(state, "node04"), script.encode())
    plant(layout.overlay_archive(state, "node06"), os.urandom(256))
    plant(layout.boot_dir(state) / "undionly.kpxe", os.urandom(70000))
    (cli.state / "secrets" / "credentials" / "node05").write_text(CREDENTIALS["node01"])
    return hashlib.sha256(secrets.munge_key(state)).hexdigest()


def dhcp(ns, *extra: str) -> None:
    ns.run(["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "4", "-T", "1", "-s", "/bin/true", *extra])


def report(ns, srv, what: str, body: dict, credential: str) -> None:
    """A node-API call as the initramfs and the facts script make it: privileged source port,
    the node's credential."""
    code = curl(
        ns,
        *PRIVILEGED,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        f"Authorization: Bearer {credential}",
        "-H",
        "Content-Type: application/json",
        "--data",
        json.dumps(body),
        f"{srv.url}/api/v1/{what}",
    ).stdout
    assert code == "200", (what, code)


def doctor(cli, name):
    res = cli("doctor", name, "--json", check=False)
    assert res.returncode in (0, 1), res.stderr
    return res.returncode, json.loads(res.stdout)


def checks(found):
    return {c["link"]: c for c in found["checks"]}


def wait_doctor(cli, name, done):
    """doctor's answer once the servers' batched writes show what `done` waits for."""
    last: list[tuple[int, dict]] = []

    def attempt():
        last[:] = [doctor(cli, name)]
        return done(last[0][1])

    assert until(attempt, 60), f"doctor {name} never saw it:\n{json.dumps(last[0][1], indent=1)}"
    return last[0]


def test_doctor_names_the_broken_link_and_the_fix(lab, cli):
    nodes = [node(n, ip, mac) for n, (ip, mac) in ADDRESS.items()]
    nodes[3]["image"] = "img2"
    nodes[6]["boot_files"] = {"bios": "missing.kpxe"}
    write_site(cli.site, site_yaml(nodes, {"default": {"image": IMAGE}}, domain="lab.cluster", secure=True))
    master_key = setup_state(cli)
    tftp = f"tftp://{SERVER_IP}:{TFTP_PORT}"
    with Serve(lab, cli, services="dhcp,tftp,http", extra=("--tftp-port", str(TFTP_PORT), "--interface", "br0")) as srv:
        ns = {}
        for name, (_ip, mac) in ADDRESS.items():
            ns[name] = lab.host(mac=STRANGER_MAC if name == "node02" else mac)
        # node02: a NIC the inventory does not know PXE-boots; nobody answers it.
        ns["node02"].run(
            [
                "busybox",
                "udhcpc",
                "-i",
                "eth0",
                "-n",
                "-q",
                "-f",
                "-t",
                "2",
                "-T",
                "1",
                "-s",
                "/bin/true",
                "-V",
                PXE_VENDOR,
            ],
            check=False,
        )
        for name, (ip, _mac) in ADDRESS.items():
            if name != "node02":
                dhcp(ns[name], *(("-V", PXE_VENDOR) if name in ("node01", "node07") else ()))
                ns[name].run(["ip", "addr", "add", f"{ip}/24", "dev", "eth0"])

        # node01 passes every link it can without Slurm.
        n1 = ns["node01"]
        curl(n1, "-o", "/dev/null", f"{tftp}/undionly.kpxe")
        curl(n1, "-o", "/dev/null", f"{tftp}/boot.ipxe")
        for f in ("vmlinuz", "initramfs.img"):
            curl(n1, "-o", "/dev/null", f"{srv.url}/images/{IMAGE}/{f}")
        curl(n1, *PRIVILEGED, "-o", "/dev/null", f"{srv.url}/overlays/node01.cpio.gz")
        cred = CREDENTIALS["node01"]
        report(
            n1, srv, "stage", {"stage": "root", "detail": f"nfs:{SERVER_IP}:/images/{IMAGE}/versions/v1/rootfs"}, cred
        )
        report(n1, srv, "stage", {"stage": "overlay", "detail": "applied"}, cred)
        report(
            n1, srv, "facts", {"cpus": 2, "memory_mb": 900, "munge_key_sha256": master_key, "clock": time.time()}, cred
        )
        # node03: its boot script is missing.
        assert curl(ns["node03"], "-o", "/dev/null", f"{tftp}/boot.ipxe", check=False).returncode != 0
        # node04: boots img2 v1, which no NFS export lists (img2 has no current version).
        curl(ns["node04"], "-o", "/dev/null", f"{tftp}/boot.ipxe")
        for f in ("vmlinuz", "initramfs.img"):
            curl(ns["node04"], "-o", "/dev/null", f"{srv.url}/images/img2/versions/v1/{f}")
        # node05: another MUNGE key, and a clock two minutes fast.
        wrong = hashlib.sha256(b"not the cluster key").hexdigest()
        facts = {"cpus": 2, "memory_mb": 900, "munge_key_sha256": wrong, "clock": time.time() + 120}
        report(ns["node05"], srv, "facts", facts, CREDENTIALS["node01"])
        # node06: asks for its overlay from an unprivileged port.
        code = curl(ns["node06"], "-o", "/dev/null", "-w", "%{http_code}", f"{srv.url}/overlays/node06.cpio.gz")
        assert code.stdout == "403"

        rc, found = wait_doctor(cli, "node01", lambda f: checks(f)["registered"]["status"] == "PASS")
        c = checks(found)
        assert rc == 0 and found["ok"] and found["stopped_at"] is None, found
        for link in ("inventory", "dhcp", "bootloader", "boot script", "kernel", "initramfs", "image", "overlay"):
            assert c[link]["status"] == "PASS", c[link]
        assert c["dhcp"]["evidence"].endswith("10.99.0.11 pxe arch 0, boot file undionly.kpxe")
        assert "70000 bytes by TFTP" in c["bootloader"]["evidence"]
        assert c["root"]["status"] == c["munge"]["status"] == c["clock"]["status"] == "PASS"
        assert c["slurm"]["status"] == "UNKNOWN"  # no slurmctld in this lab

        rc, found = wait_doctor(cli, "node02", lambda f: STRANGER_MAC in checks(f)["dhcp"]["evidence"])
        assert rc == 1 and found["stopped_at"] == "dhcp"
        assert "provisioner node set node02 --mac MAC" in checks(found)["dhcp"]["fix"]

        rc, found = wait_doctor(cli, "node03", lambda f: f["stopped_at"] == "boot script")
        c = checks(found)["boot script"]
        assert "TFTP boot.ipxe" in c["evidence"] and "not found" in c["evidence"]
        assert c["fix"] == "the file is missing: provisioner overlay build node03"

        rc, found = wait_doctor(cli, "node04", lambda f: checks(f)["initramfs"]["status"] == "PASS")
        assert rc == 1 and found["stopped_at"] == "image", found
        c = checks(found)["image"]
        assert "img2 has no current version" in c["evidence"] and "provisioner image rollback img2 v1" in c["fix"]

        rc, found = wait_doctor(cli, "node05", lambda f: f["stopped_at"] is not None)
        c = checks(found)
        assert found["stopped_at"] == "munge" and wrong[:16] in c["munge"]["evidence"], found
        assert "provisioner overlay build node05" in c["munge"]["fix"]
        said = re.search(r"was ([-+][0-9.]+) s", c["clock"]["evidence"])
        skew = float(said.group(1)) if said else 0.0
        assert c["clock"]["status"] == "FAIL" and 100 < skew <= 120, c["clock"]

        rc, found = wait_doctor(cli, "node06", lambda f: f["stopped_at"] == "overlay")
        c = checks(found)["overlay"]
        assert "refused: unprivileged source port" in c["evidence"] and "privileged source port" in c["fix"]

        # node07: its boot file (a boot_files override) is not in the boot tree, so DHCP names none.
        rc, found = wait_doctor(cli, "node07", lambda f: f["stopped_at"] == "dhcp")
        c = checks(found)["dhcp"]
        assert "but no boot file: missing.kpxe is not in the boot tree" in c["evidence"], c
        assert c["fix"] == "put it in the boot tree, or change boot_files"

        text = cli("doctor", "node06", check=False)
        assert text.returncode == 1 and text.stdout.rstrip().endswith("node06: stopped at overlay")
        assert "FAIL    overlay" in text.stdout and "fix: the node must fetch it" in text.stdout

    res = cli("doctor", "node99", check=False)
    assert res.returncode != 0 and "no such node: node99" in res.stderr


@pytest.mark.daemons
def test_doctor_reads_slurm_and_what_the_real_facts_script_reports():
    """Real slurmctld, slurmd and munged (the Slurm lab): node01 boots with the cluster's MUNGE
    key and is drained with a reason; node02 runs a stale key, so slurmctld never takes it.
    Both run the slurm overlay's own facts script, which reports the key's fingerprint and the
    clock: doctor holds the first against the master's key and names the drain and its reason."""
    with slurm_cluster(lab_site(numbered(2))) as sl:
        sl.boot("node01")
        sl.wait_idle(["node01"])
        sl.node("node02", munge_key=os.urandom(1024))
        sl.report_facts("node02")
        sl.ctl.run(["scontrol", "update", "NodeName=node01", "State=DRAIN", "Reason=disk swap"])

        def doctor_on_controller(name):
            res = sl.provisioner("doctor", name, "--json", check=False)
            assert res.returncode in (0, 1), res.stderr
            return checks(json.loads(res.stdout))

        c = doctor_on_controller("node01")
        assert c["munge"]["status"] == "PASS", c["munge"]
        assert c["clock"]["status"] == "PASS", c["clock"]
        assert c["registered"]["status"] == "PASS"
        assert c["slurm"]["status"] == "FAIL" and "reason: disk swap" in c["slurm"]["evidence"], c["slurm"]
        assert "State=RESUME" in c["slurm"]["fix"]
        assert c["inventory"]["status"] == "FAIL" and "no image" in c["inventory"]["evidence"]  # the lab's nodes

        c = doctor_on_controller("node02")
        assert c["munge"]["status"] == "FAIL", c["munge"]
        assert c["clock"]["status"] == "PASS"
