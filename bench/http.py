#!/usr/bin/env python3
"""HTTP boot throughput: 100 concurrent clients each fetching a 30 MB initramfs from
`provisioner serve --services http`, against nginx serving the same file in the same run.

Clients are one curl process (--parallel --parallel-immediate: one connection per client),
on loopback. nginx runs with a private config in a temporary directory (sendfile on, no
access log, worker_processes 1 and auto both measured). Rounds alternate between servers;
the best round of each counts. Prints MB/s, the server's own CPU time per round (on loopback
the copy into the client dominates, so this shows the server's overhead apart from the
machine's load) and the ratio against nginx (goal: >= 0.8).

    .venv/bin/python bench/http.py [--clients 100] [--size-mb 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

SITE = """cluster:
  name: bench
  domain: bench.cluster
  network: {subnet: 10.250.0.0/24, master: 10.250.0.1}
  nfs: {exports: []}
  slurm: {controller: master}
profiles:
  default: {image: bench}
nodes:
  - {name: n1, ip: 10.250.0.11, mac: "52:54:00:00:fa:01"}
"""

NGINX = """daemon off;
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  server {{
    listen {host}:{port};
    root {root};
    location / {{ }}
  }}
}}
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode} before answering {url}")
        # curl, not urllib: this script's name shadows the stdlib `http` package.
        probe = subprocess.run(
            ["curl", "-s", "--noproxy", "*", "-o", "/dev/null", "-r", "0-0", "-w", "%{http_code}", url],
            capture_output=True,
            text=True,
        )
        if probe.stdout == "206":
            return
        time.sleep(0.1)
    raise SystemExit(f"no answer from {url}")


def fetch_all(url: str, clients: int, size: int) -> float:
    """Seconds for `clients` concurrent full downloads; every one must be a 200 of `size` bytes."""
    args = [
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "--parallel",
        "--parallel-immediate",
        "--parallel-max",
        str(clients),
        "-w",
        "%{http_code} %{size_download}\n",
    ]
    for _ in range(clients):
        args += ["-o", "/dev/null", url]
    started = time.perf_counter()
    res = subprocess.run(args, capture_output=True, text=True)
    took = time.perf_counter() - started
    results = res.stdout.split("\n")[:-1]
    bad = [r for r in results if r != f"200 {size}"]
    if res.returncode != 0 or len(results) != clients or bad:
        raise SystemExit(
            f"{url}: curl exit {res.returncode}, {len(results)} results, bad: {bad[:3]} {res.stderr[:300]}"
        )
    return took


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its direct children (nginx's workers)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--size-mb", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if not shutil.which("nginx") or not shutil.which("curl"):
        raise SystemExit("needs nginx (nginx-light) and curl: run tests/setup")
    exe = shutil.which("provisioner") or str(Path(sys.executable).parent / "provisioner")
    size = a.size_mb * 1024 * 1024
    total_mb = a.clients * size / 1e6
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        t = Path(tmp)
        t.chmod(0o755)  # nginx workers run as an unprivileged user
        (t / "site").mkdir()
        (t / "site" / "cluster.yaml").write_text(SITE)
        version = t / "state" / "images" / "bench" / "versions" / "v1"
        version.mkdir(parents=True)
        with open(version / "initramfs.img", "wb") as f:
            for _ in range(a.size_mb):
                f.write(os.urandom(1024 * 1024))
        (t / "state" / "images" / "bench" / "current").symlink_to("versions/v1")
        try:
            env = {**os.environ, "PROVISIONER_SITE": str(t / "site"), "PROVISIONER_STATE": str(t / "state")}
            port = free_port()
            with open(t / "serve.log", "w") as log:
                ours = subprocess.Popen(
                    [
                        exe,
                        "serve",
                        "--services",
                        "http",
                        "--listen",
                        HOST,
                        "--http-port",
                        str(port),
                        "--log-level",
                        "warning",
                    ],
                    env=env,
                    stderr=log,
                )
            procs.append(ours)
            targets = {"provisioner": f"http://{HOST}:{port}/images/bench/initramfs.img"}
            for workers in ("1", "auto"):
                ng_port = free_port()
                conf = t / f"nginx-{workers}.conf"
                conf.write_text(
                    NGINX.format(
                        workers=workers,
                        tmp=t,
                        host=HOST,
                        port=ng_port,
                        root=t / "state" / "images" / "bench" / "current",
                    )
                )
                procs.append(subprocess.Popen(["nginx", "-c", str(conf), "-p", str(t)], stderr=subprocess.DEVNULL))
                targets[f"nginx ({workers} worker{'s' if workers == 'auto' else ''})"] = (
                    f"http://{HOST}:{ng_port}/initramfs.img"
                )
            for url, proc in zip(targets.values(), procs, strict=True):
                wait_http(url, proc)
            best: dict[str, float] = {}
            pids = dict(zip(targets, (p.pid for p in procs), strict=True))
            for r in range(a.rounds):
                for name, url in targets.items():
                    cpu = cpu_seconds(pids[name])
                    took = fetch_all(url, a.clients, size)
                    cpu = cpu_seconds(pids[name]) - cpu
                    best[name] = min(best.get(name, took), took)
                    print(
                        f"round {r + 1}  {name:22s} {took:6.2f} s  {total_mb / took:8.0f} MB/s  "
                        f"server CPU {cpu:5.2f} s",
                        flush=True,
                    )
        finally:
            for p in procs:
                stop(p)
    print(f"\n{a.clients} clients x {a.size_mb} MB over loopback, best of {a.rounds}:")
    ours_mbs = total_mb / best["provisioner"]
    for name, took in best.items():
        print(f"  {name:22s} {total_mb / took:8.0f} MB/s")
    for name in best:
        if name.startswith("nginx"):
            print(f"ratio provisioner / {name}: {ours_mbs / (total_mb / best[name]):.2f}x (goal >= 0.8x)")


if __name__ == "__main__":
    main()
