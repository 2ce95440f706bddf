"""A real debootstrap build (minbase, from the host's own apt mirror). The finished root is
cached under the test cache keyed by suite, variant and package list, so repeated runs on
this machine reuse it; the second build in each test always goes through the cache. Besides
bookworm (the default), one trixie root shows that the suite and packages from the profile or
the flags reach debootstrap."""

import json
import os
from pathlib import Path

from labs.site import site_yaml, write_site
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


# A suite other than the default, so the root shows whether the profile's suite reached
# debootstrap; `hello` is in no minbase, so its dpkg record shows whether the package list did.
TRIXIE_SITE = site_yaml(
    profiles={"small": {"image": "deb", "vars": {"image_packages": ["hello"], "image_suite": "trixie"}}},
    name="deb",
    domain="deb.test",
    subnet="10.77.0.0/24",
    interface=None,
)


def installed(root: Path) -> set[str]:
    """The packages dpkg records as installed in a root."""
    found = set()
    for record in (root / "var" / "lib" / "dpkg" / "status").read_text().split("\n\n"):
        fields = dict(ln.split(": ", 1) for ln in record.splitlines() if ": " in ln and not ln.startswith(" "))
        if fields.get("Status") == "install ok installed":
            found.add(fields["Package"])
    return found


def os_release(root: Path) -> dict[str, str]:
    text = (root / "etc" / "os-release").read_text()
    return {k: v.strip('"') for k, v in (ln.split("=", 1) for ln in text.splitlines() if "=" in ln)}


def test_cli_suite_and_packages_from_the_profile_and_from_flags_reach_debootstrap(cli):
    """One trixie minbase debootstrap (cached like the test above): the profile's suite and
    packages plus --add reach it; the same inputs as flags reuse that very root; --kernel
    reaches the build too."""
    write_site(cli.site, TRIXIE_SITE)
    state = State(cli.state)
    cached = images.cache_file(CACHE, "trixie", "minbase", ("hello", "busybox"))
    res = cli("image", "build", "deb", "--profile", "small", "--add", "busybox", "--cache", CACHE)
    assert "deb v1: kernel none" in res.stdout
    assert "s] " in res.stderr  # timestamped progress lines
    if f"using cached root {cached}" not in res.stderr:  # a cold cache: debootstrap ran here
        assert "I: Base system installed successfully." in res.stderr
    assert cached.exists()
    root = layout.image_rootfs(state, "deb")
    rel = os_release(root)
    assert (rel["VERSION_CODENAME"], rel["VERSION_ID"]) == ("trixie", "13")
    assert (root / "etc" / "debian_version").read_text().startswith("13")
    have = installed(root)
    assert {"hello", "busybox"} <= have
    assert not have & {"slurmd", "munge", "systemd-sysv"}  # the profile's list replaced the default set
    assert (root / "usr" / "bin" / "hello").exists()
    meta = json.loads((layout.image_dir(state, "deb") / layout.IMAGE_META).read_text())
    assert (meta["suite"], meta["packages"], meta["variant"]) == ("trixie", ["busybox", "hello"], "minbase")

    # The same suite and packages from flags alone: the same cache key, so the same root.
    res = cli("image", "build", "deb", "--suite", "trixie", "-p", "hello", "--add", "busybox", "--cache", CACHE)
    assert "deb v2: kernel none" in res.stdout and f"using cached root {cached}" in res.stderr
    assert os_release(layout.image_rootfs(state, "deb"))["VERSION_CODENAME"] == "trixie"
    assert {"hello", "busybox"} <= installed(layout.image_rootfs(state, "deb"))

    # --kernel reaches the build: minbase has no kernel, so asking for one fails and changes nothing.
    res = cli(
        "image",
        "build",
        "deb",
        "--profile",
        "small",
        "--add",
        "busybox",
        "--cache",
        CACHE,
        "--kernel",
        "6.1.0-99-amd64",
        check=False,
    )
    assert res.returncode == 1 and "no kernel 6.1.0-99-amd64 in the image (has: none)" in res.stderr
    assert "Traceback" not in res.stderr
    assert [v.version for v in images.versions(state, "deb")] == ["v1", "v2"]
    assert os.readlink(layout.image_dir(state, "deb")) == "versions/v2"
