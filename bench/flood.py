#!/usr/bin/env python3
"""Hostile runs against `provisioner serve` (TFTP and HTTP, default cluster.limits) from one
attacker namespace, while a real client on another address keeps "booting": it fetches its
iPXE script over TFTP and a 3 MB initramfs over HTTP, again and again (the scripted boot of
tests/test_status_timeline.py; the qemu boot under a flood is tests/test_serve_flood_boot.py).

Runs: quiet; a TFTP request flood (hostile options: timeout=255, blksize 1001, windowsize
64) at --rate; an HTTP flood of --conns connections (a third silent, the rest slowloris);
both at once; and 48 transfers at 48 odd block sizes, as many at once as the per-address cap
lets in (memory). For each: the flood rate held,
what the attacker got back, the client's fetch time against the quiet run, and serve's peak
memory and descriptors. The references are dnsmasq (tftp-max 50 transfers, no header or idle
timeout of its own) and nginx (client_header_timeout 60 s, keepalive_timeout 75 s).

    .venv/bin/python bench/flood.py [--seconds 15] [--rate 2000] [--conns 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from labs.flood import Flood, HttpFlood, Sampler, TftpFlood, drive, fds, rss_mb  # noqa: E402
from labs.net import Lab  # noqa: E402
from labs.serve import NODES, SERVER_IP, Serve, curl, write_site, write_state  # noqa: E402
from labs.tftp import in_ns  # noqa: E402
from provisioner.inventory.model import Limits  # noqa: E402

HTTP_PORT, TFTP_PORT = 8080, 6969


class Cli:
    """What labs.serve.Serve needs of the tests' `cli` fixture."""

    def __init__(self, root: Path):
        self.site, self.state = root / "site", root / "state"
        self.exe = str(Path(sys.executable).parent / "provisioner")


def fetch_times(node, seconds: float) -> list[float]:
    """The client's "boot" (TFTP script, HTTP initramfs) repeated for `seconds`: each one's time."""
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        curl(node, "-o", "/dev/null", f"tftp://{SERVER_IP}:{TFTP_PORT}/boot.ipxe")
        curl(node, "-o", "/dev/null", f"http://{SERVER_IP}:{HTTP_PORT}/images/img1/initramfs.img")
        out.append(time.monotonic() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--rate", type=int, default=2000, help="TFTP requests per second")
    ap.add_argument("--conns", type=int, default=300, help="HTTP connections held")
    args = ap.parse_args()
    limits = Limits()
    with tempfile.TemporaryDirectory() as tmp, Lab() as lab:
        cli = Cli(Path(tmp))
        write_site(cli.site)
        write_state(cli.state)
        with Serve(
            lab, cli, services="tftp,http", port=HTTP_PORT, extra=("--tftp-port", str(TFTP_PORT), "--tftp-workers", "1")
        ) as srv:
            pid = srv.proc.pid
            ip, mac = NODES["node01"]
            node, attacker = lab.host(ip=ip, mac=mac), lab.host(ip="10.99.0.66")
            fetch_times(node, 2)  # warm
            print(f"serve at rest: {rss_mb(pid):.0f} MB, {fds(pid)} fds; one TFTP process, default cluster.limits")
            quiet = statistics.median(fetch_times(node, args.seconds))
            print(f"{'run':<22} {'flood held':>18} {'client fetch':>14} {'peak MB':>8} {'peak fds':>9}  attacker got")
            print(f"{'quiet':<22} {'-':>18} {quiet:>12.3f} s {rss_mb(pid):>8.0f} {fds(pid):>9}")
            floods: dict[str, Callable[[], list[Flood]]] = {
                "tftp": lambda: [
                    TftpFlood(attacker, (SERVER_IP, TFTP_PORT), "images/img1/initramfs.img", rate=args.rate)
                ],
                "http": lambda: [HttpFlood(attacker, (SERVER_IP, HTTP_PORT), conns=args.conns)],
                "tftp+http": lambda: [
                    TftpFlood(attacker, (SERVER_IP, TFTP_PORT), "images/img1/initramfs.img", rate=args.rate),
                    HttpFlood(attacker, (SERVER_IP, HTTP_PORT), conns=args.conns),
                ],
            }
            for name, make in floods.items():
                attacks = make()
                with Sampler(pid) as sampler:
                    for a in attacks:
                        a.start()
                    try:
                        took = statistics.median(fetch_times(node, args.seconds))
                    finally:
                        for a in attacks:
                            a.stop()
                held = " + ".join(f"{a.rate():.0f}/s" for a in attacks)
                got = "; ".join(str(dict(a.answers)) for a in attacks)
                print(
                    f"{name:<22} {held:>18} {took:>8.3f} s {took / quiet:>4.1f}x {sampler.peak_rss:>6.0f} "
                    f"{sampler.peak_fds:>9.0f}  {got}"
                )
                time.sleep(limits.http_keepalive_timeout / 25)  # let the last refusals close
            base = rss_mb(pid)
            per, fresh = limits.tftp_per_client, lab.host(ip="10.99.0.67")  # the flood's transfers still hold .66
            with Sampler(pid) as sampler:
                for first in range(0, 48, per):  # as many at once as the per-address cap lets in
                    in_ns(
                        fresh,
                        drive,
                        (SERVER_IP, TFTP_PORT),
                        "images/img1/vmlinuz",
                        [509 + 19 * i for i in range(first, min(48, first + per))],
                    )
            print(
                f"{'48 odd block sizes':<22} {'48 transfers':>18} {'-':>14} {sampler.peak_rss:>8.0f} "
                f"{sampler.peak_fds:>9.0f}  +{sampler.peak_rss - base:.0f} MB at peak, "
                f"+{rss_mb(pid) - base:.0f} MB after"
            )
            print(
                f"caps: TFTP {limits.tftp_transfers} transfers, {limits.tftp_per_client} per address "
                f"(dnsmasq tftp-max: 50); timeout option <= {limits.tftp_max_timeout} s; packet budget "
                f"{limits.tftp_cache_mb} MB; HTTP {limits.http_connections} connections, {limits.http_per_client} "
                f"per address; header timeout {limits.http_header_timeout} s (nginx client_header_timeout: 60 s); "
                f"keep-alive {limits.http_keepalive_timeout} s (nginx keepalive_timeout: 75 s)"
            )


if __name__ == "__main__":
    main()
