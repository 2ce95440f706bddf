"""Rolling image upgrades through Slurm, with canaries and automatic rollback (issue 24).

A rollout moves a set of nodes from the image version each runs to another one, batch by
batch: the canaries first, then batches of the given size, so at most that many nodes are out
of service at once. A node's move is: pin it to the new version (pins.py: its boot configs
name that version from then on, whenever it reboots), then `scontrol reboot ASAP
nextstate=RESUME`, so Slurm drains it, lets its jobs finish, runs the RebootProgram and
takes it back once its slurmd registers. The node is done when it booted the new version (its
initramfs reports the root it mounted) and Slurm has it in service again.

A node that comes back on another version, whose initramfs reports a failure, or that is not in
service `timeout` seconds after its reboot could start (its jobs ended), stops the rollout: no
further batch starts. With auto-rollback the failed nodes are pinned back to the version they
ran and rebooted (through Slurm when it reaches them, else through their BMC, else the
initramfs' own retry reboots them); the rollout then ends `failed` with each node's reason.

Every node of the rollout is pinned from the start (to the version it runs), so a node that
reboots by itself mid-rollout boots what its batch decided, never a version built meanwhile.

The rollout's state is one JSON file in the state dir, replaced atomically at every change, so
`rollout status|pause|resume|abort` work from another process and a runner started again
(`rollout run`) carries on where the last one stopped. The decisions are one pure function
(`advance`) of the persisted state and what the node-state database and Slurm say now;
`run` is the I/O around it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import images, pins
from ..atomic import atomic_write, locked
from ..errors import UserError
from ..inventory.model import Node
from ..nodestate.slurm import SlurmError, is_ready, jobs_on, node_status, reboot, update
from . import power
from .context import Context, Say, quiet
from .overlays import build_overlays

# Rollout states; the last three are final.
RUNNING, PAUSED, DONE, FAILED, ABORTED = "running", "paused", "done", "failed", "aborted"
FINAL = (DONE, FAILED, ABORTED)
# Node phases.
PENDING, REBOOTING, UPDATED, BROKEN, ROLLING_BACK, ROLLED_BACK, STUCK = (
    "pending",
    "rebooting",
    "updated",
    "failed",
    "rolling-back",
    "rolled-back",
    "rollback-failed",
)
IN_FLIGHT = (REBOOTING, ROLLING_BACK)
# The root the initramfs reports (`root` stage): .../versions/vN/rootfs names the version.
ROOT_VERSION = re.compile(r"/versions/(v\d+)/rootfs")
DEFAULT_INTERVAL = 5.0


@dataclass
class NodeRoll:
    """One node's part: its batch, the version it ran before, where its move stands."""

    name: str
    batch: int
    previous: str | None
    phase: str = PENDING
    asked: float | None = None  # when its reboot was asked (a rollback asks again)
    free: float | None = None  # when it first held no job after that: its timeout runs from here
    finished: float | None = None
    reason: str | None = None  # why it failed (or how the rollback went)


@dataclass
class Rollout:
    id: str
    image: str
    to: str
    nodes: list[NodeRoll]
    canary: int
    batch_size: int
    timeout: float
    auto_rollback: bool
    state: str = RUNNING
    started: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rollout:
        fields = dict(data)
        fields["nodes"] = [NodeRoll(**n) for n in data["nodes"]]
        return cls(**fields)

    @property
    def batches(self) -> int:
        return max((n.batch for n in self.nodes), default=-1) + 1

    def node(self, name: str) -> NodeRoll:
        return next(n for n in self.nodes if n.name == name)

    def summary(self) -> str:
        """One line: what rolls where, its state, how far it got."""
        done = sum(n.phase == UPDATED for n in self.nodes)
        current = min((n.batch for n in self.nodes if n.phase != UPDATED), default=self.batches - 1)
        line = (
            f"rollout {self.id}: {self.image} -> {self.to} {self.state}, "
            f"{done}/{len(self.nodes)} nodes updated, batch {current + 1}/{self.batches}"
        )
        return line + (f" ({self.reason})" if self.reason else "")


@dataclass(frozen=True)
class Seen:
    """What is known of a node now, from its boot events since its reboot was asked and Slurm."""

    slurm: str | None = None  # sinfo's state (None: Slurm does not list it or did not answer)
    reason: str | None = None  # Slurm's reason for a drain or down
    jobs: int = 0  # jobs holding it
    booted: str | None = None  # the version the latest boot since `asked` mounted
    failed: str | None = None  # the initramfs' failure report since, if no root came after it
    stage: str | None = None  # its latest boot stage (for a timeout's reason)
    registered: bool = False  # the booted system reported its facts (it is up, not just mounted)


