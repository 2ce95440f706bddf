"""Image actions: every way an image's current version changes (build, import, exec, rollback)
rebuilds the boot configs of the nodes that boot it, so they pin the new version. Each new
initramfs carries the kernel modules the image's nodes ask for (`initramfs_modules`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import images, initramfs
from ..artifacts.images import ImageVersion
from ..artifacts.kmod import MissingModules
from ..artifacts.recipes import Recipe
from ..errors import UserError
from .context import Context, Say, quiet
from .overlays import ProgressBar, build_overlays


@dataclass(frozen=True)
class Switch:
    """An image's new current version, and what became of the nodes that boot it."""

    version: ImageVersion
    nodes: tuple[str, ...] = ()  # whose boot configs now name `version`
    message: str | None = None  # what the user is told
    error: str | None = None  # the nodes' boot configs were not rebuilt: they name the old version

    def check(self) -> None:
        """Raise the rebuild's failure, if there was one (after the caller has said the rest)."""
        if self.error:
            raise UserError(self.error)


@dataclass
class _Follow:
    """Rebuild the boot configs of the image's nodes once its version switched: an
    images.OnSwitch (older versions are pruned only if it returns True, i.e. no boot config
    names them any more)."""

    ctx: Context
    bar: ProgressBar | None
    switch: Switch | None = None

    def __call__(self, v: ImageVersion) -> bool:
        self.switch = follow(self.ctx, v, self.bar)
        return self.switch.error is None

    def done(self) -> Switch:
        assert self.switch is not None, "the image's version did not switch"
        return self.switch


def follow(ctx: Context, v: ImageVersion, bar: ProgressBar | None = None) -> Switch:
    """Rebuild the overlays and boot configs of the nodes that boot `v`'s image, so they pin `v`."""
    if not ctx.has_inventory():
        return Switch(v, message=f"no inventory at {ctx.site.cluster_yaml} yet: no boot configs to update")
    try:
        nodes = [n for n in ctx.inventory().nodes if n.image == v.image]
        if nodes:
            build_overlays(ctx, nodes, bar=bar)
    except (UserError, OSError) as e:
        return Switch(
            v,
            error=f"{v.image} is now at {v.version}, but its nodes' boot configs were not rebuilt: "
            f"{e}\nThey still boot the version they named before; fix this and run "
            f"`provisioner overlay build`.",
        )
    return Switch(v, tuple(n.name for n in nodes), f"{len(nodes)} node(s) now boot {v.image} {v.version}")


def build_inputs(
    ctx: Context,
    suite: str | None = None,
    packages: tuple[str, ...] = (),
    added: tuple[str, ...] = (),
    profile: str | None = None,
) -> tuple[str, tuple[str, ...]]:
    """The suite and packages of a build: each given, else the profile's vars.image_suite /
    image_packages, else the default; `added` packages join whichever set that gave."""
    pvars: dict[str, Any] = {}
    if profile:
        prof = ctx.inventory().profiles.get(profile)
        if prof is None:
            raise UserError(f"no such profile: {profile}")
        pvars = prof.settings.get("vars") or {}
    pkgs = tuple(packages) or tuple(pvars.get("image_packages") or images.DEFAULT_PACKAGES)
    return (suite or pvars.get("image_suite") or images.DEFAULT_SUITE), tuple(dict.fromkeys(pkgs + tuple(added)))


