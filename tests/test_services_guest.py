"""The services nodes rely on, checked from inside one qemu guest (TCG) booted from
`provisioner serve` by the demo's machinery, with dnsmasq, chronyd and rsyslogd on the master
as `provisioner configure all` set them up: names (a node added while the guest runs resolves
there, forward and reverse, through the master), time (timesyncd's server is the master's
chrony), logs (`logger` on the guest is in `provisioner logs node01`, after the lines its
initramfs sent) and users (the demo's user from `cluster.users`, known to the master as an admin's
user would be: her ids, a job she submits with `srun` running as her, her shadow entry
readable by root alone, her SSH logins with her authorized key and with a certificate of the
site's user CA)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from provisioner.artifacts import layout, secrets
from provisioner.demo.run import PROVISIONER, Demo
from provisioner.demo.services import USER, USER_ID, chrony_socket, ssh_as_user, user_key

pytestmark = [pytest.mark.netns, pytest.mark.qemu, pytest.mark.daemons]

NODE02 = "10.77.0.12"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("svc-demo")
    said: list[str] = []
    d = Demo(work, nodes=1, timeout=900, echo=said.append)
    inv = d.write_site()
    d.build_image()
    d.build_artifacts()
    try:
        d.start_network()
        d.start_master(inv)
        d.start_services()
        d.boot_vms(inv)
        d.wait_idle(inv)
        yield d, inv, said
    finally:
        d.cleanup()


def on_node(d: Demo, script: str) -> str:
    assert d.master is not None
    res = d.master.run(["srun", "--mpi=none", "-w", "node01", "sh", "-c", script], timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout


def cli(d: Demo, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PROVISIONER_SITE": str(d.site.root), "PROVISIONER_STATE": str(d.state.root)}
    return subprocess.run([PROVISIONER, *args], capture_output=True, text=True, env=env, timeout=120)


def test_demo_says_one_line_per_service(demo):
    d, inv, said = demo
    d.check_services(inv)
    text = "\n".join(said)
    assert re.search(r"check +node01: dns master -> 10\.77\.0\.1 -> master\.demo\.cluster", text), text[-3000:]
    assert re.search(r"check +node01: ntp from 10\.77\.0\.1, chrony on the master", text), text[-3000:]
    assert re.search(r"check +node01: logs: its `logger` line is in `provisioner logs node01`", text), text[-3000:]
    assert re.search(
        r"check +node01: users: uid=2001\(alice\) gid=2001\(alice\) groups=.*2100\(research\) as on the master, "
        r"in her own `srun` too",
        text,
    )


def test_a_node_added_resolves_on_the_guest_forward_and_reverse(demo):
    d, _, _ = demo
    added = cli(d, "node", "add", "node02", "--ip", NODE02)
    assert added.returncode == 0 and "dns:" in added.stdout and "reloaded" in added.stdout, added
    try:
        deadline = time.monotonic() + 30
        out = ""
        while time.monotonic() < deadline:
            out = on_node(d, f"getent -s dns hosts node02; getent -s dns hosts {NODE02}; true")
            if "node02.demo.cluster" in out and out.count(NODE02) >= 2:
                break
            time.sleep(1)
        assert re.search(rf"^{NODE02}\s+node02\.demo\.cluster", out, re.M), out
        assert len(re.findall(rf"^{NODE02}\s+node02\.demo\.cluster", out, re.M)) == 2, out
    finally:
        cli(d, "node", "rm", "node02")


def test_the_guest_keeps_time_from_the_masters_chrony(demo):
    d, _, _ = demo
    out = on_node(d, "timedatectl timesync-status")
    assert re.search(r"Server: 10\.77\.0\.1\b", out), out
    assert d.master is not None
    clients = d.master.run(["chronyc", "-h", str(chrony_socket(d.master)), "-n", "clients"]).stdout
    assert "10.77.0.11" in clients, clients


def test_logger_on_the_guest_is_in_provisioner_logs(demo):
    d, _, _ = demo
    on_node(d, "logger -t svctest 'a line from the guest'")
    deadline = time.monotonic() + 20
    while "a line from the guest" not in (log := cli(d, "logs", "node01").stdout) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "svctest" in log and "a line from the guest" in log, log[-3000:]
    boot = cli(d, "logs", "node01", "--boot").stdout.splitlines()
    assert "provisioner: boot begins (node node01" in boot[0], boot[:5]
    assert any("switching to the image's init" in line for line in boot), boot[:40]


def test_the_masters_user_is_on_the_guest_and_logs_in_over_ssh(demo):
    """alice, of the scratch master's accounts the demo's cluster.users reads: the same ids and
    groups on the booted node, her password hash in a shadow file she cannot read, her keys in
    /etc/ssh/authorized_keys (an NFS /home cannot hide them); sshd on the node lets her in with
    her authorized key or a certificate from `secrets sign-user`, and with neither it does not."""
    d, inv, _ = demo
    accounts = Path(inv.cluster.users.root)
    out = on_node(
        d,
        f"getent passwd {USER}; echo \"id $(id {USER})\"; stat -c 'mode %a %U:%G %n' /etc/shadow "
        f"/etc/ssh/authorized_keys/{USER}; getent shadow {USER} | cut -d: -f1,2; "
        f'setpriv --reuid={USER} --regid={USER} --init-groups cat /etc/shadow 2>&1; echo "exit $?"',
    )
    lines = out.splitlines()
    assert f"{USER}:x:2001:2001:Demo user:/home/{USER}:/bin/bash" in lines, out
    assert f"id {USER_ID}" in lines, out
    assert "mode 640 root:shadow /etc/shadow" in lines, out
    assert f"mode 644 root:root /etc/ssh/authorized_keys/{USER}" in lines, out
    master_entry = ":".join((accounts / "etc/shadow").read_text().split(":")[:2])
    assert master_entry in lines, "her shadow entry is not the master's"
    assert "Permission denied" in out and "exit 1" in lines, out

    ip = str(inv.node("node01").ip)
    assert d.master is not None
    # (her authorized key and the demo's certificate got her in: test_demo_says_one_line_per_service)
    # A key of hers not in her authorized_keys: only a certificate lets it in. A copy, since ssh
    # also offers KEY-cert.pub beside a key by itself (the demo certified this one).
    key = d.work / "alice-key"
    shutil.copyfile(user_key(accounts, certified=True), key)
    key.chmod(0o600)
    shutil.copyfile(f"{user_key(accounts, certified=True)}.pub", f"{key}.pub")
    res = ssh_as_user(d.master, ip, key)
    assert res.returncode == 255 and "Permission denied" in res.stderr, res.stdout + res.stderr
    cert = d.work / "alice-cli-cert.pub"
    signed = cli(d, "secrets", "sign-user", USER, f"{key}.pub", "--validity", "-5m:+1h", "-o", str(cert))
    assert signed.returncode == 0, signed.stderr
    res = ssh_as_user(d.master, ip, key, cert)
    assert (res.returncode, res.stdout.strip()) == (0, USER_ID), res.stderr
    ca = layout.secrets_dir(d.state) / secrets.SSH_USER_CA
    assert oct(ca.stat().st_mode & 0o777) == "0o600"
