"""Runtime overlays on running nodes: which nodes run the latest, asking them to refresh now
(`overlay push`), and what their agents say their files are (`overlay diff --live`)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from ..artifacts import layout
from ..artifacts.overlay_build import runtime_digest, runtime_members
from ..atomic import atomic_write, private_dir
from ..errors import UserError
from ..inventory.model import Node
from ..nodestate import summary
from ..servers.http.runtime import REPORT_PREFIX
from .context import Context

PUSH_POLL = 0.2  # seconds between looks at what the agents reported
LIVE_WAIT = 10.0  # seconds `overlay diff --live` waits for the node's fresh report


def runtime_states(ctx: Context, nodes: list[Node]) -> dict[str, str | None]:
    """Whether each node runs its published runtime archive (nodestate.summary.runtime_states)."""
    return summary.runtime_states(nodes, ctx.db().runtime_shas(), lambda n: runtime_digest(ctx.state, n))


@dataclass(frozen=True)
class PushResult:
    node: str
    ok: bool
    detail: str


def push(ctx: Context, nodes: list[Node], timeout: float) -> list[PushResult]:
    """Ask the nodes' agents to fetch and apply their runtime archive now (through the HTTP
    server, which answers their waiting polls) and wait until each reports the published
    archive, a refusal or a failure, or `timeout` passes."""
    want = {n.name: runtime_digest(ctx.state, n.name) for n in nodes}
    missing = sorted(name for name, sha in want.items() if sha is None)
    if missing:
        raise UserError(f"no runtime archive for {', '.join(missing[:10])}: run `provisioner overlay build` first")
    started = time.time()
    with _request(ctx, "", list(want)):
        return _wait_for(ctx, nodes, want, started, timeout)


@contextlib.contextmanager
def _request(ctx: Context, prefix: str, names: list[str]) -> Iterator[None]:
    """A request file the HTTP server takes within a moment (servers/http/runtime.py), removed
    afterwards if it was not taken (no server running): nothing stale for the next one."""
    request = private_dir(layout.push_requests(ctx.state)) / f"{prefix}{os.getpid()}-{time.monotonic_ns()}"
    atomic_write(request, "\n".join(names) + "\n", mode=0o600)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            request.unlink()


def _wait_for(
    ctx: Context,
    nodes: list[Node],
    want: dict[str, str | None],
    started: float,
    timeout: float,
) -> list[PushResult]:
    db = ctx.db()
    results: dict[str, PushResult] = {}
    while True:
        for name in set(want) - set(results):
            # The agent's `runtime` event names the archive it applied (its live report alone
            # may be of its files before the push reached it).
            events = [e for e in db.timeline(name) if e["at"] >= started]
            if any(e["stage"] == "runtime" and f" sha256 {want[name]} " in f" {e['detail']} " for e in events):
                results[name] = PushResult(name, True, f"runs generation {layout.generation(ctx.state)}")
                continue
            bad = [e for e in events if e["stage"] in ("runtime-refused", "runtime-failed")]
            if bad:
                results[name] = PushResult(name, False, f"{bad[-1]['stage']}: {bad[-1]['detail']}")
        if len(results) == len(want) or time.time() - started > timeout:
            break
        time.sleep(PUSH_POLL)
    for name in set(want) - set(results):
        row = db.runtime(name)
        seen = "its agent never reported" if row is None else f"last report {time.time() - row['at']:.0f} s ago"
        results[name] = PushResult(name, False, f"no answer within {timeout:g} s ({seen})")
    return [results[n.name] for n in nodes]


@dataclass(frozen=True)
class Drift:
    path: str
    what: str  # "changed", "missing", "extra"
    detail: str


def live_diff(ctx: Context, node: Node, wait: float = LIVE_WAIT) -> tuple[str, list[Drift]]:
    """How the node's runtime files differ from what was rendered, by the hashes its agent
    reports: it is asked to report now, and its report is awaited up to `wait` seconds (else
    the last one serves). Returns (a note on how current that report is, the files that differ)."""
    db = ctx.db()
    asked = time.time()
    with _request(ctx, REPORT_PREFIX, [node.name]):
        while time.time() - asked < wait:
            row = db.runtime(node.name)
            if row is not None and row["at"] >= asked:
                break
            time.sleep(PUSH_POLL)
    row = db.runtime(node.name)
    if row is None:
        raise UserError(f"{node.name}: its agent has not reported its files yet")
    rendered = runtime_members(ctx.state, node.name)
    if rendered is None:
        raise UserError(f"{node.name}: no runtime archive; run `provisioner overlay build`")
    live: dict[str, tuple[str, str]] = {}
    for line in row["files"].splitlines():
        kind, _, rest = line.partition(" ")
        digest, _, path = rest.partition(" ")
        if path:
            live[path] = (kind, digest)
    drift = []
    for path in sorted(set(rendered) | set(live)):
        want, have = rendered.get(path), live.get(path)
        if have is None:
            drift.append(Drift(path, "extra", "rendered, but the node did not report it (not applied yet)"))
        elif want is None:
            drift.append(Drift(path, "extra", "on the node, but no longer rendered"))
        elif have[0] == "missing":
            drift.append(Drift(path, "missing", "deleted on the node"))
        elif have != want:
            drift.append(
                Drift(path, "changed", f"{have[0]} sha256 {have[1][:12]} on the node, {want[1][:12]} rendered")
            )
    current = runtime_digest(ctx.state, node.name)
    age = f"reported {time.time() - row['at']:.0f} s ago"
    note = age if row["sha256"] == current else f"{age}, for an older generation (a refresh is pending)"
    return note, drift
