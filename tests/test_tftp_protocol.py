"""Protocol corners no stock client reaches, with a raw UDP client in a lab namespace: OACK
contents, blksize limits, block rollover, duplicate ACKs, unknown TIDs, retransmission,
vanished clients, dynamic files, reply source addresses, stats, path safety."""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import struct
import time

import pytest

from labs.tftp import ServerThread, ack, fetch, in_ns, parse_oack, receive, rrq, sha
from provisioner.inventory import parse_text
from provisioner.logs import Logfmt
from provisioner.nodestate import NodeStateDB
from provisioner.servers.boottree import BootTree, StaticTree

pytestmark = pytest.mark.netns

SRV = ("10.99.0.1", 69)


@pytest.fixture
def env(lab, tmp_path):
    """Our server on the lab's server namespace over a root of random files; a client ns."""
    root = tmp_path / "root"
    root.mkdir()
    files = {"a.bin": os.urandom(200_000), "one.bin": os.urandom(100)}
    for name, data in files.items():
        (root / name).write_bytes(data)
    db = NodeStateDB(tmp_path / "state.sqlite")
    client = lab.host(ip="10.99.0.2")
    with ServerThread(lab.server, StaticTree(root), db, patience=2) as st:
        yield client, files, root, st, tmp_path / "state.sqlite"


