"""Run the DHCP server alone (tests, benchmarks, debugging):
python -m provisioner.servers.dhcp --site DIR --state DIR [--interface IF] [--listen ADDR]
[--proxy]. SIGTERM or SIGINT stops it cleanly; SIGHUP reloads the inventory. It records
discovered MACs but adopts none: the cluster.discovery `mode: auto` is `provisioner serve`'s."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

from ...inventory import load_inventory
from ...logs import kv, setup_logging
from ...paths import site_from, state_from
from .server import DhcpServer


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m provisioner.servers.dhcp")
    ap.add_argument("--site")
    ap.add_argument("--state")
    ap.add_argument("--interface")
    ap.add_argument("--listen", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=67)
    ap.add_argument("--proxy", action="store_true", default=None)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    setup_logging("info")
    if args.verbose:
        logging.getLogger("provisioner").setLevel(logging.DEBUG)
    site, state = site_from(args.site), state_from(args.state)
    server = DhcpServer(
        load_inventory(site.cluster_yaml), state, args.interface, args.listen, args.port, proxy=args.proxy
    )

    def stop(*_: object) -> None:
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda *_: server.reload(load_inventory(site.cluster_yaml)))
    logging.getLogger("provisioner.dhcp").info("ready", extra=kv(pid=os.getpid()))
    server.serve_forever()


if __name__ == "__main__":
    main()
