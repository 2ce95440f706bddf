"""Power and boot device of many nodes through their BMCs: bounded fan-out, a deadline and
retries per BMC, a spread of power-ons over time; each node's failure is its own."""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import bmc
from ..artifacts.secrets import bmc_password
from ..errors import UserError
from ..inventory import Node
from .context import Context

POWER_ON = ("on", "cycle", "reset")  # what --stagger spreads out


@dataclass(frozen=True)
class Outcome:
    node: str
    action: str
    ok: bool
    state: str | None = None  # the power state read, or the change under way
    error: str | None = None
    attempts: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        return f"{self.node}: {self.state}" if self.ok else f"{self.node}: error: {self.error}"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Options:
    fanout: int = 64
    timeout: float = 10.0
    retries: int = 1
    stagger: float = 0.0
    persistent: bool = False  # pxe: for every boot, not only the next


def target(ctx: Context, node: Node) -> bmc.Target | str:
    """Where and how to reach the node's BMC, or why it cannot be reached."""
    return bmc.target_of(ctx.state, node)


def missing_credentials(ctx: Context) -> list[str]:
    """Nodes with a BMC address but no password to use it."""
    return [n.name for n in ctx.inventory().nodes if n.bmc is not None and bmc_password(ctx.state, n) is None]


def request(t: bmc.Target, action: str, opts: Options) -> str:
    """One node's request, retried on failures that may pass (no answer, garbage)."""
    if action == "pxe":
        bmc.set_pxe(t, opts.persistent, opts.timeout)
        return "pxe" + (" (persistent)" if opts.persistent else " (next boot)")
    return bmc.power(t, action, opts.timeout)


def run_targets(
    targets: Iterable[bmc.Target | tuple[str, str]],
    action: str,
    opts: Options,
    progress: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """`action` on each target, at most `opts.fanout` at once, in the order given; a (node,
    reason) pair instead of a target fails at once with that reason."""
    items = list(targets)
    start = time.monotonic()
    spread = opts.stagger if action in POWER_ON else 0.0

    def one(i: int, item: bmc.Target | tuple[str, str]) -> Outcome:
        if isinstance(item, tuple):
            return Outcome(item[0], action, False, error=item[1])
        if spread:
            time.sleep(max(0.0, start + i * spread - time.monotonic()))
        began = time.monotonic()
        attempt = 0
        try:
            while True:
                attempt += 1
                try:
                    state = request(item, action, opts)
                    return Outcome(item.node, action, True, state, None, attempt, round(time.monotonic() - began, 3))
                except bmc.BmcError as e:
                    if e.final or attempt > opts.retries:
                        took = round(time.monotonic() - began, 3)
                        return Outcome(item.node, action, False, None, str(e), attempt, took)
        finally:
            bmc.close_sessions([item])  # in the pool: a thousand logouts one after another add up

    out: list[Outcome] = []
    try:
        with ThreadPoolExecutor(max_workers=max(1, opts.fanout), thread_name_prefix="power") as pool:
            for outcome in pool.map(one, range(len(items)), items):
                if progress is not None:
                    progress(outcome)
                out.append(outcome)
    finally:
        bmc.close_sessions()
    return out


def run(
    ctx: Context, nodes: Iterable[Node], action: str, opts: Options, progress: Callable[[Outcome], None] | None = None
) -> list[Outcome]:
    """`action` (a power action or `pxe`) on these nodes' BMCs."""
    items: list[bmc.Target | tuple[str, str]] = []
    for n in nodes:
        t = target(ctx, n)
        items.append((n.name, t) if isinstance(t, str) else t)
    return run_targets(items, action, opts, progress)


# -- the serial console --------------------------------------------------------------------------

DETACH = b"~."  # typed at the start of a line, as in ssh and conman


def console(ctx: Context, name: str, infd: int, write: Callable[[bytes], None]) -> None:
    """Attach to the node's serial console: what it prints goes to `write`, what is read from
    `infd` goes to the node, until `~.` at the start of a line, the end of input, or the BMC
    ends the session (a BmcError then)."""
    t = bmc.target_of(ctx.state, ctx.node(name))
    if isinstance(t, str):
        raise UserError(f"{name}: {t}")
    try:
        sol = bmc.Sol(bmc.sol_target(t), write)
    except bmc.BmcError as e:
        raise UserError(f"{name}: {e}") from None
    line_start, held = True, b""
    try:
        while not sol.closed.is_set():
            sol.pump(0.05)
            if not select.select([infd], [], [], 0.05)[0]:
                continue
            data = os.read(infd, 1024)
            if not data:
                break
            out = b""
            for ch in (bytes([c]) for c in data):
                if held:
                    if ch == DETACH[1:]:
                        return
                    out += held
                    held = b""
                if line_start and ch == DETACH[:1]:
                    held = ch
                    continue
                out += ch
                line_start = ch in (b"\r", b"\n")
            if out:
                sol.send(out)
    finally:
        sol.close()
        bmc.close_sessions()
    if sol.error:
        raise UserError(f"{name}: {sol.error}")


def console_log_file(ctx: Context, name: str) -> Path | None:
    """The node's console log that `serve` keeps, if there is one: where to read what the
    node printed during a boot that stopped short."""
    path = bmc.log_path(ctx.state.consoles, name)
    return path if path.exists() else None


def console_log(ctx: Context, name: str) -> bytes:
    """What `serve` kept of the node's console."""
    ctx.node(name)
    return bmc.read_log(ctx.state.consoles, name)