def udp(timeout: float = 3.0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    return s


def first_reply(request: bytes, server=SRV) -> bytes:
    s = udp()
    s.sendto(request, server)
    data = s.recvfrom(70000)[0]
    s.close()
    return data


def test_no_options_means_no_oack(env):
    client, files, *_ = env
    reply = in_ns(client, first_reply, rrq("one.bin"))
    assert reply == b"\0\x03\0\x01" + files["one.bin"]


def test_oack_names_only_the_options_asked_for(env):
    client, *_ = env
    assert parse_oack(in_ns(client, first_reply, rrq("a.bin", tsize=0))) == {"tsize": "200000"}
    reply = in_ns(client, first_reply, rrq("a.bin", BLKSIZE=1468, timeout=2, windowsize=4, foo=1))
    assert parse_oack(reply) == {"blksize": "1468", "timeout": "2", "windowsize": "4"}


def test_bad_option_values_are_dropped_not_fatal(env):
    client, files, *_ = env
    reply = in_ns(client, first_reply, rrq("one.bin", blksize="abc", timeout=0, windowsize=-1, tsize="x"))
    assert reply[:4] == b"\0\x03\0\x01"
    data, oack, _ = in_ns(client, fetch, SRV, "a.bin", blksize=4, timeout=300, windowsize=7)
    assert oack == {"windowsize": "7"} and sha(data) == sha(files["a.bin"])


def test_blksize_65530_is_lowered_to_65464_and_works(env):
    """tftpy's own server dies sending a 65530-byte block ("Message too long")."""
    client, files, *_ = env
    data, oack, _ = in_ns(client, fetch, SRV, "a.bin", blksize=65530)
    assert oack["blksize"] == "65464" and sha(data) == sha(files["a.bin"])


@pytest.mark.parametrize("window", [1, 8, 64])
def test_windowsize_transfers_are_exact(env, window):
    client, files, *_ = env
    data, oack, _ = in_ns(client, fetch, SRV, "a.bin", blksize=1000, windowsize=window)
    assert oack["windowsize"] == str(window) and sha(data) == sha(files["a.bin"])


def test_block_numbers_roll_over_past_65535(env):
    client, _, root, *_ = env
    big = os.urandom(8 * 70_000 + 3)  # 70,001 blocks of 8 bytes
    (root / "roll.bin").write_bytes(big)
    data, _, _ = in_ns(client, fetch, SRV, "roll.bin", blksize=8, windowsize=64)
    assert sha(data) == sha(big)


def test_duplicate_ack_does_not_duplicate_data(env):
    """Answering each duplicate ACK at once is the sorcerer's apprentice bug."""
    client, *_ = env

    def run():
        s = udp()
        s.sendto(rrq("a.bin", timeout=5), SRV)
        _, tid = s.recvfrom(2000)
        s.sendto(ack(0), tid)
        assert s.recvfrom(2000)[0][:4] == b"\0\x03\0\x01"
        s.sendto(ack(1), tid)
        s.sendto(ack(1), tid)
        s.sendto(ack(1), tid)
        got = [s.recvfrom(2000)[0][:4]]
        s.settimeout(0.15)
        try:
            got.append(s.recvfrom(2000)[0][:4])
        except TimeoutError:
            pass
        return got

    assert in_ns(client, run) == [b"\0\x03\0\x02"]


def test_unknown_tid_gets_error_5_and_the_transfer_goes_on(env):
    client, files, *_ = env

    def run():
        s = udp()
        s.sendto(rrq("a.bin", blksize=1000), SRV)
        _, tid = s.recvfrom(2000)
        stranger = udp()
        stranger.sendto(ack(0), tid)
        err, src = stranger.recvfrom(2000)
        assert src == tid
        assert struct.unpack("!HH", err[:4]) == (5, 5)
        s.sendto(ack(0), tid)
        return receive(s, tid, s.recvfrom(2000)[0], 1000, 1)

    assert sha(in_ns(client, run)) == sha(files["a.bin"])


@pytest.mark.parametrize("ask_again", [False, True], ids=["silence", "request-again"])
def test_an_unanswered_oack_goes_again(env, ask_again):
    """Unanswered, the OACK goes again after two of the client's timers (it negotiated 1 s):
    its own ACK 0 resend comes first. A client that repeats its request never got the OACK,
    so that brings it again at once."""
    client, *_ = env

    def run():
        s = udp()
        s.sendto(rrq("one.bin", timeout=1), SRV)
        first, tid = s.recvfrom(2000)
        t0 = time.monotonic()
        if ask_again:
            time.sleep(0.3)  # a client's timer is never shorter than that
            t0 = time.monotonic()
            s.sendto(rrq("one.bin", timeout=1), SRV)
        again, tid2 = s.recvfrom(2000)
        waited = time.monotonic() - t0
        s.sendto(ack(0), tid)
        return first == again and first[:2] == b"\0\x06", tid == tid2, s.recvfrom(2000)[0][:4], waited

    same, same_tid, data, waited = in_ns(client, run)
    assert same and same_tid and data == b"\0\x03\0\x01"
    assert waited < 1.0 if ask_again else waited >= 1.9


def test_a_client_silent_for_longer_than_its_timer_still_finishes(lab, tmp_path):
    """atftp ignores our resends of a block it has and re-ACKs only when its own 5 s timer
    fires: with the default patience the transfer is still there then."""
    data = os.urandom(20_000)
    (tmp_path / "a.bin").write_bytes(data)
    client = lab.host(ip="10.99.0.2")

    def run():
        s = udp(10)
        s.sendto(rrq("a.bin"), SRV)  # no options: DATA 1 first, our default 1 s timeout
        first, tid = s.recvfrom(2000)
        time.sleep(5.5)  # our resends of DATA 1 queue up unread; receive() skips them
        return receive(s, tid, first, 512, 1)

    with ServerThread(lab.server, StaticTree(tmp_path)):
        assert sha(in_ns(client, run)) == sha(data)


@pytest.mark.parametrize("last_ack", [False, True], ids=["after-oack", "all-but-the-last-ack"])
def test_vanished_client_is_cleaned_up_and_recorded(env, last_ack):
    """A client gone after the OACK is a timeout; one gone after every block with only the
    final ACK missing most likely has the file (that ACK is never resent), and says so."""
    client, _, _, st, dbpath = env

    def run():
        s = udp()
        s.sendto(rrq("a.bin", timeout=1, blksize=65464), SRV)
        _oack, tid = s.recvfrom(2000)
        if last_ack:  # 200,000 bytes are 4 blocks: ACK the first three, never the last
            s.sendto(ack(0), tid)
            for n in (1, 2, 3):
                assert struct.unpack("!HH", s.recvfrom(70000)[0][:4]) == (3, n)
                s.sendto(ack(n), tid)
            assert struct.unpack("!HH", s.recvfrom(70000)[0][:4]) == (3, 4)
        s.close()

    in_ns(client, run)
    deadline = time.time() + 20
    while st.server.transfers and time.time() < deadline:
        time.sleep(0.1)
    assert not st.server.transfers and not st.server.strays
    st.stop()
    rows = sqlite3.connect(dbpath).execute("SELECT client, path, outcome, retransmits FROM transfers").fetchall()
    outcome = "sent, last ACK missing" if last_ack else "timeout"
    assert rows == [("10.99.0.2", "a.bin", outcome, rows[0][3])] and rows[0][3] >= 1


def tsize_probe(name: str) -> dict[str, str]:
    """What PXE ROMs do first: ask the size, then abort with an ERROR at the OACK."""
    s = udp()
    s.sendto(rrq(name, tsize=0), SRV)
    oack, tid = s.recvfrom(2000)
    s.sendto(b"\0\x05\0\x08size known\0", tid)
    return parse_oack(oack)


def test_stats_reach_the_node_state_store(env):
    client, _, _, st, dbpath = env
    in_ns(client, fetch, SRV, "a.bin", blksize=1468)
    in_ns(client, first_reply, rrq("missing.bin"))
    assert in_ns(client, tsize_probe, "one.bin") == {"tsize": "100"}
    deadline = time.time() + 5  # the probe's closing ERROR may still be in flight
    while st.server.transfers and time.time() < deadline:
        time.sleep(0.01)
    st.stop()
    rows = (
        sqlite3.connect(dbpath)
        .execute("SELECT protocol, client, path, bytes, outcome FROM transfers ORDER BY id")
        .fetchall()
    )
    assert rows == [
        ("tftp", "10.99.0.2", "a.bin", 200_000, "ok"),
        ("tftp", "10.99.0.2", "missing.bin", 0, "not found"),
        ("tftp", "10.99.0.2", "one.bin", 0, "size probe"),
    ]


def test_write_requests_and_escaping_paths_are_refused_and_logged(env, caplog):
    client, _, root, *_ = env
    outside = root.parent / "secret.txt"
    outside.write_text("secret")
    (root / "link").symlink_to(outside)
    caplog.set_level(logging.WARNING, logger="provisioner.tftp")
    wrq = b"\0\x02a.bin\0octet\0"
    assert in_ns(client, first_reply, wrq)[:4] == b"\0\x05\0\x02"
    for name in ("../secret.txt", "link", "a" * 300, "x/../../secret.txt"):
        assert in_ns(client, first_reply, rrq(name))[:4] == b"\0\x05\0\x02", name
    assert in_ns(client, first_reply, rrq("/etc/passwd"))[:4] == b"\0\x05\0\x01"
    assert in_ns(client, first_reply, b"\0\x01a.bin\0octet\0x\0")[:4] == b"\0\x05\0\x04"
    lines = [Logfmt().format(r) for r in caplog.records]
    assert sum("refused" in line for line in lines) >= 5, lines


def test_dynamic_files_from_the_resolver(lab, tmp_path):
    """tftpy's server crashes at the end of a dynamic file that is not a real file."""
    client = lab.host(ip="10.99.0.2")
    text = b"#!ipxe\nchain http://10.99.0.1/boot/${mac}.ipxe\n"

    def resolver(ip, path):
        if path == "broken":
            raise RuntimeError("a resolver bug")
        return text if path == "boot.ipxe" else None

    with ServerThread(lab.server, resolver):
        data, oack, _ = in_ns(client, fetch, SRV, "boot.ipxe", tsize=0)
        assert data == text and oack == {"tsize": str(len(text))}
        data, _, _ = in_ns(client, fetch, SRV, "boot.ipxe", mode="netascii")
        assert data == text.replace(b"\n", b"\r\n")
        assert in_ns(client, first_reply, rrq("other"))[:4] == b"\0\x05\0\x01"
        assert in_ns(client, first_reply, rrq("broken"))[:4] == b"\0\x05\0\x00"
        assert in_ns(client, fetch, SRV, "boot.ipxe")[0] == text


def test_replies_come_from_the_address_the_request_went_to(lab, tmp_path):
    """A multi-homed master: the client only accepts answers from where it sent."""
    (tmp_path / "f").write_bytes(b"x" * 10)
    lab.server.run(["ip", "addr", "add", "10.99.0.254/24", "dev", "br0"])
    client = lab.host(ip="10.99.0.2")
    with ServerThread(lab.server, StaticTree(tmp_path), listen="0.0.0.0"):
        for addr in ("10.99.0.1", "10.99.0.254"):
            data, _, tid = in_ns(client, fetch, (addr, 69), "f")
            assert tid[0] == addr and data == b"x" * 10
            assert in_ns(client, fetch_error_source, (addr, 69)) == addr


def fetch_error_source(server) -> str:
    s = udp()
    s.sendto(rrq("missing"), server)
    return s.recvfrom(2000)[1][0]


def test_shutdown_from_another_thread_ends_running_transfers(lab, tmp_path):
    (tmp_path / "f").write_bytes(os.urandom(10_000))
    client = lab.host(ip="10.99.0.2")
    st = ServerThread(lab.server, StaticTree(tmp_path))
    in_ns(client, first_reply, rrq("f"))  # leaves a transfer waiting for its ACK
    assert st.server.transfers
    st.stop()
    assert not st.thread.is_alive() and not st.server.transfers


def test_boot_tree_serves_each_node_its_own_files(lab, tmp_path):
    """The server as `provisioner serve` runs it: BootTree over a state dir and inventory."""
    from test_tftp_boottree import inventory, make_state

    inv = parse_text(inventory("10.99.0.0/24"), "cluster.yaml")
    tree = BootTree(make_state(tmp_path), inv)
    db = NodeStateDB(tmp_path / "state.sqlite")
    node01 = lab.host(ip="10.99.0.11")
    with ServerThread(lab.server, tree, db):
        script = node01.run(["curl", "-sSf", f"tftp://{SRV[0]}/boot.ipxe"]).stdout
        pxe = node01.run(["curl", "-sSf", f"tftp://{SRV[0]}/pxelinux.cfg/01-52-54-00-00-00-02"]).stdout
        kernel = node01.run(["curl", "-sSf", f"tftp://{SRV[0]}/images/debian12/vmlinuz"]).stdout
    assert (script, pxe, kernel) == ("ipxe node01", "pxe node02", "kernel")
    rows = sqlite3.connect(tmp_path / "state.sqlite").execute("SELECT node, path, outcome FROM transfers").fetchall()
    assert ("node01", "boot.ipxe", "ok") in rows and len(rows) == 3
