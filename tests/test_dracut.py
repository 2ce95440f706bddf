"""The dracut module (initcpio/dracut/): `provisioner initramfs build IMAGE --generator dracut`
runs the image's own dracut (Debian's dracut-core, installed by `image exec`) chrooted over
the version's root, and a qemu guest boots that initramfs the demo's way to Slurm `idle`.

The image the guest boots also comes in as a container image: the demo's cached root tarball
is the one layer of an OCI layout, imported with `image import demo oci:DIR:TAG` (skopeo,
the layer scan, umoci), so one boot checks both."""

from __future__ import annotations

import gzip
import os
import subprocess

import pytest

from labs.oci import oci_dir
from provisioner.actions.images import build_initramfs, exec_in_image, import_image
from provisioner.artifacts import images, layout
from provisioner.demo import site as demo_site
from provisioner.demo.run import IMAGE_CACHE, Demo
from provisioner.resources import INITCPIO

pytestmark = [pytest.mark.netns, pytest.mark.qemu, pytest.mark.daemons]


def test_the_dracut_scripts_are_shellcheck_clean():
    scripts = sorted(p.name for p in (INITCPIO / "dracut").iterdir())
    assert scripts == ["module-setup.sh", "provisioner-cmdline.sh", "provisioner-mount.sh"]
    res = subprocess.run(["shellcheck", "-x", *scripts], cwd=INITCPIO / "dracut", capture_output=True, text=True)
    assert res.returncode == 0, res.stdout
    for script in scripts[1:]:  # the hooks dracut's init sources
        subprocess.run(["busybox", "sh", "-n", script], cwd=INITCPIO / "dracut", check=True)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("dracut-demo")
    said: list[str] = []
    d = Demo(work, nodes=1, timeout=900, echo=said.append)
    inv = d.write_site()
    cached = images.cache_file(IMAGE_CACHE, images.DEFAULT_SUITE, "minbase", demo_site.IMAGE_PACKAGES)
    if not cached.exists():
        d.build_image()  # debootstrap once, into the demo's cache
    src = oci_dir(work / "oci", [cached], tag="node")
    import_image(d.ctx, demo_site.IMAGE, f"oci:{src}:node").check()
    status, switch = exec_in_image(
        d.ctx, demo_site.IMAGE, ["sh", "-c", "apt-get install -y -q --no-install-recommends dracut-core"]
    )
    assert status == 0 and switch is not None
    switch.check()
    build_initramfs(d.ctx, demo_site.IMAGE, generator="dracut", progress=said.append)
    d.build_artifacts()
    try:
        yield d, inv, said
    finally:
        d.cleanup()


def test_the_dracut_initramfs_carries_the_module_and_the_runtime(demo, tmp_path):
    d, _, _ = demo
    v = next(v for v in images.versions(d.state, demo_site.IMAGE) if v.current)
    assert v.meta["source"].startswith("oci:") and v.meta["oci_digest"].startswith("sha256:")
    data = gzip.decompress(layout.image_initramfs(d.state, demo_site.IMAGE).read_bytes())
    subprocess.run(["cpio", "-id", "--quiet"], input=data, cwd=tmp_path, check=True)
    hooks = tmp_path / "usr" / "lib" / "dracut" / "hooks"
    assert (hooks / "mount" / "90-provisioner-mount.sh").exists()
    assert (hooks / "cmdline" / "90-provisioner-cmdline.sh").exists()
    runtime = (INITCPIO / "provisioner.sh").read_bytes()
    assert (tmp_path / "lib" / "provisioner" / "provisioner.sh").read_bytes() == runtime
    assert os.readlink(tmp_path / "lib" / "provisioner" / "bin" / "udhcpc").endswith("busybox")
    kver = v.meta["kernel"]
    mods = {p.name.split(".ko")[0] for p in (tmp_path / "usr" / "lib" / "modules" / kver).rglob("*.ko*")}
    assert {"overlay", "nfsv4", "virtio_net", "e1000"} <= mods
    # The image itself was not written: dracut ran over an overlay of it.
    assert not (v.path / "rootfs" / "usr" / "lib" / "dracut" / "modules.d" / "90provisioner").exists()


def test_a_guest_boots_the_oci_image_with_the_dracut_initramfs_to_idle(demo):
    d, inv, _ = demo
    d.start_network()
    d.start_master(inv)
    d.boot_vms(inv)
    d.wait_idle(inv)
    v = next(v for v in images.versions(d.state, demo_site.IMAGE) if v.current)
    ipxe = next((d.state.overlays / "current").glob("*/node01.ipxe")).read_text()  # what the guest booted
    assert f"/images/demo/versions/{v.version}\n" in ipxe and "${base}/initramfs.img" in ipxe, ipxe
    console = (d.logs / "node01-console.log").read_text(errors="replace")
    assert "provisioner: switching to the image's init" in console, console[-3000:]
    assert "dracut: Mounted root filesystem overlay" in console, console[-3000:]  # dracut's init switched
    assert "command not found" not in console, console[-3000:]
