"""Image, initramfs and NFS export commands."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any, Literal

import click

from ..actions import images as image_actions
from ..actions.nfs import GANESHA_RECOVERY, nfs_exports
from ..artifacts import images, recipes
from ..artifacts.initramfs import COMPRESSIONS
from ..atomic import atomic_write
from ..errors import UserError
from .context import Context, echo_json, echo_table, pass_ctx, progress_bar

_compression = click.option(
    "--compression", type=click.Choice(COMPRESSIONS), default="gzip", show_default=True, help="Initramfs compression."
)
_kernel = click.option("--kernel", metavar="VERSION", help="Kernel version from the image's /boot (default: newest).")
_keep = click.option(
    "--keep",
    type=click.IntRange(1),
    default=3,
    show_default=True,
    help="Versions to keep, the current one included. Older ones are removed once the boot "
    "configs name the new version; a node still running a removed version loses its root.",
)


def _progress() -> images.Progress:
    start = time.monotonic()

    def show(line: str) -> None:
        click.echo(f"[{time.monotonic() - start:6.1f}s] {line}", err=True)

    return show


def _made(v: images.ImageVersion) -> str:
    return f"{v.image} {v.version}: kernel {v.meta.get('kernel') or 'none'}, {v.path}"


def _done(switch: image_actions.Switch, *said: str) -> None:
    """Say what changed and where the image's nodes stand; a failed rebuild of their boot
    configs is the command's error."""
    for line in (*said, switch.message):
        if line:
            click.echo(line)
    switch.check()


@click.group()
def image() -> None:
    """Node root filesystems: build, import, versions, admin commands inside."""


@image.command()
@click.argument("name")
@click.option(
    "--suite", default=None, help=f"Debian suite [default: {images.DEFAULT_SUITE}, or the profile's vars.image_suite]."
)
@click.option(
    "--package",
    "-p",
    "packages",
    multiple=True,
    metavar="PKG",
    help="A package to install (repeat); replaces the default set.",
)
@click.option("--add", "added", multiple=True, metavar="PKG", help="A package to add to the set (repeat).")
@click.option("--profile", help="Take the package list (vars.image_packages) and suite from this profile.")
@click.option("--mirror", help="Debian mirror URL [default: the host's apt sources].")
@click.option("--variant", default="minbase", show_default=True, help="debootstrap variant.")
@click.option(
    "--cache",
    "cache_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Reuse a finished root cached here (keyed by suite, variant and packages).",
)
@_kernel
@_compression
@_keep
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the suite, packages, mirror, cache file and debootstrap "
    "command this build would use, and build nothing.",
)
@pass_ctx
def build(
    ctx: Context,
    name: str,
    suite: str | None,
    packages: tuple[str, ...],
    added: tuple[str, ...],
    profile: str | None,
    mirror: str | None,
    variant: str,
    cache_dir: Path | None,
    kernel: str | None,
    compression: str,
    keep: int,
    dry_run: bool,
) -> None:
    """Build a new version of image NAME: as its recipe (SITE/images/NAME.yaml) says, else with
    debootstrap (default: a Slurm compute node).

    The nodes that boot NAME then get boot configs for the new version."""
    images.check_name(name)
    common: dict[str, Any] = {"mirror": mirror, "cache_dir": cache_dir, "compression": compression, "keep": keep}
    recipe = recipes.load_recipe(ctx.site, name)
    if recipe is not None:
        given = [f for f, v in (("--suite", suite), ("-p", packages), ("--add", added), ("--profile", profile)) if v]
        if given:
            where = ctx.site.image_recipe(name)
            raise UserError(f"{name} has a recipe ({where}): change it there, not with {given[0]}")
        if dry_run:
            click.echo(json.dumps({"image": name, "recipe": recipe.to_json()}, indent=2))
            return
        switch = image_actions.build_recipe(ctx, name, recipe, **common, progress=_progress(), bar=progress_bar())
        _done(switch, _made(switch.version))
        return
    suite, pkgs = image_actions.build_inputs(ctx, suite, packages, added, profile)
    if dry_run:
        _show_plan(name, suite, pkgs, mirror or images.host_mirror(), variant, cache_dir)
        return
    switch = image_actions.build_image(
        ctx, name, suite, pkgs, variant=variant, kernel=kernel, **common, progress=_progress(), bar=progress_bar()
    )
    _done(switch, _made(switch.version))


