"""NFS exports for the kernel server (/etc/exports) and for nfs-ganesha: every image read-only
with no_root_squash under the pseudo path /images/{image}, the cluster's homes read-write.

An image is exported whole: its own directory (every version below versions/), which never
switches. A node mounts the subdirectory of the version its boot config pins,
/images/{image}/versions/{version}/rootfs, so a rebuild or rollback needs no new exports and
no NFS reload (only adding or removing an image does), and a node always gets the root of the
version whose kernel and initramfs it booted; running nodes keep theirs until it is pruned.

Pure: the caller passes each image's directory already resolved (nfs-ganesha refuses a path
through a symlink).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from ..inventory.model import Cluster
from ..paths import image_pseudo


@dataclass(frozen=True)
class Export:
    path: Path  # directory on the server
    pseudo: str  # what clients mount (NFSv4 pseudo path)
    writable: bool
    root_squash: bool
    image: bool = False  # an image's directory: nodes mount versions/VERSION/rootfs below it


def exports_for(cluster: Cluster, images: dict[str, Path]) -> list[Export]:
    """The images (name -> resolved image directory, the one holding versions/) and the
    cluster's configured exports."""
    out = [Export(Path(p), image_pseudo(name), False, False, image=True) for name, p in sorted(images.items())]
    for e in cluster.nfs.exports:
        out.append(Export(Path(e.path), e.path, e.access == "rw", "no_root_squash" not in e.options))
    return out


def _export_ids(exports: list[Export]) -> dict[str, int]:
    """Stable ids from the pseudo path (they are part of every file handle a client holds, so
    adding an image must not renumber the others); collisions probe upwards in path order."""
    ids: dict[str, int] = {}
    used: set[int] = set()
    for e in sorted(exports, key=lambda e: e.pseudo):
        i = zlib.crc32(e.pseudo.encode()) % 60000 + 100
        while i in used:
            i += 1
        used.add(i)
        ids[e.pseudo] = i
    return ids


def render_exports(exports: list[Export], subnet: IPv4Network) -> str:
    """/etc/exports for kernel nfsd. Kernel nfsd serves real paths, not the pseudo path in each
    line's comment: with it, a node's root is an image line's directory plus
    versions/VERSION/rootfs (where the boot configs name /images/IMAGE/versions/VERSION/rootfs)."""
    ids = _export_ids(exports)
    lines = ["# Written by `provisioner nfs exports`; edits are lost on the next render."]
    for e in exports:
        opts = [
            "rw" if e.writable else "ro",
            "root_squash" if e.root_squash else "no_root_squash",
            "no_subtree_check",
            "sync" if e.writable else "async",
            f"fsid={ids[e.pseudo]}",
        ]
        lines.append(f"# {e.pseudo}" + (" (nodes mount versions/VERSION/rootfs below it)" if e.image else ""))
        lines.append(f"{e.path} {subnet}({','.join(opts)})")
    return "\n".join(lines) + "\n"


def render_ganesha(
    exports: list[Export],
    subnet: IPv4Network,
    bind: IPv4Address | None = None,
    recovery_root: Path = Path("/var/lib/nfs/ganesha"),
    versions: tuple[int, ...] = (4,),
    port: int = 2049,
) -> str:
    """An nfs-ganesha configuration (VFS FSAL). No grace period: a diskless node's state lives
    in its tmpfs, so there is nothing for clients to reclaim after a restart."""
    ids = _export_ids(exports)
    protocols = ", ".join(str(v) for v in versions)
    core = [f"Protocols = {protocols};", f"NFS_Port = {port};", "Enable_NLM = false;", "Enable_RQUOTA = false;"]
    if bind is not None:
        core.append(f"Bind_addr = {bind};")
    out = [
        "# Written by `provisioner nfs exports`; edits are lost on the next render.",
        "NFS_CORE_PARAM {",
        *[f"    {c}" for c in core],
        "}",
        "NFSv4 {",
        "    Graceless = true;",
        f'    RecoveryRoot = "{recovery_root}";',
        "    Minor_Versions = 0, 1, 2;",
        # Owners as numbers: an initramfs has no idmapd, so names would map to nobody and
        # setuid-root binaries (mount, su) in the image would run as nobody.
        "    Only_Numeric_Owners = true;",
        "}",
        "NFS_KRB5 {",
        "    Active_krb5 = false;",
        "}",
    ]
    for e in exports:
        out += [
            "EXPORT {",
            f"    Export_Id = {ids[e.pseudo]};",
            f'    Path = "{e.path}";',
            f'    Pseudo = "{e.pseudo}";',
            "    Access_Type = None;",
            f"    Squash = {'Root_Squash' if e.root_squash else 'No_Root_Squash'};",
            f"    Protocols = {protocols};",
            "    Transports = TCP;",
            "    SecType = sys;",
            "    FSAL { Name = VFS; }",
            f"    CLIENT {{ Clients = {subnet}; Access_Type = {'RW' if e.writable else 'RO'}; }}",
            "}",
        ]
    return "\n".join(out) + "\n"
