"""The static boot tree (state/boot): the registry's boot files, copied from Debian's packages.

Firmware fetches these by fixed names over TFTP (see the TFTP paths contract); the DHCP
server hands out the name matching the client's architecture (provisioner.bootfiles declares
both). Copies are atomic and skipped when the bytes are already there, so `boot install` can
run on every build.
"""

from __future__ import annotations

import filecmp
from collections.abc import Mapping
from pathlib import Path

from ..atomic import atomic_write
from ..bootfiles import BOOT_FILES, BootFile
from ..paths import State
from .layout import boot_dir


class MissingLoader(Exception):
    """A required bootloader file is not installed; the message names the Debian package."""


def _expand(entry: BootFile) -> list[tuple[Path, str]]:
    """(source, name in the boot tree) for an entry: one file, or a folder from a glob."""
    if entry.folder:
        parent = Path(entry.source).parent
        return [(p, entry.name + p.name) for p in sorted(parent.glob(Path(entry.source).name)) if p.is_file()]
    return [(Path(entry.source), entry.name)] if Path(entry.source).is_file() else []


def install(state: State) -> list[tuple[str, bool]]:
    """Copy every boot file the host has into the boot tree; returns (name, changed) per file.
    MissingLoader, before anything is copied, if a required one is not installed."""
    plan = []
    for entry in BOOT_FILES:
        found = _expand(entry)
        if not found and entry.required:
            raise MissingLoader(f"no {entry.source} (install the Debian package {entry.package})")
        plan += found
    root = boot_dir(state)
    done = []
    for src, name in plan:
        dest = root / name
        same = dest.is_file() and filecmp.cmp(src, dest, shallow=False)
        if not same:
            atomic_write(dest, src.read_bytes())
        done.append((name, not same))
    return done


def install_rendered(state: State, files: Mapping[str, str]) -> list[str]:
    """Write rendered boot-tree files (the wait scripts) whose text changed; their names."""
    changed = []
    for name, text in files.items():
        dest = boot_dir(state) / name
        if not (dest.is_file() and dest.read_text() == text):
            atomic_write(dest, text)
            changed.append(name)
    return changed