@dataclass(frozen=True)
class Actions:
    """What the runner does after a step: pins to set, nodes to reboot through Slurm, nodes to
    power cycle, nodes to resume in Slurm."""

    pin: dict[str, str] = field(default_factory=dict)
    reboot: list[str] = field(default_factory=list)
    cycle: list[str] = field(default_factory=list)
    resume: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.pin or self.reboot or self.cycle or self.resume)


def reboot_reason(r: Rollout) -> str:
    return f"rollout {r.id}: {r.image} {r.to}"


# -- the decisions -----------------------------------------------------------------------------


def batches(names: Sequence[str], canary: int, size: int) -> list[list[str]]:
    """The canaries first (none if 0), then batches of `size`."""
    head, rest = list(names[:canary]), list(names[canary:])
    return ([head] if head else []) + [rest[i : i + size] for i in range(0, len(rest), size)]


def batch_size(spec: str, total: int) -> int:
    """`K` nodes or `P%` of `total` (rounded up, at least 1)."""
    try:
        if spec.endswith("%"):
            share = float(spec[:-1])
            if not 0 < share <= 100:
                raise ValueError
            return max(1, math.ceil(total * share / 100))
        size = int(spec)
        if size < 1:
            raise ValueError
        return size
    except ValueError:
        raise UserError(f"bad batch size {spec!r}: a number of nodes (3) or a share (25%)") from None


def _fail(n: NodeRoll, now: float, reason: str) -> None:
    n.phase, n.finished, n.reason = BROKEN, now, reason


def _settle(n: NodeRoll, s: Seen, want: str | None, now: float, timeout: float, acts: Actions, strict: bool) -> bool:
    """Follow one node in flight towards `want`; True once it runs it in service. `strict`
    (a move forward): booting another version or a failure report fails it at once; a rollback
    waits those out (the node may still be in a boot that began before its pin moved back)."""
    if n.free is None and (s.jobs == 0 or s.booted is not None or s.failed is not None):
        n.free = now
    if strict and s.booted is not None and s.booted != want:
        _fail(n, now, f"came back on {s.booted}, not {want}")
    elif strict and s.failed is not None:
        _fail(n, now, f"boot failed: {s.failed}")
    elif s.booted == want and s.registered and is_ready(s.slurm):
        return True
    elif n.free is not None and now - n.free > timeout:
        _fail(n, now, f"not back in service {timeout:g} s after its reboot began (stage {s.stage}, slurm {s.slurm})")
    elif s.booted == want and s.registered and s.slurm == "down":
        acts.resume.append(n.name)  # back on the version, slurmd answers, but left DOWN (reboot timed out)
    return False


def advance(r: Rollout, seen: Mapping[str, Seen], now: float) -> Actions:
    """One step of the rollout `r` (changed in place) given what is `seen` of its nodes now;
    the actions for the runner to take. Nodes in flight are followed even while paused."""
    acts = Actions()
    if r.state in FINAL:
        return acts
    for n in r.nodes:
        s = seen.get(n.name, Seen())
        if n.phase == REBOOTING and _settle(n, s, r.to, now, r.timeout, acts, strict=True):
            n.phase, n.finished = UPDATED, now
        elif n.phase == ROLLING_BACK:
            if _settle(n, s, n.previous, now, r.timeout, acts, strict=False):
                n.phase, n.finished = ROLLED_BACK, now
            elif n.phase == BROKEN:
                n.phase = STUCK  # its rollback timed out: the reason says how far it got
    failed = [n for n in r.nodes if n.phase in (BROKEN, ROLLING_BACK, ROLLED_BACK, STUCK)]
    if failed:
        for n in failed:
            if n.phase == BROKEN and r.auto_rollback and n.previous is not None:
                s = seen.get(n.name, Seen())
                n.phase, n.asked, n.free = ROLLING_BACK, now, now
                n.reason = f"{n.reason}; rolling back to {n.previous}"
                acts.pin[n.name] = n.previous
                (acts.reboot if is_ready(s.slurm) else acts.cycle).append(n.name)
        if not any(n.phase in IN_FLIGHT for n in r.nodes):
            r.state = FAILED
            r.reason = "; ".join(f"{n.name} {n.phase}: {n.reason}" for n in failed)
        return acts
    if r.state == PAUSED:
        return acts
    left = [n for n in r.nodes if n.phase != UPDATED]
    if not left:
        r.state = DONE
        return acts
    batch = min(n.batch for n in left)
    if any(n.phase in IN_FLIGHT for n in left):
        return acts
    for n in left:
        if n.batch == batch and n.phase == PENDING:
            n.phase, n.asked, n.free = REBOOTING, now, None
            acts.pin[n.name] = r.to
            acts.reboot.append(n.name)
    return acts


