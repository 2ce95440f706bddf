"""The demo's rollouts (issue 24), once its nodes are idle: a v2 of the image rolled over every
node while a job runs on the canary (its reboot waits for the job), then a broken v3 (its root
is missing from the export, so the initramfs cannot mount it) rolled with one canary and
auto-rollback: the canary fails, is rolled back to v2 and is idle again, and no other node is
touched.

The versions are made here in seconds: hard links to the current version's files, the broken
one without its rootfs. An image build would do for v2, but takes minutes and shows nothing
more. Guests must reboot (Demo.reboot): Slurm's RebootProgram reboots them, and a failed
initramfs reboots itself after provisioner.retry seconds (RETRY_ARG), which is how the broken
canary comes back with no BMC.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..actions import rollout as rollouts
from ..artifacts import images, layout
from ..nodestate import NodeStateDB
from ..paths import State
from .procs import PROVISIONER, DemoFailure, Supervisor

if TYPE_CHECKING:
    from .run import Demo

JOB_SECONDS = 60
RETRY_ARG = "provisioner.retry=5"
TIMEOUT = 900  # seconds per node, from its jobs' end to back in service (TCG boots are slow)
BOOT_STAGES = ("dhcp", "bootloader", "ipxe", "kernel", "initramfs", "root", "failed", "registered")


def clone_version(state: State, image: str, broken: bool = False) -> str:
    """A new version of `image` with the current version's files (hard links); `broken`: no
    rootfs. `current` does not move: the rollout moves the nodes."""
    current = images.current_version(state, image)
    if current is None:
        raise DemoFailure(f"image {image} has no version to copy")
    vdir = layout.image_versions(state, image)
    version = f"v{max(int(v.version[1:]) for v in images.versions(state, image)) + 1}"
    staging = vdir / f".{version}.partial"
    staging.mkdir()
    for name in os.listdir(vdir / current):
        if not (broken and name == "rootfs"):
            subprocess.run(["cp", "-al", str(vdir / current / name), str(staging / name)], check=True)
    os.rename(staging, vdir / version)
    return version


def boot_events(state: State, node: str, since: float) -> list[dict[str, Any]]:
    """The node's boot events (BOOT_STAGES) since `since`, oldest first."""
    db = NodeStateDB(state.db)
    try:
        return [dict(e) for e in db.timeline(node) if e["at"] >= since and e["stage"] in BOOT_STAGES]
    finally:
        db.close()


@dataclass
class Rolled:
    """One `provisioner rollout start`: its exit status and output, the rollout as it ended,
    and what each node's boots since it began said (version booted, failure reported)."""

    returncode: int
    output: str
    rollout: rollouts.Rollout
    booted: dict[str, str | None]
    failed: dict[str, str | None]
    boots: dict[str, int]  # boot events per node since it began
    events: dict[str, list[tuple[str, float]]]  # (stage, at) of those