def _show_plan(name: str, suite: str, pkgs: tuple[str, ...], mirror: str, variant: str, cache_dir: Path | None) -> None:
    cached = images.cache_file(cache_dir, suite, variant, pkgs) if cache_dir else None
    if cached is None:
        cache = "none (no --cache)"
    elif cached.exists():
        cache = f"{cached} (present: unpacked instead of running debootstrap)"
    else:
        cache = f"{cached} (absent: written after debootstrap)"
    for key, value in (
        ("image", f"{name} (dry run: nothing built)"),
        ("suite", suite),
        ("variant", variant),
        ("packages", " ".join(pkgs)),
        ("mirror", mirror),
        ("cache", cache),
        ("command", shlex.join(images.debootstrap_argv(suite, pkgs, variant, "ROOT", mirror))),
    ):
        click.echo(f"{key + ':':10}{value}")


@image.command(name="import")
@click.argument("name")
@click.argument("source")
@_kernel
@_compression
@_keep
@pass_ctx
def import_(ctx: Context, name: str, source: str, kernel: str | None, compression: str, keep: int) -> None:
    """Adopt SOURCE as a new version of image NAME: a root directory, a tarball, or a container
    image with a kernel (oci-archive:FILE, docker-archive:FILE, oci:DIR[:TAG],
    containers-storage:NAME, podman:NAME).

    The nodes that boot NAME then get boot configs for the new version."""
    switch = image_actions.import_image(
        ctx, name, source, kernel=kernel, compression=compression, keep=keep, progress=_progress(), bar=progress_bar()
    )
    _done(switch, _made(switch.version))


@image.command(name="export")
@click.argument("name")
@click.argument("dest", metavar="oci-archive:FILE")
@click.option("--version", metavar="VERSION", help="The version to export (default: the current one).")
@pass_ctx
def export(ctx: Context, name: str, dest: str, version: str | None) -> None:
    """Write image NAME as a one-layer container image to oci-archive:FILE (or docker-archive:FILE)."""
    out = images.export_image(ctx.state, name, dest, version, _progress())
    click.echo(f"wrote {out} ({out.stat().st_size} bytes)")


@image.command()
@click.argument("name")
@click.argument("old", metavar="vA")
@click.argument("new", metavar="vB")
@pass_ctx
def diff(ctx: Context, name: str, old: str, new: str) -> None:
    """Packages (added, removed, upgraded, downgraded) and files (added, removed, changed)
    from version vA to vB of image NAME."""
    lines = images.diff_versions(ctx.state, name, old, new).lines()
    click.echo("\n".join(lines) if lines else f"{name}: {old} and {new} are the same")


