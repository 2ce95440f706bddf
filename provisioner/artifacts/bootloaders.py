"""The static boot tree (state/boot): bootloader binaries copied from Debian's packages.

Firmware fetches these by fixed names over TFTP (see the TFTP paths contract); the DHCP
server hands out the name matching the client's architecture. Copies are atomic and skipped
when the bytes are already there, so `boot install` can run on every build.
"""

from __future__ import annotations

import filecmp
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_write
from ..paths import State
from .layout import boot_dir


@dataclass(frozen=True)
class Loader:
    """Files from one Debian package: (source path, name in the boot tree) pairs or globs."""

    package: str
    files: tuple[tuple[str, str], ...]


SYSLINUX_BIOS = "/usr/lib/syslinux/modules/bios"
SYSLINUX_EFI64 = "/usr/lib/syslinux/modules/efi64"

LOADERS = (
    Loader("ipxe", (("/usr/lib/ipxe/undionly.kpxe", "undionly.kpxe"),
                    ("/usr/lib/ipxe/ipxe.efi", "ipxe.efi"),
                    ("/usr/lib/ipxe/snponly.efi", "snponly.efi"))),
    Loader("pxelinux", (("/usr/lib/PXELINUX/pxelinux.0", "pxelinux.0"),
                        ("/usr/lib/PXELINUX/lpxelinux.0", "lpxelinux.0"))),
    Loader("syslinux-common", ((f"{SYSLINUX_BIOS}/*.c32", ""),)),
    Loader("syslinux-efi", (("/usr/lib/SYSLINUX.EFI/efi64/syslinux.efi", "efi64/syslinux.efi"),
                            (f"{SYSLINUX_EFI64}/*", "efi64/"))),
    # The monolithic network GRUB: tftp and http built in, prefix /grub (boottree maps
    # grub/grub.cfg to the node's config).
    Loader("grub-efi-amd64-bin", (("/usr/lib/grub/x86_64-efi/monolithic/grubnetx64.efi", "grubx64.efi"),)),
)


class MissingLoader(Exception):
    """A bootloader file is not installed; the message names the Debian package."""


def _expand(loader: Loader) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    for src, dest in loader.files:
        if "*" in src:
            parent = Path(src).parent
            matches = sorted(p for p in parent.glob(Path(src).name) if p.is_file())
            if not matches:
                raise MissingLoader(f"no {src} (install the Debian package {loader.package})")
            out += [(p, dest + p.name) for p in matches]
        elif Path(src).is_file():
            out.append((Path(src), dest))
        else:
            raise MissingLoader(f"no {src} (install the Debian package {loader.package})")
    return out


def install(state: State) -> list[tuple[str, bool]]:
    """Copy every bootloader into the boot tree; returns (name, changed) per file."""
    plan = [item for loader in LOADERS for item in _expand(loader)]
    root = boot_dir(state)
    done = []
    for src, name in plan:
        dest = root / name
        same = dest.is_file() and filecmp.cmp(src, dest, shallow=False)
        if not same:
            atomic_write(dest, src.read_bytes())
        done.append((name, not same))
    return done
