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


SITE = """\
cluster:
  name: deb
  domain: deb.test
  network: {subnet: 10.77.0.0/24, master: 10.77.0.1}
  slurm: {controller: master}
profiles:
  default:
    image: deb
    vars: {image_packages: [busybox], image_suite: bookworm}
nodes: []
"""


def test_cli_build_takes_packages_from_the_profile_and_shows_progress(cli):
    cli.site.mkdir(parents=True)
    (cli.site / "cluster.yaml").write_text(SITE)
    res = cli("image", "build", "deb", "--profile", "default", "--cache", CACHE)
    assert "deb v1: kernel none" in res.stdout
    assert "s] " in res.stderr  # timestamped progress lines
    listing = cli("image", "list", "--json").stdout
    assert '"busybox"' not in listing and '"deb"' in listing
    res = cli("image", "build", "deb", "--profile", "nosuch", check=False)
    assert res.returncode == 1 and "no such profile: nosuch" in res.stderr