@image.command(name="list")
@click.option("--all", "show_all", is_flag=True, help="Every version, not just the current ones.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def list_(ctx: Context, show_all: bool, as_json: bool) -> None:
    """Images and their versions."""
    rows = images.list_images(ctx.state)
    if show_all:
        rows = [v for cur in rows for v in images.versions(ctx.state, cur.image)]
    data = [
        {
            "image": v.image,
            "version": v.version,
            "current": v.current,
            "kernel": v.meta.get("kernel"),
            "source": v.meta.get("source"),
            "created": v.meta.get("created"),
            "path": str(v.path),
        }
        for v in rows
    ]
    if as_json:
        echo_json(data)
        return
    echo_table(
        ["image", "version", "current", "kernel", "created", "source"],
        [[d["image"], d["version"], "*" if d["current"] else "", d["kernel"], d["created"], d["source"]] for d in data],
    )


@image.command()
@click.argument("name")
@click.option("--to", "version", metavar="VERSION", help="The version to switch to (default: the previous one).")
@pass_ctx
def rollback(ctx: Context, name: str, version: str | None) -> None:
    """Switch image NAME back to an older version; its nodes get boot configs for it."""
    switch = image_actions.rollback_image(ctx, name, version, bar=progress_bar())
    _done(switch, f"{name}: now at {switch.version.version}")


@image.command(name="rm")
@click.argument("name")
@click.option("--version", metavar="VERSION", help="Remove only this (non-current) version.")
@click.option("--force", is_flag=True, help="Remove even if nodes in the inventory use the image.")
@pass_ctx
def rm(ctx: Context, name: str, version: str | None, force: bool) -> None:
    """Remove image NAME (or one of its old versions: a node still running it loses its root)."""
    users = image_actions.remove_image(ctx, name, version, force)
    click.echo(f"removed {name}{' ' + version if version else ''}")
    if users:
        more = f" and {len(users) - 5} more" if len(users) > 5 else ""
        click.echo(
            f"warning: {len(users)} node(s) still name {name} ({', '.join(users[:5])}{more}); their boot "
            f"configs are left as they were and cannot boot: give them another image and run "
            f"`provisioner overlay build`",
            err=True,
        )


def _in_image(ctx: Context, name: str, argv: list[str], in_place: bool) -> None:
    status, switch = image_actions.exec_in_image(
        ctx, name, argv, in_place=in_place, progress=_progress(), bar=progress_bar()
    )
    if status != 0:
        raise click.exceptions.Exit(status)
    if switch is not None:
        _done(switch)


@image.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--in-place", is_flag=True, help="Change the current version directly instead of a new one.")
@pass_ctx
def exec_(ctx: Context, name: str, command: tuple[str, ...], in_place: bool) -> None:
    """Run COMMAND inside image NAME (e.g. `image exec debian12 -- apt-get install -y htop`).

    It runs on a copy that becomes the new version only if COMMAND succeeds; the nodes that
    boot NAME then get boot configs for it."""
    _in_image(ctx, name, list(command), in_place)


@image.command()
@click.argument("name")
@click.option("--in-place", is_flag=True, help="Change the current version directly instead of a new one.")
@pass_ctx
def shell(ctx: Context, name: str, in_place: bool) -> None:
    """An interactive shell inside image NAME; a new version when it exits with status 0 (the
    nodes that boot NAME then get boot configs for it)."""
    _in_image(ctx, name, ["/bin/sh", "-i"], in_place)


@click.group()
def initramfs() -> None:
    """The native initramfs (busybox, the image's NIC/NFS/overlay modules, initcpio/ runtime)."""


@initramfs.command(name="build")
@click.argument("image_name", metavar="IMAGE")
@_kernel
@_compression
@click.option("--module", "modules", multiple=True, metavar="NAME", help="An extra kernel module (repeat).")
@click.option(
    "--generator",
    type=click.Choice(["native", "dracut"]),
    default="native",
    show_default=True,
    help="native: busybox and the image's modules; dracut: the image's own dracut with the provisioner module.",
)
@pass_ctx
def initramfs_build(
    ctx: Context, image_name: str, kernel: str | None, compression: str, modules: tuple[str, ...], generator: str
) -> None:
    """(Re)build the initramfs of IMAGE's current version, with the `initramfs_modules` of the
    nodes that boot it."""
    out = image_actions.build_initramfs(
        ctx, image_name, kernel, compression, tuple(modules), generator=generator, progress=_progress()
    )
    click.echo(f"wrote {out} ({out.stat().st_size} bytes)")


@click.group()
def nfs() -> None:
    """NFS exports of images (read-only) and homes (read-write)."""


@nfs.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["exports", "ganesha"]),
    default="exports",
    show_default=True,
    help="/etc/exports for kernel nfsd, or an nfs-ganesha configuration.",
)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write here (atomically).")
@click.option(
    "--recovery-root",
    type=click.Path(path_type=Path),
    default=GANESHA_RECOVERY,
    show_default=True,
    help="nfs-ganesha's state directory.",
)
@pass_ctx
def exports(ctx: Context, fmt: Literal["exports", "ganesha"], output: Path | None, recovery_root: Path) -> None:
    """Render the NFS exports: every image (read-only) and cluster.nfs.exports.

    An image is exported whole, every version in it, and a node mounts the version its boot
    config names; so re-run this and reload the NFS server when an image is added or removed,
    not after a rebuild or rollback."""
    text = nfs_exports(ctx, fmt, recovery_root)
    if output:
        atomic_write(output, text)
        click.echo(f"wrote {output}")
    else:
        click.echo(text, nl=False)
