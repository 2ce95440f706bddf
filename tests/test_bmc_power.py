"""`provisioner power` and BMC passwords against real BMCs: OpenIPMI's ipmi_sim (powering a real
process through its chassis_control program), sushy-tools' Redfish emulator, and sockets that
answer nothing or garbage. Each node's failure is its own; passwords never leak."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from labs.bmc import IpmiSim, SushyEmulator, free_port
from labs.site import node, site_yaml, write_site
from provisioner.actions import power as power_action
from provisioner.bmc import Target, close_sessions, power
from provisioner.bmc.client import _explain

pytestmark = pytest.mark.netns

IPMI_PW = "ipmi-Secret-4711"
RF_PW = "redfish-Secret-0815"


class Junk:
    """A UDP and a TCP socket on loopback that answer every datagram or connection with junk."""

    def __init__(self) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(16)
        self.udp_port, self.tcp_port = self.udp.getsockname()[1], self.tcp.getsockname()[1]
        self.stop = False
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._udp, self._tcp)]
        for t in self.threads:
            t.start()

    def _udp(self) -> None:
        self.udp.settimeout(0.2)
        while not self.stop:
            try:
                data, peer = self.udp.recvfrom(2048)
            except OSError:
                continue
            self.udp.sendto(os.urandom(len(data) + 7), peer)

    def _tcp(self) -> None:
        self.tcp.settimeout(0.2)
        while not self.stop:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                continue
            with conn:
                try:
                    conn.recv(4096)
                    conn.sendall(b"\x00garbage\xff" * 50)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop = True
        for t in self.threads:
            t.join()
        self.udp.close()
        self.tcp.close()


@pytest.fixture(scope="module")
def peers(tmp_path_factory) -> Iterator[dict]:
    work = tmp_path_factory.mktemp("bmc-peers")
    opened: list = []
    try:
        a = IpmiSim(work / "sim-a", password=IPMI_PW)
        opened.append(a)
        b = IpmiSim(work / "sim-b", password=IPMI_PW)
        opened.append(b)
        rf = SushyEmulator(work / "redfish", password=RF_PW)
        opened.append(rf)
        tls = SushyEmulator(work / "redfish-tls", password=RF_PW, tls=True)
        opened.append(tls)
        junk = Junk()
        opened.append(junk)
        yield {"a": a, "b": b, "rf": rf, "tls": tls, "junk": junk, "nobody": free_port()}
    finally:
        for p in reversed(opened):
            p.close()


def bmc_site(cli, peers) -> None:
    lo = "127.0.0.1"
    write_site(
        cli.site,
        nodes=[
            node("n1", "10.87.0.11", bmc=lo, bmc_port=peers["a"].port, profiles=["rack"]),
            node("n2", "10.87.0.12", bmc=lo, bmc_port=peers["b"].port, profiles=["rack"]),
            node("n3", "10.87.0.13", bmc=lo, bmc_port=peers["rf"].port, bmc_protocol="redfish-http"),
            node("n4", "10.87.0.14", bmc=lo, bmc_port=peers["nobody"], profiles=["rack"]),
            node("n5", "10.87.0.15", bmc=lo, bmc_port=peers["junk"].udp_port, profiles=["rack"]),
            node("n6", "10.87.0.16", bmc=lo, bmc_port=peers["a"].port, profiles=["rack"]),
            node("n7", "10.87.0.17", bmc=lo, bmc_port=peers["junk"].tcp_port, bmc_protocol="redfish-http"),
            node("n8", "10.87.0.18", bmc=lo, bmc_port=peers["b"].port),
            node("n9", "10.87.0.19"),
            node("n10", "10.87.0.20", bmc=lo, bmc_port=peers["tls"].port, bmc_protocol="redfish"),
        ],
        profiles={"rack": {"bmc_protocol": "ipmi", "bmc_user": "admin"}},
        name="bmc",
        subnet="10.87.0.0/24",
        interface=None,
    )
    cli("secrets", "set-bmc", "--profile", "rack", input=IPMI_PW + "\n")
    cli("secrets", "set-bmc", "n3,n7,n10", input=RF_PW + "\n")
    cli("secrets", "set-bmc", "n6", input="wrong-password\n")


def results(res) -> dict[str, dict]:
    return {o["node"]: o for o in json.loads(res.stdout)}


def test_set_bmc_stores_private_and_check_warns(cli, peers):
    bmc_site(cli, peers)
    d = cli.state / "secrets" / "bmc"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for f in (d / "profiles" / "rack", d / "nodes" / "n3", d / "nodes" / "n6"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert (d / "profiles" / "rack").read_text() == IPMI_PW
    res = cli("check")
    assert "warning: 1 node(s) have a BMC but no BMC password" in res.stderr and res.stderr.rstrip().endswith("n8")
    shown = cli("secrets", "show", "--json").stdout
    assert IPMI_PW not in shown and RF_PW not in shown
    bad = cli("secrets", "set-bmc", "n1", input="\n", check=False)
    assert bad.returncode == 1 and "BMC password is 1 to" in bad.stderr
    assert cli("secrets", "set-bmc", "nope", input="x\n", check=False).returncode != 0


def test_power_each_node_alone(cli, peers):
    """One run over working and broken BMCs: each node its own line, exit status 1, and the
    status follows real power changes of the machine ipmi_sim starts and stops."""
    bmc_site(cli, peers)
    a, b = peers["a"], peers["b"]
    t0 = time.monotonic()
    res = cli("power", "status", "n[1-10]", "--json", "--timeout", "8", "--retries", "0", check=False)
    took = time.monotonic() - t0
    assert res.returncode == 1 and res.stderr == "6 of 10 node(s) failed\n"
    out = results(res)
    assert out["n1"]["ok"] and out["n1"]["state"] == "off"
    assert out["n2"]["ok"] and out["n2"]["state"] == "off"
    assert out["n3"]["ok"] and out["n3"]["state"] in ("on", "off")
    assert out["n10"]["ok"] and out["n10"]["state"] in ("on", "off"), out["n10"]  # https, self-signed
    assert "did not answer" in out["n4"]["error"]
    assert "did not answer" in out["n5"]["error"]
    assert "refused user 'admin' and its password" in out["n6"]["error"]
    assert "answered something that is not redfish" in out["n7"]["error"]
    assert "no BMC password" in out["n8"]["error"] and "set-bmc n8" in out["n8"]["error"]
    assert "no BMC address" in out["n9"]["error"]
    # the broken BMCs are waited for at once: within one deadline (8 s) and the start-up
    assert took < 25, f"the broken BMCs were waited for one after another ({took:.1f} s)"
    for secret in (IPMI_PW, RF_PW, "wrong-password"):
        assert secret not in res.stdout + res.stderr

    res = cli("power", "on", "n1,n2")
    assert res.stdout.splitlines() == ["n1: on", "n2: on"]
    assert a.machine_pid() and b.machine_pid()
    assert cli("power", "status", "n1").stdout == "n1: on\n"
    cli("power", "pxe", "n1", "--persistent")
    assert (a.dir / "boot").read_text() == "pxe"
    # the cycle ends with the node on again, so the off just after is not undone by the BMC's
    # pending power-on (ipmi_sim powers on 1 s after the off, as real BMCs do)
    assert cli("power", "cycle", "n1").stdout == "n1: on\n"
    res = cli("power", "off", "n1,n2")
    assert res.stdout.splitlines() == ["n1: off", "n2: off"]
    assert a.machine_pid() is None and b.machine_pid() is None
    assert results(cli("power", "status", "n1,n2", "--json"))["n1"]["state"] == "off"


def test_power_stagger_spreads_power_ons(cli, peers):
    bmc_site(cli, peers)
    t0 = time.monotonic()
    cli("power", "on", "n1,n2", "--stagger", "1.5")
    assert time.monotonic() - t0 >= 1.5
    cli("power", "off", "n1,n2")


def test_redfish_power_and_boot_override(cli, peers):
    """sushy-tools' fake driver applies a change 1-11 s after the request."""
    bmc_site(cli, peers)
    target = Target("n3", "redfish-http", "127.0.0.1", peers["rf"].port, "admin", RF_PW)
    cli("power", "pxe", "n3")
    assert cli("power", "on", "n3").stdout in ("n3: on\n",)
    deadline = time.monotonic() + 20
    while power(target, "status") != "on":
        assert time.monotonic() < deadline, "the emulator never reported the node on"
        time.sleep(1)
    assert cli("power", "status", "n3").stdout == "n3: on\n"
    import sushy
    from sushy import auth

    conn = sushy.Sushy(f"http://127.0.0.1:{peers['rf'].port}", auth=auth.BasicAuth("admin", RF_PW))
    system = conn.get_system_collection().get_members()[0]
    assert system.boot.target == sushy.BootSource.PXE
    # The emulator keeps no BootSourceOverrideEnabled (it reports Continuous whatever is sent).
    cli("power", "off", "n3")