def observe(events: Sequence[Mapping[str, Any]], since: float | None) -> Seen:
    """What a node's events after `since` say: the version its latest boot mounted, a failure
    reported after that, whether the booted system registered (reported its facts; Slurm's
    word alone is not enough: it may call a node idle that has not come back), its latest stage."""
    booted = failed = stage = None
    registered = False
    for e in events:
        if since is not None and e["at"] < since:
            continue
        stage = e["stage"]
        if stage == "root":
            m = ROOT_VERSION.search(e["detail"] or "")
            booted, failed, registered = (m.group(1) if m else "unknown"), None, False
        elif stage == "failed":
            failed = e["detail"] or "no detail"
        elif stage == "registered" and booted is not None:
            registered = True
    return Seen(booted=booted, failed=failed, stage=stage, registered=registered)


# -- persistence -----------------------------------------------------------------------------


def rollout_file(ctx: Context) -> Path:
    return ctx.state.root / "rollout.json"


def load(ctx: Context) -> Rollout | None:
    """The latest rollout (running or ended), or None if there never was one."""
    path = rollout_file(ctx)
    try:
        return Rollout.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read the rollout state {path}: {e}") from None


def _save(ctx: Context, r: Rollout) -> None:
    r.updated = time.time()
    atomic_write(rollout_file(ctx), json.dumps(r.as_dict(), indent=2, sort_keys=True) + "\n", mode=0o644)


@contextlib.contextmanager
def editing(ctx: Context) -> Iterator[Rollout]:
    """The latest rollout, locked against other editors, saved when the block succeeds."""
    ctx.state.root.mkdir(parents=True, exist_ok=True)
    with locked(rollout_file(ctx)):
        r = load(ctx)
        if r is None:
            raise UserError("no rollout (start one with `provisioner rollout start`)")
        yield r
        _save(ctx, r)


@contextlib.contextmanager
def runner_lock(ctx: Context) -> Iterator[None]:
    """One runner at a time: a second one is refused, not queued."""
    ctx.state.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{rollout_file(ctx)}.run", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError("another process is running the rollout") from None
        yield
    finally:
        os.close(fd)


# -- starting, steering ----------------------------------------------------------------------


def _running_version(ctx: Context, node: Node, current: str | None, held: Mapping[str, pins.Pin]) -> str | None:
    """What the node runs: its pin, else the root its latest boot mounted, else the current one."""
    pin = held.get(node.name)
    if pin is not None and pin.image == node.image:
        return pin.version
    booted = observe([dict(e) for e in ctx.db().timeline(node.name)], None).booted
    return booted if booted not in (None, "unknown") else current


def start(
    ctx: Context,
    image: str,
    selector: str | None,
    to: str | None,
    canary: int,
    batch: str,
    timeout: float,
    auto_rollback: bool,
) -> Rollout:
    """Plan a rollout of `image` (version `to`, default the current one) over the selected
    nodes (default: every node booting the image), pin them all, each to the version it runs,
    and rebuild their boot configs. Refused while another rollout is under way."""
    known = [v.version for v in images.versions(ctx.state, image)]
    if not known:
        raise UserError(f"no image {image!r}")
    current = images.current_version(ctx.state, image)
    to = to or current
    if to not in known:
        raise UserError(f"{image} has no version {to} (has: {', '.join(known)})")
    nodes = [n for n in ctx.select(selector) if selector is not None or n.image == image]
    other = [n.name for n in nodes if n.image != image]
    if other:
        raise UserError(f"not nodes of image {image}: {', '.join(other)}")
    if not nodes:
        raise UserError(f"no node boots image {image}")
    if canary < 0 or canary > len(nodes):
        raise UserError(f"--canary {canary}: between 0 and the {len(nodes)} nodes of the rollout")
    if timeout <= 0:
        raise UserError("--timeout must be positive")
    size = batch_size(batch, len(nodes))
    ctx.state.root.mkdir(parents=True, exist_ok=True)
    with locked(rollout_file(ctx)):
        last = load(ctx)
        if last is not None and last.state not in FINAL:
            raise UserError(f"{last.summary()}: finish or abort it first")
        held = pins.load(ctx.state)
        was = {n.name: _running_version(ctx, n, current, held) for n in nodes}
        r = Rollout(
            id=time.strftime("%Y%m%d-%H%M%S"),
            image=image,
            to=to,
            nodes=[
                NodeRoll(name, i, was[name])
                for i, names in enumerate(batches([n.name for n in nodes], canary, size))
                for name in names
            ],
            canary=canary,
            batch_size=size,
            timeout=timeout,
            auto_rollback=auto_rollback,
        )
        _pin(ctx, image, {n: v for n, v in was.items() if v is not None})
        _save(ctx, r)
    # Their boot configs name the pinned versions from now on (current may have moved on).
    build_overlays(ctx.fresh(), nodes)
    return r


