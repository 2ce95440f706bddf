"""`provisioner tftp` against the real TFTP clients, in a lab namespace: curl, tftp-hpa, atftp,
busybox; every download is compared by sha256. Also under 10% random loss each way."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from labs.tftp import file_sha

pytestmark = pytest.mark.netns

FILES = {"big.bin": 3_000_003, "exact.bin": 512 * 40, "empty.bin": 0, "small.bin": 100_000}


@pytest.fixture
def served(lab, cli, tmp_path):
    """A root with test files, `provisioner tftp` serving it on the lab server's port 69,
    and one client namespace. Yields (client, root, out_dir)."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    for name, size in FILES.items():
        (root / name).write_bytes(os.urandom(size))
    (root / "sub" / "text.txt").write_bytes(b"line one\nline two\r\nbare\rcr\n" * 500)
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(tmp_path, 0o755)
    proc = lab.server.popen(
        [cli.exe, "tftp", "--root", str(root), "--listen", lab.server_ip, "-v"],
        log=tmp_path / "server.log",
    )
    deadline = time.time() + 10
    while ":69 " not in lab.server.run(["ss", "-uln"]).stdout:
        assert proc.poll() is None, (tmp_path / "server.log").read_text()
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    client = lab.host(ip="10.99.0.2")
    yield client, root, out
    proc.terminate()
    proc.wait(10)


def clients(server: str, name: str, dest: Path) -> dict[str, str]:
    """Shell command per client downloading `name` to dest/<client>."""
    return {
        "curl": f"curl -sSf -o {dest}/curl tftp://{server}/{name}",
        "curl-blksize": f"curl -sSf --tftp-blksize 1468 -o {dest}/curl-blksize tftp://{server}/{name}",
        "tftp-hpa": f"cd {dest} && tftp -m binary {server} -c get {name} tftp-hpa",
        "atftp-window": f"atftp --option 'windowsize 16' --option 'blksize 1468' -g -r {name} "
        f"-l {dest}/atftp-window {server}",
        "atftp": f"atftp --option 'blksize 8192' -g -r {name} -l {dest}/atftp {server}",
        "busybox": f"busybox tftp -b 1468 -g -r {name} -l {dest}/busybox {server}",
    }


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_client_gets_exact_bytes(served, lab, name):
    client, root, out = served
    for label, cmd in clients(lab.server_ip, name, out).items():
        if name == "empty.bin" and label.startswith("curl"):
            continue  # curl 7.88 fails any empty download (tftpd-hpa too): getpeername() bug
        res = client.run(["sh", "-c", cmd], check=False, timeout=120)
        assert res.returncode == 0, f"{label}: {res.stdout}{res.stderr}"
        assert file_sha(out / label) == file_sha(root / name), label


def test_netascii_round_trips_with_tftp_hpa(served, lab):
    client, root, out = served
    client.run(["sh", "-c", f"cd {out} && tftp -m ascii {lab.server_ip} -c get sub/text.txt text.txt"])
    assert (out / "text.txt").read_bytes() == (root / "sub" / "text.txt").read_bytes()


def test_curl_sees_errors_for_missing_escaping_and_writes(served, lab):
    """curl's exit codes name the TFTP error: 68 file not found, 69 access violation."""
    client, root, out = served
    srv = lab.server_ip

    def curl(*args: str) -> int:
        return client.run(["curl", "-sS", "--path-as-is", *args], check=False).returncode

    assert curl("-o", str(out / "x"), f"tftp://{srv}/nope.bin") == 68
    assert curl("-o", str(out / "x"), f"tftp://{srv}/../../../etc/passwd") == 69
    assert curl("-o", str(out / "x"), f"tftp://{srv}/sub/../../etc/hostname") == 69
    (out / "up.bin").write_bytes(b"data")
    assert curl("-T", str(out / "up.bin"), f"tftp://{srv}/up.bin") == 69
    assert not (root / "up.bin").exists()


def test_every_client_completes_under_ten_percent_loss(served, lab):
    """netem is not built into this kernel; iptables' statistic match drops the same way:
    10% of UDP datagrams at random, in each direction. Both drops are on arrival (INPUT), as
    on a wire: a drop on OUTPUT would fail the sender's sendto() instead of losing silently."""
    client, root, out = served
    drop = ["-p", "udp", "-m", "statistic", "--mode", "random", "--probability", "0.10", "-j", "DROP"]
    client.run(["iptables", "-A", "INPUT", *drop])
    lab.server.run(["iptables", "-A", "INPUT", "-s", "10.99.0.2", *drop])
    cmds = clients(lab.server_ip, "small.bin", out)
    procs = {label: client.popen(["sh", "-c", cmd]) for label, cmd in cmds.items()}
    for label, p in procs.items():
        output = p.communicate(timeout=300)[0]
        assert p.returncode == 0, f"{label}: {output!r}"
    for label in cmds:
        assert file_sha(out / label) == file_sha(root / "small.bin"), label


def test_standalone_command_refuses_a_bad_listen_address(cli, tmp_path):
    res = cli("tftp", "--root", tmp_path, "--listen", "not-an-ip", check=False)
    assert res.returncode == 1 and "listen" in res.stderr and "Traceback" not in res.stderr


def test_standalone_command_stops_cleanly_on_sigterm(lab, cli, tmp_path):
    """With three worker processes: all of them serve, and all of them stop."""
    (tmp_path / "f").write_bytes(b"payload" * 1000)
    proc = lab.server.popen(
        [cli.exe, "tftp", "--root", str(tmp_path), "--listen", lab.server_ip, "--port", "6969", "--workers", "3"],
        stdout=subprocess.PIPE,
    )
    deadline = time.time() + 10
    while ":6969 " not in lab.server.run(["ss", "-uln"]).stdout:
        assert time.time() < deadline
        time.sleep(0.05)
    client = lab.host(ip="10.99.0.2")
    out = tmp_path / "out"
    for i in range(12):  # distinct source ports: the kernel spreads them over the workers
        client.run(["curl", "-sSf", "-o", f"{out}{i}", f"tftp://{lab.server_ip}:6969/f"])
        assert (tmp_path / f"out{i}").read_bytes() == b"payload" * 1000
    assert len(lab.server.pids()) == 3
    # A second server on the port is refused: SO_REUSEPORT alone would let it share the port.
    again = lab.server.run(
        [cli.exe, "tftp", "--root", str(tmp_path), "--listen", lab.server_ip, "--port", "6969", "--workers", "2"],
        check=False,
        timeout=30,
    )
    assert again.returncode == 1 and "Address already in use" in again.stderr, again.stderr
    assert len(lab.server.pids()) == 3
    proc.terminate()
    assert proc.wait(10) == 0
    deadline = time.time() + 5
    while lab.server.pids() and time.time() < deadline:
        time.sleep(0.05)
    assert not lab.server.pids()
