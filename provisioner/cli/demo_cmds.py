"""`provisioner demo`: boot a virtual node from this machine and watch it join Slurm."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import click

from ..demo.procs import DemoFailure
from ..demo.run import Demo
from ..errors import UserError


@click.command()
@click.option(
    "--work",
    type=click.Path(path_type=Path),
    default=Path("/var/tmp/provisioner-demo"),
    show_default=True,
    help="Demo site, state and logs (the image build is cached across runs).",
)
@click.option("--nodes", type=click.IntRange(1, 4), default=1, show_default=True, help="Virtual nodes to boot.")
@click.option(
    "--unlisted",
    type=click.IntRange(0, 3),
    default=0,
    show_default=True,
    help="More guests whose MACs no node entry names: the site's `discovery: {mode: auto}` adopts them.",
)
@click.option("--timeout", type=float, default=600, show_default=True, help="Seconds to wait for the nodes to be idle.")
@click.option("--mirror", help="Debian mirror for the image (default: this host's apt sources).")
@click.option("--kernel-arg", "kernel_args", multiple=True, help="Extra kernel argument for the nodes (repeatable).")
@click.option("--plan-only", is_flag=True, help="Write the demo site and show its plan; boot nothing.")
@click.option(
    "--rollout",
    is_flag=True,
    help="Then roll a v2 over the nodes through Slurm reboots, and a broken v3 that fails its canary.",
)
def demo(
    work: Path,
    nodes: int,
    unlisted: int,
    timeout: float,
    mirror: str | None,
    kernel_args: tuple[str, ...],
    plan_only: bool,
    rollout: bool,
) -> None:
    """Build an image, start DHCP/TFTP/HTTP, NFS and slurmctld in a private network namespace,
    PXE-boot qemu guests (TCG) and wait until `sinfo` shows them idle; `--unlisted` guests
    join with no node entry (zero-touch). Needs root."""
    if nodes + unlisted > 4:
        raise UserError("at most 4 guests at once (--nodes plus --unlisted)")
    if os.geteuid() != 0 and not plan_only:
        raise UserError("the demo makes network namespaces and runs daemons: run it as root")
    # SIGTERM (CI, kill) takes the same way out as Ctrl-C, so the cleanup always runs. Only
    # here: pyroute2 forks helpers that are ended with SIGTERM and must not run our cleanup.
    main_pid = os.getpid()

    def on_term(signum: int, _frame: object) -> None:
        if os.getpid() != main_pid:
            os._exit(128 + signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        Demo(
            work.resolve(),
            nodes=nodes,
            unlisted=unlisted,
            timeout=timeout,
            mirror=mirror,
            kernel_args=kernel_args,
            rollout=rollout,
        ).run(boot=not plan_only)
    except DemoFailure as e:
        raise UserError(str(e)) from None
    except KeyboardInterrupt:
        raise UserError("interrupted; everything the demo started was stopped") from None
