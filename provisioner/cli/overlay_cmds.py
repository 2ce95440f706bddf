"""Overlay commands: `overlay build|list|show|edit|push|diff`, `plan` and `secrets show|regenerate|sign-user`."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Literal, TextIO

import click

from ..actions import overlays, runtime
from ..artifacts import secrets
from ..atomic import atomic_write
from ..errors import UserError
from ..render.overlays import FileEntry
from .context import Context, echo_json, echo_table, pass_ctx, progress_bar


@click.group()
def overlay() -> None:
    """Per-node overlays: build, inspect, override files."""


@overlay.command("build")
@click.argument("nodes", required=False)
@click.option("--force", is_flag=True, help="Rebuild even nodes whose inputs did not change.")
@click.option("--jobs", "-j", type=click.IntRange(1, 256), help="Worker processes [default: one per core].")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@pass_ctx
def overlay_build_cmd(ctx: Context, nodes: str | None, force: bool, jobs: int | None, as_json: bool) -> None:
    """Build overlay archives and boot configs of NODES (default all) whose inputs changed."""
    report = overlays.build_overlays(
        ctx,
        ctx.select(nodes) if nodes else None,
        force=force,
        jobs=jobs,
        bar=progress_bar(quiet=as_json),
        say=click.echo if not as_json else lambda _: None,
    )
    if as_json:
        echo_json(report.__dict__)
        return
    click.echo(f"built {len(report.built)}, unchanged {len(report.unchanged)} in {report.seconds:.2f} s")
    if report.no_image:
        click.echo(f"no image, so no boot configs: {', '.join(report.no_image)}")


@overlay.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def overlay_list(ctx: Context, as_json: bool) -> None:
    """Overlays available (stock and site) and how many nodes use each."""
    b = overlays.builder(ctx)
    used = Counter(o for n in ctx.inventory().nodes for o in n.overlays)
    rows = []
    for name in b.library.names():
        tree = b.library.tree(name)
        where = [("stock" if i == 0 else "site") for i, r in enumerate(b.library.roots(name)) if r.is_dir()]
        rows.append({"overlay": name, "sources": "+".join(where), "files": len(tree.files), "nodes": used.get(name, 0)})
    missing = sorted(set(used) - set(b.library.names()))
    if as_json:
        echo_json({"overlays": rows, "missing": missing})
        return
    echo_table(["overlay", "sources", "files", "nodes"], [list(r.values()) for r in rows])
    if missing:
        raise UserError(f"used by nodes but not found: {', '.join(missing)}")


@overlay.command("show")
@click.argument("node")
@click.argument("path", required=False)
@click.option("--reveal", is_flag=True, help="Print a secret's bytes instead of masking them.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def overlay_show(ctx: Context, node: str, path: str | None, reveal: bool, as_json: bool) -> None:
    """NODE's overlay as it would be built now: every file, or one file's content."""
    entries = overlays.render_node(ctx, ctx.node(node))
    if path is None:
        if as_json:
            echo_json(
                [
                    {
                        "path": e.path,
                        "kind": e.kind,
                        "mode": f"{e.perm:04o}",
                        "owner": e.owner,
                        "group": e.group,
                        "size": len(e.data),
                        "source": e.source,
                        **({"target": e.data.decode()} if e.kind == "symlink" else {}),
                    }
                    for e in entries
                ]
            )
            return
        echo_table(
            ["mode", "owner", "group", "size", "path", "source"],
            [
                [
                    _mode_str(e),
                    e.owner,
                    e.group,
                    len(e.data),
                    e.path + (f" -> {e.data.decode()}" if e.kind == "symlink" else ""),
                    e.source,
                ]
                for e in entries
            ],
        )
        state = runtime.runtime_states(ctx, [ctx.node(node)])[node]
        click.echo(f"runtime: {state or 'not reported'}")
        return
    want = path.strip("/")
    entry = next((e for e in entries if e.path == want), None)
    if entry is None:
        raise UserError(f"{node} has no {want} in its overlay")
    if entry.secret and not reveal:
        click.echo(f"({want}: secret, {len(entry.data)} bytes; --reveal to print it)")
        return
    if entry.kind == "dir":
        click.echo(f"{want}: directory {_mode_str(entry)} {entry.owner}:{entry.group}")
        return
    sys.stdout.buffer.write(entry.data)


def _mode_str(e: FileEntry) -> str:
    kind = {"dir": "d", "symlink": "l"}.get(e.kind, "-")
    bits = "".join(c if e.perm & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx"))
    return kind + bits


@overlay.command("edit")
@click.argument("node")
@click.argument("path")
@pass_ctx
def overlay_edit(ctx: Context, node: str, path: str) -> None:
    """Edit NODE's own copy of PATH in $EDITOR (seeded from the rendered default), then
    re-render and rebuild the node. Nothing is saved if the editor fails or nothing changed."""
    n = ctx.node(node)
    rel, seed = overlays.editable(ctx, n, path)
    edited = _run_editor(seed, Path(rel).name)
    if edited == seed:
        click.echo(f"{node}: {rel} unchanged, nothing saved")
        return
    report = overlays.save_override(ctx, n, rel, edited)
    click.echo(f"{node}: saved {ctx.site.node_overrides(node) / rel}; {'rebuilt' if report.built else 'up to date'}")


def _run_editor(seed: bytes, name: str) -> bytes:
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.TemporaryDirectory(prefix="provisioner-edit.") as tmp:
        f = Path(tmp) / name
        f.write_bytes(seed)
        res = subprocess.run([*shlex.split(editor), str(f)], check=False)
        if res.returncode != 0:
            raise UserError(f"editor {editor!r} exited {res.returncode}; nothing saved")
        return f.read_bytes()


@overlay.command("push")
@click.argument("nodes")
@click.option("--timeout", type=click.FloatRange(0.5, 3600), default=30.0, show_default=True, help="Seconds to wait.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def overlay_push(ctx: Context, nodes: str, timeout: float, as_json: bool) -> None:
    """Ask the agents of running NODES to apply their runtime overlay now, and wait for each."""
    results = runtime.push(ctx, ctx.select(nodes), timeout)
    if as_json:
        echo_json([r.__dict__ for r in results])
    else:
        echo_table(["node", "result", "detail"], [[r.node, "ok" if r.ok else "FAILED", r.detail] for r in results])
    failed = [r.node for r in results if not r.ok]
    if failed:
        raise UserError(f"{len(failed)} of {len(results)} node(s) not refreshed")


@overlay.command("diff")
@click.argument("node")
@click.option("--live", is_flag=True, help="Compare with what the node's agent reports (required).")
@pass_ctx
def overlay_diff(ctx: Context, node: str, live: bool) -> None:
    """Runtime files of NODE that differ on the node from what was rendered (edited by hand);
    exit status 1 when some do."""
    if not live:
        raise UserError("overlay diff needs --live; `provisioner plan NODE --diff` shows what a build would change")
    note, drift = runtime.live_diff(ctx, ctx.node(node))
    click.echo(f"{node}: {note}")
    if not drift:
        click.echo("no drift")
        return
    echo_table(["what", "path", "detail"], [[d.what, d.path, d.detail] for d in drift])
    click.get_current_context().exit(1)


@click.command()
@click.argument("nodes", required=False)
@click.option("--diff", "with_diff", is_flag=True, help="Unified diffs of changed files (secrets never shown).")
@pass_ctx
def plan(ctx: Context, nodes: str | None, with_diff: bool) -> None:
    """Which files of NODES (default all) a build would change. Writes nothing."""
    marks = {"added": "+", "removed": "-", "changed": "~", "mode": "m", "owner": "o"}
    pending = 0
    for n, changes in overlays.plan(ctx, ctx.select(nodes), with_diff):
        if changes is None:
            click.echo(f"{n.name}: not built yet")
            pending += 1
            continue
        if not changes:
            continue
        pending += 1
        click.echo(f"{n.name}: {len(changes)} change(s)")
        for c in changes:
            click.echo(f"  {marks[c.what]} {c.path}" + (f" ({c.diff})" if c.what in ("mode", "owner") else ""))
            if with_diff and c.what == "changed" and c.diff:
                click.echo(c.diff.rstrip("\n"))
    click.echo(f"{pending} node(s) would change" if pending else "nothing to build")


@click.group("secrets")
def secrets_group() -> None:
    """Cluster secrets: the MUNGE key, SSH host keys and CAs (state/secrets)."""


@secrets_group.command("show")
@click.argument("node", required=False)
@click.option("--reveal", is_flag=True, help="Print the secrets themselves (binary ones in base64).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def secrets_show(ctx: Context, node: str | None, reveal: bool, as_json: bool) -> None:
    """List secrets (masked: size and fingerprint), optionally only NODE's."""
    infos = secrets.list_secrets(ctx.state, node)
    if as_json:
        echo_json([{**s.__dict__, **({"value": s.reveal(ctx.state)} if reveal else {})} for s in infos])
        return
    if not reveal:
        echo_table(["path", "mode", "size", "fingerprint"], [[s.path, s.mode, s.size, s.fingerprint] for s in infos])
        return
    for s in infos:
        click.echo(f"==> {s.path} <==")
        click.echo(s.reveal(ctx.state), nl=False)