def steer(ctx: Context, what: str) -> Rollout:
    """pause (no new batch starts; nodes rebooting are still followed), resume, or abort (the
    rollout ends; nodes keep their pins, nothing more reboots)."""
    with editing(ctx) as r:
        if r.state in FINAL:
            raise UserError(f"{r.summary()}: it has ended")
        if what == "pause":
            r.state = PAUSED
        elif what == "resume":
            r.state = RUNNING
        else:
            r.state, r.reason = ABORTED, "aborted by the admin"
    return r


# -- the runner --------------------------------------------------------------------------------


def _pin(ctx: Context, image: str, versions: Mapping[str, str]) -> None:
    with pins.editing(ctx.state) as held:
        for node, version in versions.items():
            held[node] = pins.Pin(image, version)


def _unpin_current(ctx: Context, r: Rollout) -> None:
    """After a rollout that ended well, nodes pinned to the image's current version follow it
    again (so a later image build moves them, as it moves nodes that never rolled)."""
    current = images.current_version(ctx.state, r.image)
    with pins.editing(ctx.state) as held:
        for n in r.nodes:
            pin = held.get(n.name)
            if pin is not None and pin == pins.Pin(r.image, current or ""):
                del held[n.name]


def look(ctx: Context, r: Rollout, say: Say) -> dict[str, Seen]:
    """What the node-state database and Slurm say of the rollout's nodes in flight."""
    names = [n.name for n in r.nodes if n.phase in IN_FLIGHT or n.phase == BROKEN]
    if not names:
        return {}
    try:
        slurm = node_status()
        held = jobs_on(names)
    except SlurmError as e:
        say(f"Slurm does not answer ({e}); looking again")
        slurm, held = {}, {n: ["?"] for n in names}
    db = ctx.db()
    try:
        seen = {}
        for n in r.nodes:
            if n.name in names:
                s = slurm.get(n.name)
                seen[n.name] = dataclasses.replace(
                    observe([dict(e) for e in db.timeline(n.name)], n.asked),
                    slurm=s.state if s else None,
                    reason=s.reason if s else None,
                    jobs=len(held.get(n.name, [])),
                )
        return seen
    finally:
        db.close()


def _act(ctx: Context, r: Rollout, acts: Actions, say: Say) -> None:
    """Pins first and the boot configs built with them, then the reboots: a node must never
    reboot before its boot configs name the version it is to boot."""
    if acts.pin:
        _pin(ctx, r.image, acts.pin)
        build_overlays(ctx.fresh(), [ctx.node(n) for n in acts.pin])
        for node, version in acts.pin.items():
            say(f"{node}: pinned to {r.image} {version}")
    if acts.reboot:
        try:
            reboot(acts.reboot, reboot_reason(r))
            say(f"{','.join(acts.reboot)}: reboot asked of Slurm (ASAP: once their jobs end)")
        except SlurmError as e:
            say(f"cannot ask Slurm to reboot {','.join(acts.reboot)}: {e}; asking again")
            for name in acts.reboot:
                n = r.node(name)
                if n.phase == REBOOTING:
                    n.phase, n.asked = PENDING, None
                else:
                    acts.cycle.append(name)
    for name in acts.cycle:
        say(_cycle(ctx, name))
    if acts.resume:
        try:
            update(acts.resume, "RESUME")
            say(f"{','.join(acts.resume)}: resumed in Slurm (back on the right version)")
        except SlurmError as e:
            say(f"cannot resume {','.join(acts.resume)}: {e}; trying again")


def _cycle(ctx: Context, name: str) -> str:
    """Reboot a node Slurm cannot reach: through its BMC if it has one; otherwise its
    initramfs, which reboots by itself after a failure (provisioner.retry), does it."""
    node = ctx.node(name)
    if node.bmc is None:
        return f"{name}: no BMC; its initramfs reboots it after its failure (provisioner.retry)"
    outcome = power.run(ctx, [node], "cycle", power.Options())[0]
    return f"{name}: power cycle: {outcome.line()}"


def run(
    ctx: Context,
    say: Say = quiet,
    interval: float = DEFAULT_INTERVAL,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Rollout:
    """Drive the latest rollout until it ends (a paused one is followed, not ended); returns it."""
    with runner_lock(ctx):
        while True:
            with editing(ctx) as r:
                seen = look(ctx, r, say)
                before = {n.name: n.phase for n in r.nodes}
                acts = advance(r, seen, clock())
                _act(ctx, r, acts, say)
                for n in r.nodes:
                    if n.phase != before[n.name]:
                        say(f"{n.name}: {n.phase}" + (f" ({n.reason})" if n.reason else ""))
                if r.state == DONE:
                    _unpin_current(ctx, r)
            if r.state in FINAL:
                say(r.summary())
                return r
            sleep(interval)