def test_ipmi_sessions_reopen_after_close(peers):
    """pyghmi hands a logged-out session to the next Command for the same BMC; close_sessions
    works around it, so a second round in one process (serve, the benchmark) logs in again."""
    t = Target("x", "ipmi", "127.0.0.1", peers["b"].port, "admin", IPMI_PW)
    for _ in range(3):
        assert power(t, "status") in ("on", "off")
        close_sessions()


def test_a_wrong_password_beside_a_good_one_on_one_bmc(peers):
    """Two logins to one BMC at once, one with a wrong password, round after round in one
    process: the good one gets its answer and the wrong one is told so. pyghmi shares one
    socket between them, and a failed login released it under the other's feet (under load
    the good one heard nothing, or the wrong one was reported as no answer); nor may a failed
    login stay behind to answer the next one."""
    port = peers["a"].port
    good = Target("n1", "ipmi", "127.0.0.1", port, "admin", IPMI_PW)
    bad = Target("n6", "ipmi", "127.0.0.1", port, "admin", "wrong-password")
    for _ in range(3):
        one, two = power_action.run_targets([good, bad], "status", power_action.Options(timeout=8, retries=0))
        assert one.ok and one.state in ("on", "off"), one
        assert not two.ok and "refused user 'admin' and its password" in str(two.error), two
        assert two.attempts == 1  # never retried: the account would lock sooner


