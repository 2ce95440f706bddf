"""A virtual node as a qemu (TCG) command line: the one place the demo and the tests describe
their guests, so firmware, NIC and console choices that are known to boot here live once.

The choices (see the lab notes): TCG only (nested KVM hangs); BIOS guests use an e1000, whose
stock option ROM is iPXE; UEFI guests use OVMF with virtio-net and no option ROM, so the
firmware's own PXE asks for a boot file (an explicit ROM there does not PXE boot); every guest
gets an SMBIOS UUID (qemu's default is all zeros); -nographic makes SeaBIOS mirror the
firmware's and the ROM's text on the serial line, where the console log is read.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")

Firmware = Literal["bios", "uefi"]


@dataclass(frozen=True)
class Nic:
    """The guest's one NIC, plugged into an existing tap device."""

    tap: str
    mac: str


@dataclass(frozen=True)
class DirectBoot:
    """-kernel/-initrd/-append: skip the firmware's network boot (initramfs tests, a master)."""

    kernel: Path
    initrd: Path
    append: str


@dataclass(frozen=True)
class Guest:
    """One virtual node. Without `direct` it network-boots from `nic`; `serial` is the console
    log file (None: the serial line is qemu's stdin/stdout, so a caller can type on it);
    `efi_vars` is where a UEFI guest's writable copy of the OVMF variable store goes."""

    nic: Nic | None = None
    firmware: Firmware = "bios"
    memory_mb: int = 512
    smp: int = 1
    serial: Path | None = None
    direct: DirectBoot | None = None
    disks: tuple[Path, ...] = ()
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    efi_vars: Path | None = None
    no_reboot: bool = True

    def __post_init__(self) -> None:
        if self.firmware == "uefi" and self.efi_vars is None:
            raise ValueError("a UEFI guest needs efi_vars: a path for its writable OVMF variable store")
        if self.direct is None and self.nic is None:
            raise ValueError("a guest without a NIC needs a direct kernel boot")

    def argv(self) -> list[str]:
        """The qemu command line; `prepare()` must have run for a UEFI guest."""
        cmd = [
            QEMU,
            "-accel",
            "tcg",
            "-m",
            str(self.memory_mb),
            "-smp",
            str(self.smp),
            "-nographic",
            "-monitor",
            "none",
            "-uuid",
            self.uuid,
        ]
        if self.serial is not None:
            cmd += ["-serial", f"file:{self.serial}"]
        if self.no_reboot:
            cmd.append("-no-reboot")
        if self.firmware == "uefi":
            cmd += [
                "-drive",
                f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                "-drive",
                f"if=pflash,format=raw,file={self.efi_vars}",
            ]
        if self.direct is not None:
            cmd += [
                "-kernel",
                str(self.direct.kernel),
                "-initrd",
                str(self.direct.initrd),
                "-append",
                self.direct.append,
            ]
        else:
            cmd += ["-boot", "order=n"]
        if self.nic is None:
            cmd += ["-nic", "none"]
        else:
            model = "virtio-net-pci,romfile=" if self.firmware == "uefi" else "e1000"
            cmd += [
                "-netdev",
                f"tap,id=n0,ifname={self.nic.tap},script=no,downscript=no",
                "-device",
                f"{model},netdev=n0,mac={self.nic.mac}",
            ]
        for disk in self.disks:
            cmd += ["-drive", f"file={disk},if=virtio,format=raw"]
        return cmd

    def prepare(self) -> list[str]:
        """Lay down what the guest writes to (a fresh OVMF variable store) and return argv()."""
        if self.firmware == "uefi" and self.efi_vars is not None:
            shutil.copyfile(OVMF_VARS, self.efi_vars)
        return self.argv()
