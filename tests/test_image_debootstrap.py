"""A real debootstrap build (minbase, from the host's own apt mirror). The finished root is
cached under the test cache keyed by suite, variant and package list, so repeated runs on
this machine reuse it; the second build in the test always goes through the cache."""

import os
from pathlib import Path

from provisioner.artifacts import images, layout
from provisioner.paths import State

CACHE = Path(os.environ.get("PROVISIONER_TEST_CACHE", "/var/cache/provisioner-tests")) / "debootstrap"
PACKAGES = ("busybox",)


def test_debootstrap_build_then_cached_rebuild(tmp_path):
    state = State(tmp_path / "state")
    lines: list[str] = []
    v1 = images.build_image(state, "deb", packages=PACKAGES, cache_dir=CACHE, progress=lines.append)
    root = layout.image_rootfs(state, "deb")
    assert (root / "etc" / "debian_version").read_text().startswith("12")
    assert (root / "bin" / "busybox").exists()  # --include reached debootstrap
    assert not (root / "etc" / "machine-id").exists() or (root / "etc" / "machine-id").read_text() == ""
    assert v1.meta["source"] == "debootstrap" and v1.meta["suite"] == "bookworm"
    assert v1.meta["packages"] == list(PACKAGES) and v1.meta["mirror"] == images.host_mirror()
    assert v1.meta["kernel"] is None  # minbase has no kernel: no vmlinuz, no initramfs
    assert lines  # progress was reported
    assert (CACHE / f"{images.cache_key('bookworm', 'minbase', PACKAGES)}.tar").exists()
    lines.clear()
    v2 = images.build_image(state, "deb", packages=PACKAGES, cache_dir=CACHE, progress=lines.append)
    assert v2.version == "v2" and any("using cached root" in ln for ln in lines)
    assert (layout.image_rootfs(state, "deb") / "bin" / "busybox").exists()
    with open("/proc/self/mountinfo") as f:
        assert not [ln for ln in f if str(tmp_path) in ln]