def test_errors_are_told_by_their_words_not_by_the_bmcs_port():
    t = Target("n7", "redfish-http", "127.0.0.1", 40173, "admin", "pw-Secret")
    garbage = "Unable to connect to http://127.0.0.1:40173/redfish/v1/. Error: BadStatusLine('x')"
    assert "answered something that is not redfish" in str(_explain(t, Exception(garbage)))
    refused = "HTTP GET http://127.0.0.1:40173/redfish/v1/Systems returned code 401. unknown error"
    assert "refused user 'admin' and its password" in str(_explain(t, Exception(refused)))


def test_passwords_never_in_process_arguments(cli, peers):
    """While `power` waits on slow BMCs, no process's command line holds a BMC password."""
    bmc_site(cli, peers)
    env = {**os.environ, "PROVISIONER_SITE": str(cli.site), "PROVISIONER_STATE": str(cli.state)}
    proc = subprocess.Popen(
        [cli.exe, "power", "status", "all", "--timeout", "3", "--retries", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = 0
    try:
        while proc.poll() is None:
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    except OSError:
                        continue
                    seen += 1
                    for secret in (IPMI_PW, RF_PW, "wrong-password"):
                        assert secret.encode() not in cmdline, f"pid {pid} shows a BMC password"
            time.sleep(0.2)
    finally:
        out, err = proc.communicate(timeout=60)
    assert seen and proc.returncode == 1
    for secret in (IPMI_PW, RF_PW, "wrong-password"):
        assert secret not in out + err


def test_removed_nodes_lose_their_bmc_password(tmp_path):
    """A node gone from the inventory is `departed` while its BMC password remains; `forget`
    deletes it with its other secrets. A profile's password stays."""
    from provisioner.artifacts import secrets
    from provisioner.inventory import parse_text
    from provisioner.paths import State

    state = State(tmp_path / "state")
    secrets.set_bmc_password(state, ["gone", "kept"], "pw-Secret-1")
    secrets.set_bmc_password(state, ["rack"], "pw-Secret-2", profile=True)
    inv = parse_text(
        site_yaml(
            [node("kept", "10.87.0.11", bmc="10.0.0.1", profiles=["rack"])],
            {"rack": {"bmc_user": "root"}},
            subnet="10.87.0.0/24",
            interface=None,
        ),
        "cluster.yaml",
    )
    assert secrets.departed(state, inv) == {"gone"}
    secrets.forget(state, ["gone"])
    assert not (state.secrets / "bmc" / "nodes" / "gone").exists()
    kept = inv.node("kept")
    assert kept is not None and secrets.bmc_password(state, kept) == "pw-Secret-1"
    os.unlink(state.secrets / "bmc" / "nodes" / "kept")
    assert secrets.bmc_password(state, kept) == "pw-Secret-2"
