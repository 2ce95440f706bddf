"""TFTP worker processes in `provisioner serve`: they share the port (SO_REUSEPORT) with serve's
own TFTP server, each transfer whole and recorded, every one follows a reload before serve
says "reloaded", they end with serve (SIGTERM or serve killed), a dying worker fails the TFTP
service (which serve starts again), and a second serve on the same port is refused instead
of quietly sharing it."""

import os
import re
import signal
import time

import pytest

from labs.serve import IMAGE, NODES, SERVER_IP, Serve, set_limits, sha256, write_site, write_state
from provisioner.nodestate import NodeStateDB
from provisioner.paths import State
from test_serve_reload import NODE03, add_node03

pytestmark = pytest.mark.netns

PORT = 6969
CLIENTS = 30  # with 3 processes, one left without a transfer is a 3 * (2/3)**30 chance


def tftp_ok(line: str) -> bool:
    return "logger=tftp msg=transfer" in line and "outcome=ok" in line


def worker_pids(srv) -> list[int]:
    line = srv.wait_log("logger=tftp msg=workers")
    pids = re.search(r"pids=([\d,]+)", line)
    assert pids, line
    return [int(p) for p in pids.group(1).split(",")]


def fetch_all(ns, path: str, n: int) -> list[str]:
    """n concurrent TFTP downloads of `path` (each from its own client port): their sha256s."""
    out = ns.run(
        [
            "sh",
            "-c",
            f"for i in $(seq {n}); do (curl -sS --fail tftp://{SERVER_IP}:{PORT}/{path} | sha256sum) & done; wait",
        ],
        timeout=120,
    ).stdout
    return [line.split()[0] for line in out.splitlines()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def gone(pids: list[int], timeout: float = 10) -> bool:
    deadline = time.time() + timeout
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.05)
    return not any(alive(p) for p in pids)


def test_workers_share_the_port_follow_reloads_and_stop_with_serve(lab, cli):
    write_site(cli.site)
    set_limits(cli.site, tftp_per_client=CLIENTS * 3)  # one namespace stands in for 30 nodes
    files = write_state(cli.state)
    kernel = files[f"/images/{IMAGE}/vmlinuz"]
    with Serve(lab, cli, services="tftp,http", extra=("--tftp-port", str(PORT), "--tftp-workers", "3")) as srv:
        workers = worker_pids(srv)
        assert len(workers) == 2 and srv.proc.pid not in workers
        held = lab.server.run(["ss", "-Hulpn", f"sport = :{PORT}"]).stdout
        assert {int(p) for p in re.findall(r"pid=(\d+)", held)} >= set(workers), held

        n1 = lab.host(ip=NODES["node01"][0], mac=NODES["node01"][1])
        assert fetch_all(n1, f"images/{IMAGE}/vmlinuz", CLIENTS) == [sha256(kernel)] * CLIENTS
        deadline = time.time() + 10
        while len([ln for ln in srv.lines if tftp_ok(ln)]) < CLIENTS:
            assert time.time() < deadline, "\n".join(srv.lines)
            time.sleep(0.05)
        served = [ln for ln in srv.lines if tftp_ok(ln) and f"path=images/{IMAGE}/vmlinuz" in ln]
        by = {m.group(1) if (m := re.search(r"worker=(\d+)", ln)) else "serve" for ln in served}
        assert by == {"serve", *map(str, workers)}, served
        deadline = time.time() + 10
        while len([t for t in NodeStateDB(State(cli.state).db).transfers() if t["outcome"] == "ok"]) < CLIENTS:
            assert time.time() < deadline, "not every worker's transfers reached the node-state DB"
            time.sleep(0.1)

        # A node added to the inventory: by the time serve says "reloaded", every process
        # resolves its per-node file (node03's iPXE script, from its own address).
        mark = len(srv.lines)
        add_node03(cli)
        srv.signal(signal.SIGHUP)
        srv.wait_log("msg=reloaded", after=mark)
        n3 = lab.host(ip=NODE03[0], mac=NODE03[1])
        assert fetch_all(n3, "boot.ipxe", CLIENTS) == [sha256(b"#!ipxe\necho node03\n")] * CLIENTS

        assert srv.stop() == 0
    assert gone(workers)


def test_serve_killed_takes_its_workers_with_it(lab, cli):
    write_site(cli.site)
    write_state(cli.state)
    srv = Serve(lab, cli, services="tftp", extra=("--tftp-port", str(PORT), "--tftp-workers", "2"))
    workers = worker_pids(srv)
    srv.signal(signal.SIGKILL)
    srv.stop()
    assert gone(workers), "a worker outlived a killed serve"


def test_a_dying_worker_fails_the_tftp_service_which_serve_starts_again(lab, cli):
    write_site(cli.site)
    files = write_state(cli.state)
    srv = Serve(lab, cli, services="tftp", extra=("--tftp-port", str(PORT), "--tftp-workers", "2"))
    first = srv.pid_of("tftp")
    (worker,) = worker_pids(srv)
    mark = len(srv.lines)
    os.kill(worker, signal.SIGKILL)
    line = srv.wait_log("service failed", after=mark)
    assert f"TFTP worker {worker} exited with code -9" in line
    srv.wait_log("service ready again", after=mark)
    assert srv.pid_of("tftp", after=mark) != first and srv.proc.poll() is None
    n1 = lab.host(ip=NODES["node01"][0], mac=NODES["node01"][1])
    kernel = files[f"/images/{IMAGE}/vmlinuz"]
    assert fetch_all(n1, f"images/{IMAGE}/vmlinuz", 4) == [sha256(kernel)] * 4
    assert srv.stop() == 0
    assert gone([first, worker, *[int(p) for p in re.findall(r"pids=(\d+)", "\n".join(srv.lines[mark:]))]])


def test_a_second_serve_on_the_port_is_refused(lab, cli):
    write_site(cli.site)
    write_state(cli.state)
    with Serve(lab, cli, services="tftp", extra=("--tftp-port", str(PORT), "--tftp-workers", "2")) as srv:
        env = {**os.environ, "PROVISIONER_SITE": str(cli.site), "PROVISIONER_STATE": str(cli.state)}
        second = lab.server.run(
            [
                cli.exe,
                "serve",
                "--services",
                "tftp",
                "--listen",
                SERVER_IP,
                "--tftp-port",
                str(PORT),
                "--tftp-workers",
                "2",
            ],
            check=False,
            env=env,
            timeout=30,
        )
        assert second.returncode == 1, second.stdout + second.stderr
        assert "cannot start tftp" in second.stderr and "in use" in second.stderr, second.stderr
        assert srv.stop() == 0
