"""The NFS exports of the images (read-only) and of cluster.nfs.exports, for kernel nfsd or
nfs-ganesha."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..artifacts import images
from ..render.nfs import exports_for, render_exports, render_ganesha
from .context import Context

GANESHA_RECOVERY = Path("/var/lib/nfs/ganesha")


def nfs_exports(
    ctx: Context, fmt: Literal["exports", "ganesha"] = "exports", recovery_root: Path = GANESHA_RECOVERY
) -> str:
    """/etc/exports, or an nfs-ganesha configuration with its state in `recovery_root`."""
    cluster = ctx.inventory().cluster
    items = exports_for(cluster, images.nfs_roots(ctx.state))
    if fmt == "exports":
        return render_exports(items, cluster.network.subnet)
    versions = (4,) if cluster.nfs.version.startswith("4") else (3, 4)
    return render_ganesha(items, cluster.network.subnet, cluster.nfs.server, recovery_root, versions)
