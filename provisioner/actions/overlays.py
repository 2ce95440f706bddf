"""Overlay actions: build (with the nodes' facts, recording the build for /metrics), render
one node, plan, save an admin's override file, regenerate secrets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Literal

from ..artifacts import layout, overlay_build, secrets
from ..artifacts.overlay_build import Build, BuildReport, Change
from ..atomic import atomic_write
from ..errors import UserError
from ..inventory.model import Node
from ..render.context import RenderError
from ..render.overlays import FileEntry
from .configure import refresh
from .context import Context, Say, quiet

# How a caller shows a build's progress: given the number of nodes to look at, a context
# manager yielding the callback told of each node done (the CLI's progress bar).
ProgressBar = Callable[[int], AbstractContextManager[Callable[[int], None]]]


def builder(ctx: Context) -> Build:
    """One build's inputs (templates, images, the nodes' facts), for rendering without writing."""
    try:
        return Build(ctx.state, ctx.site, ctx.inventory(), ctx.facts())
    except RenderError as e:
        raise UserError(str(e)) from None


def render_node(ctx: Context, node: Node) -> list[FileEntry]:
    """A node's overlay entries as a build would make them now (its secrets made first)."""
    secrets.ensure_secrets(ctx.state, ctx.inventory(), [node] if secrets.needs_host_keys(node) else [])
    try:
        return builder(ctx).render(node)[0]
    except RenderError as e:
        raise UserError(str(e)) from None


def build_overlays(
    ctx: Context,
    nodes: list[Node] | None = None,
    *,
    force: bool = False,
    jobs: int | None = None,
    bar: ProgressBar | None = None,
    say: Say = quiet,
) -> BuildReport:
    """Build the overlay archives and boot configs of `nodes` (default all) whose inputs changed,
    the nodes' reported facts among those inputs; then re-run the daemons `configure` set up
    (their files are rewritten, and the daemons reloaded, only where the text changed)."""
    inv = ctx.inventory()
    facts = ctx.facts()
    if bar is None:
        report = overlay_build.build(ctx.state, ctx.site, inv, nodes, force=force, jobs=jobs, facts=facts)
    else:
        with bar(len(inv.nodes if nodes is None else nodes)) as step:
            report = overlay_build.build(
                ctx.state, ctx.site, inv, nodes, force=force, jobs=jobs, facts=facts, progress=step
            )
    if report.built:
        # /metrics (in the serve process) learns build durations from the node-state DB.
        what = ",".join(report.built) if len(report.built) <= 3 else f"{len(report.built)} nodes"
        ctx.db().record_build("overlay", what, report.seconds)
    refresh(ctx, say)
    return report


def plan(ctx: Context, nodes: list[Node], with_diff: bool = False) -> Iterator[tuple[Node, list[Change] | None]]:
    """Each node with the changes a build would make to its files (None: never built), node by
    node as they are rendered. Writes nothing."""
    # Before the first build there is nothing to compare with, nor secrets to render with.
    b = builder(ctx) if any(layout.overlay_archive(ctx.state, n.name).exists() for n in nodes) else None
    for n in nodes:
        try:
            yield n, overlay_build.plan_node(b, n, with_diff) if b else None
        except RenderError as e:
            raise UserError(str(e)) from None


def editable(ctx: Context, node: Node, path: str) -> tuple[str, bytes]:
    """The path inside the node's root an override of `path` replaces, and what to start editing
    from: the node's override file if it has one, else the file as rendered now."""
    rel = path.strip("/")
    if not rel or ".." in rel.split("/"):
        raise UserError(f"{path!r} is not a path inside the node's root")
    current = next((e for e in render_node(ctx, node) if e.path == rel), None)
    if current is not None and current.secret:
        raise UserError(f"{rel} is a secret; use `provisioner secrets regenerate`")
    if current is not None and current.kind != "file":
        raise UserError(f"{rel} is a {current.kind}, not a file")
    override = ctx.site.node_overrides(node.name) / rel
    if override.exists():
        return rel, override.read_bytes()
    return rel, current.data if current else b""


def save_override(ctx: Context, node: Node, rel: str, data: bytes) -> BuildReport:
    """Write the node's own copy of `rel` and rebuild the node; if the build fails, the override
    file goes back to what it was and nothing is saved."""
    override = ctx.site.node_overrides(node.name) / rel
    before = override.read_bytes() if override.exists() else None
    atomic_write(override, data, mode=0o644)
    try:
        return build_overlays(ctx, [node])
    except UserError as e:
        if before is None:
            override.unlink()
        else:
            atomic_write(override, before, mode=0o644)
        raise UserError(f"not saved: {e}") from None


def regenerate_secrets(ctx: Context, what: Literal["munge", "ssh"], nodes: list[Node]) -> BuildReport:
    """Replace the cluster MUNGE key, or the SSH host keys of `nodes`; then rebuild every node
    whose files changed."""
    if what == "munge":
        secrets.regenerate_munge(ctx.state)
    else:
        secrets.regenerate_ssh(ctx.state, ctx.inventory(), nodes)
    return build_overlays(ctx)
