"""Image recipes: `site/images/NAME.yaml` says how image NAME is built, so a rebuild is
reproducible and a change to it is reviewed like any other site change.

    suite: bookworm            # debootstrap this suite (the default), or
    oci: oci-archive:/srv/node.tar   # start from a container image instead
    packages: [slurmd, munge]  # debootstrap --include, or apt-get install on an OCI base
    files:                     # then these files, written inside the image
      - {path: /etc/motd, content: "hello\\n"}
      - {path: /usr/local/bin/x, source: x, mode: "0755"}   # site/images/NAME/x
    commands:                  # then these, each `sh -c` chrooted in the image, in order
      - systemctl enable foo
    kernel: 6.1.0-28-amd64     # the kernel to boot (default: the newest in /boot)

The recipe is read by the inventory's own parser (each field declares how its value is read),
so an unknown key or a wrong value is reported with its line. The version made records the
recipe in its meta.json.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..inroot import Root, RootPathError
from ..inventory.parse import InventoryInvalid, parse_model
from ..inventory.schema import Invalid, Scope, Sections, Text, Words, setting
from ..paths import Site
from . import oci


class Lines(Words):
    """A list of strings taken whole (a shell command each); a single string is one item."""

    def one(self, text: str) -> tuple[str, ...]:
        return (text,)


class Mode(Text):
    what = 'a file mode in octal, such as "0644"'

    def convert(self, raw: Any) -> str:
        text = str(raw)
        if not isinstance(raw, str) or not text or len(text) > 4 or any(c not in "01234567" for c in text):
            raise Invalid(f"{raw!r} is not {self.what}" + ("" if isinstance(raw, str) else " (quote it)"))
        return text.zfill(4)


def _absolute(path: str, _: Scope) -> str | None:
    return None if path.startswith("/") and ".." not in path.split("/") else "must be an absolute path without .."


def _one_base(oci_ref: str, s: Scope) -> str | None:
    return "give `suite` (debootstrap) or `oci` (a container image), not both" if s.suite else None


def _one_body(source: str, s: Scope) -> str | None:
    return "give `content` or `source`, not both" if s.content is not None else None


def _beside(source: str, _: Scope) -> str | None:
    inside = source and not source.startswith("/") and ".." not in source.split("/")
    return None if inside else "must be a path relative to the recipe's folder, without .."


@dataclass(frozen=True)
class RecipeFile:
    path: str = setting(Text(), help="Where the file goes in the image.", required=True, check=_absolute)
    content: str | None = setting(Text(), help="Its text.", default=None)
    source: str | None = setting(
        Text(), help="A file beside the recipe (site/images/NAME/SOURCE).", default=None, check=_beside
    )
    mode: str = setting(Mode(), help="Its mode.", default="0644")

    def data(self, beside: Path) -> bytes:
        if self.source is not None:
            try:
                return (beside / self.source).read_bytes()
            except OSError as e:
                raise UserError(f"recipe file {self.path}: cannot read {beside / self.source}: {e.strerror}") from None
        return (self.content or "").encode()


@dataclass(frozen=True)
class Recipe:
    suite: str | None = setting(Text(), help="The Debian suite to debootstrap.", default=None)
    oci: str | None = setting(Text(), help="A container image to start from.", default=None, check=_one_base)
    variant: str = setting(Text(), help="debootstrap's variant.", default="minbase")
    mirror: str | None = setting(Text(), help="The Debian mirror (default: the master's).", default=None)
    packages: tuple[str, ...] = setting(Words(), help="Packages to install.")
    files: tuple[RecipeFile, ...] = setting(Sections(RecipeFile), help="Files to write into the image.")
    commands: tuple[str, ...] = setting(Lines(), help="Commands run in the image, in order.")
    kernel: str | None = setting(Text(), help="The kernel version to boot.", default=None)

    def to_json(self) -> dict[str, Any]:
        """As meta.json records it (lists, not tuples)."""
        out: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(self)))
        return out


def load_recipe(site: Site, name: str) -> Recipe | None:
    """Image `name`'s recipe, or None when the site has none; a UserError listing every problem."""
    path = site.image_recipe(name)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UserError(f"{path}: {e.strerror}") from None
    try:
        recipe = parse_model(text, str(path), Recipe)
    except InventoryInvalid as e:
        raise UserError(f"recipe of image {name} is invalid:\n{e}") from None
    if recipe.oci is not None:
        oci.parse_ref(recipe.oci)  # a bad reference is an error before any work
    return recipe


def write_files(recipe: Recipe, beside: Path, rootfs: Path) -> None:
    """Write the recipe's files into the image, each replacing what was there (never written
    through a link the image holds: the entry itself is replaced)."""
    image = Root(rootfs)
    for f in recipe.files:
        rel = f.path.lstrip("/")
        try:
            image.mkdir(str(Path(rel).parent))
            image.write_bytes(rel, f.data(beside), int(f.mode, 8))
        except RootPathError as e:
            raise UserError(f"recipe file {f.path}: {e}") from None
