"""The boot registry: every file a booting client asks the master for by a fixed name.

One declaration feeds every layer that names boot files: the inventory (which `boot_files`
keys an admin may override, and with what), render (the boot-config templates), artifacts
(what `boot install` copies from which Debian package) and servers (the boot file DHCP hands
each client architecture, the per-node paths of the boot tree, the stage a fetch marks). It
is a declaration, not a step of the data path, so it sits at the top of the package beside
paths.py: every layer imports it and none imports upward to reach it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Arch:
    """A client system architecture as DHCP option 93 names it (RFC 4578, IANA registry)."""

    code: int
    firmware: str  # the `boot_files` key that names its boot file
    http: bool  # UEFI HTTP boot: the boot file goes out as a URL, not a TFTP name
    title: str


ARCHES: Mapping[int, Arch] = {
    a.code: a
    for a in (
        Arch(0, "bios", False, "x86 BIOS"),
        Arch(6, "uefi32", False, "x86 32-bit UEFI"),
        Arch(7, "uefi", False, "x86-64 UEFI"),
        Arch(9, "uefi", False, "x86-64 UEFI"),
        Arch(11, "arm64", False, "ARM64 UEFI"),
        Arch(15, "uefi32", True, "x86 32-bit UEFI HTTP boot"),
        Arch(16, "http", True, "x86-64 UEFI HTTP boot"),
        Arch(19, "arm64", True, "ARM64 UEFI HTTP boot"),
    )
}
BIOS = 0  # a PXE client that names no architecture is a BIOS ROM
FIRMWARE = tuple(dict.fromkeys(a.firmware for a in ARCHES.values()))
IPXE = "ipxe"  # the `boot_files` key for a client already running iPXE (default: its script)
OVERRIDE_KEYS = (*FIRMWARE, IPXE)


@dataclass(frozen=True)
class BootFile:
    """A file of the static boot tree and the Debian package file it is copied from. A name
    ending in "/" (or "", the top) is a folder filled from a glob `source` (loader modules)."""

    name: str
    package: str
    source: str
    loader: str  # the boot config it reads next ("ipxe", "pxelinux", "grub"); "" for modules
    runs_on: tuple[str, ...] = ()  # firmware that can run it (what an override may name it for)
    default_for: tuple[str, ...] = ()  # firmware DHCP hands it to unless `boot_files` says otherwise
    stage: str | None = "bootloader"  # the boot stage its fetch marks
    required: bool = True  # False: not every Debian release or install has it; see `note`
    note: str = ""

    @property
    def folder(self) -> bool:
        return not self.name or self.name.endswith("/")

    @property
    def where(self) -> str:
        """Where it comes from, for messages."""
        return f"{self.source} (Debian package {self.package}{'; ' + self.note if self.note else ''})"


SYSLINUX_BIOS = "/usr/lib/syslinux/modules/bios"
SYSLINUX_EFI64 = "/usr/lib/syslinux/modules/efi64"

BOOT_FILES: tuple[BootFile, ...] = (
    BootFile("undionly.kpxe", "ipxe", "/usr/lib/ipxe/undionly.kpxe", "ipxe", ("bios",), ("bios",)),
    BootFile("snponly.efi", "ipxe", "/usr/lib/ipxe/snponly.efi", "ipxe", ("uefi", "http"), ("uefi",)),
    BootFile("ipxe.efi", "ipxe", "/usr/lib/ipxe/ipxe.efi", "ipxe", ("uefi", "http"), ("http",)),
    BootFile(
        "ipxe-arm64.efi",
        "ipxe",
        "/usr/lib/ipxe/ipxe-arm64.efi",
        "ipxe",
        ("arm64",),
        ("arm64",),
        required=False,
        note="Debian 13 and later",
    ),
    BootFile("pxelinux.0", "pxelinux", "/usr/lib/PXELINUX/pxelinux.0", "pxelinux", ("bios",)),
    BootFile("lpxelinux.0", "pxelinux", "/usr/lib/PXELINUX/lpxelinux.0", "pxelinux", ("bios",)),
    BootFile("", "syslinux-common", f"{SYSLINUX_BIOS}/*.c32", "", stage=None),
    BootFile(
        "efi64/syslinux.efi", "syslinux-efi", "/usr/lib/SYSLINUX.EFI/efi64/syslinux.efi", "pxelinux", ("uefi", "http")
    ),
    BootFile("efi64/", "syslinux-common", f"{SYSLINUX_EFI64}/*", "", stage=None),
    # The monolithic network GRUBs: tftp and http built in, prefix /grub (the boot tree maps
    # grub/grub.cfg to the node's config).
    BootFile(
        "grubx64.efi",
        "grub-efi-amd64-bin",
        "/usr/lib/grub/x86_64-efi/monolithic/grubnetx64.efi",
        "grub",
        ("uefi", "http"),
    ),
    BootFile(
        "grubia32.efi",
        "grub-efi-ia32-bin",
        "/usr/lib/grub/i386-efi/monolithic/grubnetia32.efi",
        "grub",
        ("uefi32",),
        ("uefi32",),
        required=False,
        note="install it for 32-bit UEFI clients",
    ),
)
BY_NAME: Mapping[str, BootFile] = {f.name: f for f in BOOT_FILES if not f.folder}
DEFAULTS: Mapping[str, BootFile] = {fw: f for f in BOOT_FILES for fw in f.default_for}


@dataclass(frozen=True)
class BootConfig:
    """A per-node boot config: rendered from `template` (pxe/, or site/pxe/ in its place) and
    asked for by the paths its loader uses."""

    loader: str
    template: str
    paths: tuple[str, ...]  # "{mac}" stands for the MAC in PXELINUX form (aa-bb-cc-dd-ee-ff)
    by_mac: bool  # the path names the node; otherwise the client's address does
    stage: str | None


CONFIGS: tuple[BootConfig, ...] = (
    BootConfig("ipxe", "boot.ipxe.j2", ("boot.ipxe",), False, "ipxe"),
    BootConfig("pxelinux", "pxelinux.cfg.j2", ("pxelinux.cfg/01-{mac}",), True, None),
    BootConfig("grub", "grub.cfg.j2", ("grub.cfg", "grub/grub.cfg"), False, None),
)


@dataclass(frozen=True)
class WaitScript:
    """The iPXE script a client gets in place of its own while no inventory names it (a MAC
    waiting for `node approve`, or for its auto adoption to finish): it sleeps, asks DHCP
    again and chains what DHCP names then, so a node approved meanwhile boots with no power
    cycle. It names no node and carries nothing secret. Backoff: retry k sleeps backoff[k]
    seconds (the last one repeats; iPXE keeps k in a setting across chains). Jitter: the
    script comes in `variants` copies, copy n sleeping n/variants of half a step more, and
    the server hands out one at random each time, so clients powered on together drift apart."""

    template: str
    path: str  # in the boot tree; "{n}" stands for the copy's number
    backoff: tuple[int, ...]
    variants: int

    def sleeps(self, n: int) -> list[int]:
        """The seconds copy `n` sleeps before each retry."""
        return [round(s * (1 + n / (2 * self.variants))) for s in self.backoff]

    def paths(self) -> list[str]:
        return [self.path.format(n=n) for n in range(self.variants)]


WAIT = WaitScript("wait.ipxe.j2", "wait/{n}.ipxe", (5, 10, 20, 40, 60), 16)

# What each image version serves to a booting node, and the stage its fetch marks.
IMAGE_FILES: Mapping[str, str] = {"vmlinuz": "kernel", "initramfs.img": "initramfs"}

# The stage a fetch marks, by the requested path's last component.
FILE_STAGES: Mapping[str, str] = {
    **{f.name.rsplit("/", 1)[-1]: f.stage for f in BY_NAME.values() if f.stage},
    **{p.rsplit("/", 1)[-1]: c.stage for c in CONFIGS if c.stage for p in c.paths},
    **IMAGE_FILES,
}


def entry_of(name: str) -> BootFile | None:
    """The registry entry that puts `name` (a boot-tree path) into the boot tree, if any."""
    name = name.lstrip("/")
    if name in BY_NAME:
        return BY_NAME[name]
    for f in BOOT_FILES:
        rest = name[len(f.name) :]
        if f.folder and name.startswith(f.name) and "/" not in rest and fnmatchcase(rest, f.source.rsplit("/", 1)[-1]):
            return f
    return None


def default_file(firmware: str) -> str:
    """The boot file DHCP hands `firmware` when no `boot_files` override names another."""
    return DEFAULTS[firmware].name


def is_url(value: str) -> bool:
    return "://" in value


def missing(name: str, root: Path) -> str:
    """Why a client cannot be handed `name`, which is not in the boot tree at `root`: which
    Debian package file `boot install` copies it from, or that nothing here provides it."""
    known = entry_of(name)
    if known is None:
        return (
            f"{name} is not in the boot tree {root}, and no Debian package provides it: "
            "put it there or change boot_files"
        )
    return f"{name} is not in the boot tree {root}: `provisioner boot install` copies it from {known.where}"


def override_problems(boot_files: Mapping[Any, object]) -> list[tuple[str, str]]:
    """(key, problem) for each `boot_files` entry that cannot work whatever the boot tree holds:
    an unknown key, a value that is no string, or a registered loader the firmware cannot run.
    A name the registry does not know is left to the boot-tree checks (a site's own file)."""
    out = []
    for key, value in boot_files.items():
        k = str(key)
        if k not in OVERRIDE_KEYS:
            out.append((k, f"unknown boot_files key {k!r} (one of {', '.join(OVERRIDE_KEYS)})"))
        elif not isinstance(value, str) or not value.strip():
            out.append((k, "must be a path in the boot tree or a URL"))
        elif k != IPXE and not is_url(value):
            known = entry_of(value)
            if known is not None and k not in known.runs_on:
                fits = ", ".join(f.name for f in BY_NAME.values() if k in f.runs_on)
                what = (
                    f"runs on {', '.join(known.runs_on)} firmware, not {k}"
                    if known.runs_on
                    else "is a loader module, not a boot loader"
                )
                out.append((k, f"{value} {what} (loaders for {k}: {fits})"))
    return out