def run_rollout(demo: Demo, nodes: list[str], args: list[str], during: Callable[[], None] | None = None) -> Rolled:
    """`provisioner rollout start ARGS` on the master (where slurmctld answers), its lines shown
    as they come; `during()` is called every couple of seconds while it runs."""
    assert demo.master is not None
    log = demo.logs / "rollout.log"
    env = {**os.environ, "PROVISIONER_SITE": str(demo.site.root), "PROVISIONER_STATE": str(demo.state.root)}
    started = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            demo.master.enter([PROVISIONER, "rollout", "start", *args, "--interval", "2"]),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    shown, deadline = 0, time.monotonic() + 4 * TIMEOUT
    try:
        while True:
            ended = proc.poll() is not None
            lines = log.read_text(errors="replace").splitlines()
            for line in lines[shown:]:
                demo.say("rollout", line)
            shown = len(lines)
            if ended:
                break
            if time.monotonic() > deadline:
                raise DemoFailure(f"the rollout did not end in {4 * TIMEOUT} s")
            if during is not None:
                during()
            time.sleep(2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
    r = rollouts.load(demo.ctx)
    assert r is not None
    seen = {n: boot_events(demo.state, n, started) for n in nodes}
    observed = {n: rollouts.observe(ev, None).booted for n, ev in seen.items()}
    return Rolled(
        proc.returncode,
        log.read_text(errors="replace"),
        r,
        observed,
        {n: next((str(e["detail"]) for e in ev if e["stage"] == "failed"), None) for n, ev in seen.items()},
        {n: len(ev) for n, ev in seen.items()},
        {n: [(e["stage"], e["at"]) for e in ev] for n, ev in seen.items()},
    )


@dataclass
class Upgrade:
    rolled: Rolled
    version: str
    job_ended: float  # when the canary's job was first seen gone
    canary_boot: float | None  # when the canary began to boot (its first boot event)
    states_during_job: set[str]  # the canary's Slurm states while its job ran


def roll_upgrade(demo: Demo, image: str, nodes: list[str]) -> Upgrade:
    """A good new version over `nodes`, the first one the canary, with a job running on it."""
    assert demo.master is not None
    master = demo.master
    version = clone_version(demo.state, image)
    canary = nodes[0]
    demo.say("rollout", f"{image} {version}: the current version's files, hard-linked")
    job = master.run(["sbatch", "--parsable", "-w", canary, "-o", "/dev/null", "--wrap", f"sleep {JOB_SECONDS}"])
    if job.returncode != 0:
        raise DemoFailure(f"sbatch: {job.stderr}")
    job_id = job.stdout.strip().split(";")[0]

    def queued() -> str:
        return master.run(["squeue", "-h", "-j", job_id, "-o", "%t"]).stdout.strip()

    Supervisor.wait_for(f"job {job_id} running", lambda: queued() == "R", 180, queued)
    demo.say("rollout", f"job {job_id} runs on {canary} for {JOB_SECONDS} s")
    started = time.time()
    states: set[str] = set()
    ended: list[float] = []

    def during() -> None:
        if ended:
            return
        if queued() in ("R", "CG"):
            states.add(demo.sinfo().get(canary, "?"))
        else:
            ended.append(time.time())

    rolled = run_rollout(demo, nodes, [image, "--to", version, "--canary", "1", "--batch", "1"], during)
    first = boot_events(demo.state, canary, started)
    return Upgrade(rolled, version, ended[0] if ended else time.time(), first[0]["at"] if first else None, states)


def roll_broken(demo: Demo, image: str, nodes: list[str]) -> Rolled:
    """A version whose root is missing, with one canary and auto-rollback."""
    version = clone_version(demo.state, image, broken=True)
    demo.say("rollout", f"{image} {version}: broken on purpose (no rootfs in the export)")
    args = [image, "--to", version, "--canary", "1", "--batch", "1", "--auto-rollback", "--timeout", str(TIMEOUT)]
    return run_rollout(demo, nodes, args)


def upgrade_problems(up: Upgrade, nodes: list[str]) -> list[str]:
    """What went otherwise than it should in the good rollout."""
    r = up.rolled
    problems = [f"ended {r.rollout.state} (exit {r.returncode})"] if r.rollout.state != rollouts.DONE else []
    problems += [f"{n} booted {r.booted[n]}, not {up.version}" for n in nodes if r.booted[n] != up.version]
    if up.canary_boot is None or up.canary_boot < up.job_ended - 5:
        problems.append(f"{nodes[0]} began to boot before its job ended")
    return problems


def broken_problems(r: Rolled, good: str, nodes: list[str], sinfo: dict[str, str]) -> list[str]:
    """What went otherwise than it should in the broken rollout."""
    canary = r.rollout.node(nodes[0])
    problems = [f"ended {r.rollout.state} (exit {r.returncode})"] if r.rollout.state != rollouts.FAILED else []
    if canary.phase != rollouts.ROLLED_BACK or r.booted[nodes[0]] != good:
        problems.append(f"{nodes[0]} {canary.phase}, booted {r.booted[nodes[0]]}, not rolled back to {good}")
    if r.failed[nodes[0]] is None:
        problems.append(f"{nodes[0]}'s initramfs reported no failure")
    if sinfo.get(nodes[0]) != "idle":
        problems.append(f"{nodes[0]} is {sinfo.get(nodes[0])} in Slurm, not idle")
    problems += [f"{n} was touched ({r.boots[n]} boot events)" for n in nodes[1:] if r.boots[n]]
    problems += [f"{n} is {r.rollout.node(n).phase}" for n in nodes[1:] if r.rollout.node(n).phase != rollouts.PENDING]
    return problems


def show(demo: Demo, image: str, nodes: list[str]) -> None:
    """Both rollouts, as `provisioner demo --rollout` runs them; DemoFailure if either goes
    otherwise than it should."""
    up = roll_upgrade(demo, image, nodes)
    if problems := upgrade_problems(up, nodes):
        raise DemoFailure(f"the {up.version} rollout: {'; '.join(problems)}\n{up.rolled.output}")
    demo.say("rollout", f"{nodes[0]} waited for its job (Slurm: {', '.join(sorted(up.states_during_job))})")
    broken = roll_broken(demo, image, nodes)
    if problems := broken_problems(broken, up.version, nodes, demo.sinfo()):
        raise DemoFailure(f"the broken rollout: {'; '.join(problems)}\n{broken.output}")
    demo.say("rollout", f"{nodes[0]} failed ({broken.failed[nodes[0]]}), rolled back, idle on {up.version}")