@secrets_group.command("regenerate")
@click.argument("what", type=click.Choice(["munge", "ssh"]))
@click.argument("nodes", required=False)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def secrets_regenerate(ctx: Context, what: Literal["munge", "ssh"], nodes: str | None, yes: bool) -> None:
    """Replace the MUNGE key, or the SSH host keys of NODES (default all); then rebuild."""
    chosen = ctx.select(nodes) if what == "ssh" else []
    target = "the cluster MUNGE key" if what == "munge" else f"SSH host keys of {len(chosen)} node(s)"
    if not yes and not click.confirm(f"Replace {target}? Running nodes keep the old ones until they reboot"):
        raise UserError("nothing changed")
    report = overlays.regenerate_secrets(ctx, what, chosen)
    click.echo(f"replaced {target}; rebuilt {len(report.built)} node(s)")


@secrets_group.command("sign-user")
@click.argument("user")
@click.argument("pubkey", type=click.File("r"))
@click.option("--principals", help="Comma list of names the certificate logs in as [default: USER].")
@click.option("--validity", default=secrets.USER_CERT_VALIDITY, show_default=True, help="As ssh-keygen -V takes it.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the certificate here [default: stdout].")
@pass_ctx
def secrets_sign_user(
    ctx: Context, user: str, pubkey: TextIO, principals: str | None, validity: str, output: str | None
) -> None:
    """Sign USER's SSH public key PUBKEY (a .pub file, - for stdin) with the site's user CA,
    which nodes with the ssh-user-ca overlay trust."""
    names = [p for p in (principals or "").split(",") if p]
    cert = secrets.sign_user(ctx.state, ctx.inventory().cluster, user, pubkey.read(), names, validity)
    if output is None:
        click.echo(cert, nl=False)
    else:
        atomic_write(Path(output), cert, mode=0o644)
        click.echo(f"wrote {output}", err=True)