def initramfs_modules(ctx: Context, image: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """`extra` and the `initramfs_modules` of every node that boots `image`: one initramfs per
    image version, so it carries the drivers of all its nodes' hardware."""
    nodes = ctx.inventory().nodes if ctx.has_inventory() else ()
    asked = [m for n in nodes if n.image == image for m in n.initramfs_modules]
    return tuple(dict.fromkeys([*extra, *asked]))


@contextmanager
def _naming_askers(ctx: Context, image: str) -> Iterator[None]:
    """A module the image's kernel lacks is named with the nodes (and where their setting
    comes from) that asked for it."""
    try:
        yield
    except MissingModules as e:
        nodes = ctx.inventory().nodes if ctx.has_inventory() else ()
        who = [
            f"{n.name} ({n.sources.get('initramfs_modules', 'node')})"
            for n in nodes
            if n.image == image and {m.replace("-", "_") for m in n.initramfs_modules} & set(e.names)
        ]
        asked = f"; initramfs_modules of {', '.join(who)}" if who else ""
        raise UserError(
            f"image {image}: {e.kernel} has no module {', '.join(e.names)} (not in its modules.dep){asked}"
        ) from None


def build_initramfs(
    ctx: Context,
    image: str,
    kernel: str | None = None,
    compression: str = "gzip",
    extra: tuple[str, ...] = (),
    generator: str = "native",
    progress: Say = quiet,
) -> Path:
    """(Re)build the initramfs of the image's current version with its nodes' modules; run it
    after changing a profile's `initramfs_modules`. `generator` dracut: the image's own dracut
    with the provisioner module, the modules added as dracut drivers."""
    if generator == "dracut":
        modules = initramfs_modules(ctx, image, extra)
        return images.dracut_initramfs(ctx.state, image, kernel, compression, modules, progress)
    with _naming_askers(ctx, image):
        return initramfs.build_initramfs(ctx.state, image, kernel, compression, initramfs_modules(ctx, image, extra))


def _new_version(
    ctx: Context, name: str, bar: ProgressBar | None, make: Callable[[images.OnSwitch, tuple[str, ...]], object]
) -> Switch:
    """Run `make(on_switch, modules)`, which makes a new version of image `name` with the
    initramfs modules its nodes ask for; then its nodes boot it."""
    then = _Follow(ctx, bar)
    with _naming_askers(ctx, name):
        make(then, initramfs_modules(ctx, name))
    return then.done()


def build_image(
    ctx: Context,
    name: str,
    suite: str = images.DEFAULT_SUITE,
    packages: tuple[str, ...] = images.DEFAULT_PACKAGES,
    *,
    mirror: str | None = None,
    variant: str = "minbase",
    kernel: str | None = None,
    cache_dir: Path | None = None,
    compression: str = "gzip",
    keep: int = 3,
    progress: Say = quiet,
    bar: ProgressBar | None = None,
) -> Switch:
    """A new version of image `name` from debootstrap; its nodes then boot it."""
    return _new_version(
        ctx,
        name,
        bar,
        lambda then, mods: images.build_image(
            ctx.state,
            name,
            suite,
            packages,
            mirror,
            variant,
            kernel,
            cache_dir,
            compression,
            keep,
            progress,
            then,
            mods,
        ),
    )


def build_recipe(
    ctx: Context,
    name: str,
    recipe: Recipe,
    *,
    mirror: str | None = None,
    cache_dir: Path | None = None,
    compression: str = "gzip",
    keep: int = 3,
    progress: Say = quiet,
    bar: ProgressBar | None = None,
) -> Switch:
    """A new version of image `name` as its recipe (site/images/NAME.yaml) says; its nodes then boot it."""
    beside = ctx.site.image_recipe(name).with_suffix("")
    return _new_version(
        ctx,
        name,
        bar,
        lambda then, mods: images.build_recipe(
            ctx.state, name, recipe, beside, mirror, cache_dir, compression, keep, progress, then, mods
        ),
    )


def import_image(
    ctx: Context,
    name: str,
    source: Path | str,
    *,
    kernel: str | None = None,
    compression: str = "gzip",
    keep: int = 3,
    progress: Say = quiet,
    bar: ProgressBar | None = None,
) -> Switch:
    """A new version of image `name` from a root directory, tarball or container image; its
    nodes then boot it."""
    return _new_version(
        ctx,
        name,
        bar,
        lambda then, mods: images.import_image(
            ctx.state, name, source, kernel, compression, keep, progress, then, mods
        ),
    )


def exec_in_image(
    ctx: Context,
    name: str,
    argv: list[str],
    *,
    in_place: bool = False,
    progress: Say = quiet,
    bar: ProgressBar | None = None,
) -> tuple[int, Switch | None]:
    """Run `argv` inside image `name` (see images.exec_in_image): its exit status, and the
    switch to the new version it made, if it made one (not in place, and only on success)."""
    then = _Follow(ctx, bar)
    with _naming_askers(ctx, name):
        status = images.exec_in_image(
            ctx.state,
            name,
            argv,
            in_place=in_place,
            progress=progress,
            on_switch=None if in_place else then,
            modules=initramfs_modules(ctx, name),
        )
    return status, then.switch


def rollback_image(ctx: Context, name: str, to: str | None = None, bar: ProgressBar | None = None) -> Switch:
    """Switch image `name` back to an older version (default: the previous one); its nodes
    then boot that one."""
    return follow(ctx, images.rollback(ctx.state, name, to), bar)


def remove_image(ctx: Context, name: str, version: str | None = None, force: bool = False) -> list[str]:
    """Remove image `name` (or one old version) and return the nodes that still name it; with
    nodes booting it, only if `force` (an unreadable inventory then does not stop it either)."""
    users: list[str] = []
    if version is None and ctx.has_inventory():
        try:
            users = [n.name for n in ctx.inventory().nodes if n.image == name]
        except UserError:
            if not force:
                raise
    if users and not force:
        raise UserError(f"{len(users)} node(s) boot {name} (e.g. {', '.join(users[:3])}); use --force")
    images.remove(ctx.state, name, version)
    return users
