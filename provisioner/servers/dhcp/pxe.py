"""What kind of boot client is asking, and what it should load next.

Firmware PXE (options 60/93/94/97) gets a boot file by architecture over TFTP (or, for UEFI
HTTP boot, by URL); a client that already runs iPXE (user class "iPXE" or option 175) gets the
HTTP URL of its node's iPXE script, which ends the chain-load loop. The architectures, their
default files and the `boot_files` keys (bios, uefi32, uefi, http, arm64, ipxe) that override
them per profile or node are the boot registry's (provisioner.bootfiles); an override is a
path in the boot tree or a full URL. Each answer says which boot-tree path it names, so the
server can refuse it when the tree lacks the file instead of sending firmware after nothing.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from ...bootfiles import ARCHES, BIOS, IPXE, default_file, is_url
from . import wire

HTTP_ARCHES = frozenset(a.code for a in ARCHES.values() if a.http)

# Option 43, PXE sub-option 6 (discovery control) = 0x08: take the boot file from this
# packet, do not wait for or ask a ProxyDHCP/boot server (saves iPXE and ROMs ~2 s).
PXE_VENDOR_OPTIONS = b"\x06\x01\x08\xff"


@dataclass(frozen=True)
class Client:
    """The boot-relevant facts of one request."""

    kind: str  # "plain" (no PXE), "pxe" (firmware), "http" (UEFI HTTP boot), "ipxe"
    vendor: bytes | None  # b"PXEClient" / b"HTTPClient" as the client announced itself
    arch: int | None
    uuid: str | None
    machine_id: bytes | None  # option 97 as sent, echoed back

    @property
    def boots(self) -> bool:
        return self.kind != "plain"


def _arch(options: dict[int, bytes], vendor: bytes) -> int | None:
    value = options.get(wire.OPT_ARCH)
    if value is not None and len(value) >= 2:
        return struct.unpack_from("!H", value)[0]
    # "PXEClient:Arch:00007:UNDI:003016" carries the architecture when option 93 is missing
    parts = vendor.split(b":")
    if len(parts) >= 3 and parts[1] == b"Arch" and parts[2].isdigit():
        return int(parts[2])
    return None


def _uuid(machine_id: bytes | None) -> str | None:
    """Option 97 is type 0 followed by the 16-byte SMBIOS UUID (first fields little-endian)."""
    if machine_id is None or len(machine_id) != 17 or machine_id[0] != 0:
        return None
    return str(uuid.UUID(bytes_le=machine_id[1:]))


PLAIN = Client("plain", None, None, None, None)
BOOT_OPTIONS = (wire.OPT_VENDOR_CLASS, wire.OPT_USER_CLASS, wire.OPT_ARCH, wire.OPT_UUID, wire.OPT_IPXE)


def classify(req: wire.Request) -> Client:
    opts = req.options
    if not any(code in opts for code in BOOT_OPTIONS):
        return PLAIN
    vendor = opts.get(wire.OPT_VENDOR_CLASS, b"")
    machine_id = opts.get(wire.OPT_UUID)
    arch = _arch(opts, vendor)
    user_class = opts.get(wire.OPT_USER_CLASS, b"")
    if b"iPXE" in user_class or wire.OPT_IPXE in opts:
        kind = "ipxe"
    elif vendor.startswith(b"HTTPClient") or (arch in HTTP_ARCHES and vendor.startswith(b"PXEClient")):
        kind = "http"
    elif vendor.startswith(b"PXEClient"):
        kind = "pxe"
    else:
        kind = "plain"
    announced = next((v for v in (b"PXEClient", b"HTTPClient") if vendor.startswith(v)), None)
    return Client(kind, announced, arch, _uuid(machine_id), machine_id)


def base_url(master: str, port: int) -> str:
    return f"http://{master}" + (f":{port}" if port != 80 else "")


def ipxe_script_url(master: str, port: int, mac: str) -> str:
    """The node's iPXE script (contract: GET /boot/{mac}.ipxe, lowercase colon MAC)."""
    return f"{base_url(master, port)}/boot/{mac}.ipxe"


def local_path(value: str, master: str, http_port: int) -> str | None:
    """The boot-tree path a boot file name or URL names on this master's TFTP or HTTP server
    (/boot/...), or None for a URL elsewhere (nothing here can check it)."""
    if not is_url(value):
        return value.lstrip("/") or None
    url = urlsplit(value)
    if url.hostname != master:
        return None
    if url.scheme == "tftp":
        return url.path.lstrip("/") or None
    if url.scheme == "http" and (url.port or 80) == http_port and url.path.startswith("/boot/"):
        return url.path[len("/boot/") :] or None
    return None


@dataclass(frozen=True)
class Boot:
    """What goes into the reply: boot file (or URL), and the vendor class to answer with."""

    file: str
    vendor_class: bytes | None  # b"PXEClient" / b"HTTPClient" echoed, None for plain iPXE
    local: str | None = None  # the boot-tree path `file` names, to check before it goes out


@dataclass(frozen=True)
class Refused:
    """No boot file can be named for this client."""

    why: str


def _url(name: str, master: str, http_port: int) -> str:
    return name if is_url(name) else f"{base_url(master, http_port)}/boot/{name.lstrip('/')}"


def choose(
    client: Client, mac: str, boot_files: Mapping[str, str], master: str, http_port: int
) -> Boot | Refused | None:
    """The boot answer for a booting client, None for a plain DHCP client."""
    if client.kind == "plain":
        return None
    if client.kind == "ipxe":
        override = boot_files.get(IPXE)
        if not override:
            return Boot(ipxe_script_url(master, http_port, mac), client.vendor)
        url = _url(override, master, http_port)
        return Boot(url, client.vendor, local_path(url, master, http_port))
    arch = ARCHES.get(client.arch if client.arch is not None else BIOS)
    if arch is None:
        return Refused(f"no boot file is registered for client architecture {client.arch}")
    name = boot_files.get(arch.firmware) or default_file(arch.firmware)
    if client.kind == "http":
        url = _url(name, master, http_port)
        return Boot(url, b"HTTPClient", local_path(url, master, http_port))
    return Boot(name, b"PXEClient", local_path(name, master, http_port))
