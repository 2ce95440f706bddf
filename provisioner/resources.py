"""What the package ships besides code, found through importlib.resources and nothing else.

The stock trees overlays/, pxe/ and initcpio/ stay at the top of the repository (the design
card puts them there). provisioner/stock/ holds a symlink to each: an editable checkout reads
them in place, and the wheel build copies them through the links into provisioner/stock/
(package-data in pyproject.toml), so both installs answer the same paths here. Wheels carry no
symlinks: a symlink a stock overlay puts on the node is a `NAME.symlink` file naming its target.
"""

from __future__ import annotations

import os
import shutil
import sys
from importlib import resources
from pathlib import Path

from .paths import Site, State


def _shipped(rel: str) -> Path:
    """A shipped folder as a real path: the overlay builder walks it with os.walk and lstat,
    which an install inside a zip cannot offer."""
    path = resources.files("provisioner") / rel
    if isinstance(path, Path):
        return path
    raise RuntimeError(f"provisioner's {rel} is not on a file system ({path}): install it with pip or pipx")


STOCK_OVERLAYS = _shipped("stock/overlays")
STOCK_PXE = _shipped("stock/pxe")
INITCPIO = _shipped("stock/initcpio")
SYSTEMD = _shipped("systemd")
WEB_CONSOLE = _shipped("servers/http/webconsole")  # the web console's templates and static files


def installed_script() -> str:
    """This installation's `provisioner` script: the one beside the running interpreter (a
    virtualenv, pipx), else the one on PATH."""
    beside = Path(sys.executable).parent / "provisioner"
    if beside.is_file():
        return str(beside)
    return os.path.abspath(shutil.which("provisioner") or sys.argv[0])


def systemd_unit(name: str, site: Site, state: State) -> str:
    """A shipped unit for this installation: its script and the site and state directories the
    command was given (flags, environment or defaults), as absolute paths."""
    text = (SYSTEMD / name).read_text()
    for placeholder, value in (
        ("@PROVISIONER@", installed_script()),
        ("@SITE@", os.path.abspath(site.root)),
        ("@STATE@", os.path.abspath(state.root)),
    ):
        text = text.replace(placeholder, value)
    return text
