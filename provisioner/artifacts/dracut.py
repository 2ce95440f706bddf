"""An initramfs made by the image's own dracut (as RHEL, Rocky, Debian and Void admins make
theirs), with the `provisioner` dracut module (initcpio/dracut/) running the same runtime as
the native initramfs and the mkinitcpio hook.

dracut runs chrooted in an overlayfs over the version's root, in a private mount and PID
namespace: the module, the runtime and the master's static busybox go into the overlay's
upper layer, so the root nodes mount is never written, and every mount goes with the
namespace. The result replaces the version's initramfs.img only once dracut succeeded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import UserError
from ..inroot import Root
from ..resources import INITCPIO
from .commands import Progress, run_logged
from .initramfs import BUSYBOX

MODULE = "usr/lib/dracut/modules.d/90provisioner"
# Only what a diskless node needs: dracut's base (its init and mount hooks), udev (it loads
# the NIC drivers by modalias) and the provisioner module; no systemd in the initramfs (the
# module is a classic mount hook), none of dracut's own network or NFS root (the runtime
# does both), no block-device drivers.
MODULES = "base udev-rules provisioner"

_SCRIPT = """set -e
root=$1 upper=$2 work=$3 merged=$4; shift 4
mount -t overlay overlay -o "lowerdir=$root,upperdir=$upper,workdir=$work" "$merged"
mount -t proc proc "$merged/proc"
mount -t sysfs sysfs "$merged/sys"
mount --rbind /dev "$merged/dev"
exec chroot "$merged" "$@"
"""


def dracut_argv(kver: str, out: str, compression: str = "gzip", drivers: tuple[str, ...] = ()) -> list[str]:
    """The dracut command run in the image; `drivers` are the extra kernel modules its nodes ask for."""
    argv = ["dracut", "--force", "--no-hostonly", "--no-hostonly-cmdline", "--no-early-microcode", f"--{compression}"]
    argv += ["--modules", MODULES, *(["--add-drivers", " ".join(drivers)] if drivers else []), "--kver", kver]
    return [*argv, out]


def build_dracut(
    version_dir: Path, kver: str, progress: Progress, compression: str = "gzip", drivers: tuple[str, ...] = ()
) -> Path:
    """Make the version's initramfs.img for kernel `kver` with the image's dracut."""
    rootfs = version_dir / "rootfs"
    image = Root(rootfs)
    if not any(image.is_file(p) for p in ("usr/bin/dracut", "usr/sbin/dracut", "sbin/dracut", "bin/dracut")):
        raise UserError(f"no dracut in {rootfs}: install dracut-core in the image (a recipe's packages, or image exec)")
    if not image.is_dir(f"lib/modules/{kver}") and not image.is_dir(f"usr/lib/modules/{kver}"):
        raise UserError(f"no modules of kernel {kver} in {rootfs}")
    with tempfile.TemporaryDirectory(prefix=".dracut-", dir=version_dir.parent) as tmp:
        work = Path(tmp)
        upper, merged = work / "upper", work / "merged"
        module = upper / MODULE
        module.mkdir(parents=True)
        (work / "work").mkdir()
        merged.mkdir()
        for f in (INITCPIO / "dracut").iterdir():
            (module / f.name).write_bytes(f.read_bytes())
        for name in ("provisioner.sh", "udhcpc.script"):
            (module / name).write_bytes((INITCPIO / name).read_bytes())
        shutil.copy(BUSYBOX, module / "busybox")
        for f in module.iterdir():
            f.chmod(0o755)
        (upper / "tmp").mkdir()
        argv = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--"]
        argv += ["sh", "-c", _SCRIPT, "dracut", str(rootfs), str(upper), str(work / "work"), str(merged)]
        progress(f"dracut for {kver} in {rootfs}")
        run_logged([*argv, *dracut_argv(kver, "/tmp/initramfs.img", compression, drivers)], progress, "dracut")
        made = upper / "tmp" / "initramfs.img"
        if not made.is_file() or made.is_symlink():
            raise UserError("dracut made no /tmp/initramfs.img")
        made.chmod(0o644)
        out = version_dir / "initramfs.img"
        os.replace(made, out)
    return out
