"""Image recipes (site/images/NAME.yaml) through the installed `provisioner` script: a change
to the recipe shows in the next version and in `image diff` (packages added, removed and
upgraded from each version's dpkg status; files added, removed and changed); a failing command
stops the build with its output and leaves the served version as it was; a bad recipe is
reported with its line.

The debootstrap base is bookworm minbase + busybox from the test cache test_image_debootstrap.py
fills (same inputs, same cached root), and the packages that change are small .debs made here
with dpkg-deb and installed by the recipe's own commands: no network after the first build."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

from labs.busyroot import make_root
from labs.oci import oci_dir
from provisioner.artifacts import images, layout
from provisioner.paths import State

CACHE = Path(os.environ.get("PROVISIONER_TEST_CACHE", "/var/cache/provisioner-tests")) / "debootstrap"


def deb(dest: Path, name: str, version: str) -> str:
    """A tiny arch-all package holding /usr/share/NAME/version; returns its file name."""
    tree = dest / f"{name}-{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "usr" / "share" / name).mkdir(parents=True)
    (tree / "usr" / "share" / name / "version").write_text(f"{version}\n")
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: t <t@t>\nDescription: test\n"
    )
    out = f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "-Zgzip", "--build", str(tree), str(dest / out)], check=True, capture_output=True)
    return out


def write_recipe(site: Path, name: str, recipe: dict) -> None:
    path = site / "images" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))


def debs_recipe(motd: str, debs: list[str], commands: list[str]) -> dict:
    return {
        "suite": "bookworm",
        "packages": ["busybox"],
        "files": [
            {"path": "/etc/motd", "content": motd},
            *({"path": f"/var/tmp/{d}", "source": d} for d in debs),
        ],
        "commands": [f"dpkg -i {' '.join('/var/tmp/' + d for d in debs)}", "rm /var/tmp/*.deb", *commands],
    }


def test_a_recipe_change_shows_in_the_next_version_and_in_diff(cli):
    state = State(cli.state)
    beside = cli.site / "images" / "rec"
    beside.mkdir(parents=True)
    a1, a2, b1 = deb(beside, "pvtest-a", "1.0"), deb(beside, "pvtest-a", "2.0"), deb(beside, "pvtest-b", "1.0")
    write_recipe(cli.site, "rec", debs_recipe("one\n", [a1, b1], ["echo ran > /etc/ran"]))
    res = cli("image", "build", "rec", "--cache", CACHE, "--dry-run")
    assert json.loads(res.stdout)["recipe"]["packages"] == ["busybox"]
    res = cli("image", "build", "rec", "--cache", CACHE)
    assert "rec v1: kernel none" in res.stdout, res.stderr[-2000:]
    one = layout.image_rootfs(state, "rec", "v1")
    assert (one / "usr" / "share" / "pvtest-b" / "version").read_text() == "1.0\n"
    assert (one / "etc" / "ran").read_text() == "ran\n" and (one / "etc" / "motd").read_text() == "one\n"
    assert images.versions(state, "rec")[0].meta["recipe"]["commands"][-1] == "echo ran > /etc/ran"

    recipe = debs_recipe("two\n", [a2], ["dpkg -r pvtest-b", "echo x > /etc/added"])
    recipe["files"].append({"path": "/usr/local/bin/hi", "content": "#!/bin/sh\necho hi\n", "mode": "0755"})
    write_recipe(cli.site, "rec", recipe)
    res = cli("image", "build", "rec", "--cache", CACHE)
    assert "rec v2: kernel none" in res.stdout, res.stderr[-2000:]
    two = layout.image_rootfs(state, "rec", "v2")
    assert (two / "usr" / "share" / "pvtest-a" / "version").read_text() == "2.0\n"
    assert not (two / "usr" / "share" / "pvtest-b").exists() and (two / "etc" / "motd").read_text() == "two\n"
    assert os.stat(two / "usr" / "local" / "bin" / "hi").st_mode & 0o777 == 0o755

    lines = cli("image", "diff", "rec", "v1", "v2").stdout.splitlines()
    for want in (
        "upgraded pvtest-a 1.0 -> 2.0",
        "removed pvtest-b 1.0",
        "file changed /etc/motd",
        "file added /etc/added",
        "file added /usr/local/bin/hi",
        "file removed /usr/share/pvtest-b/version",
        "file changed /usr/share/pvtest-a/version",
        "file changed /var/lib/dpkg/status",
    ):
        assert want in lines, lines
    assert "file removed /etc/ran" in lines and not any("busybox" in ln for ln in lines)
    back = cli("image", "diff", "rec", "v2", "v1").stdout.splitlines()
    assert "downgraded pvtest-a 2.0 -> 1.0" in back and "added pvtest-b 1.0" in back
    assert cli("image", "diff", "rec", "v2", "v2").stdout == "rec: v2 and v2 are the same\n"
    res = cli("image", "diff", "rec", "v1", "v7", check=False)
    assert res.returncode == 1 and "rec has no version v7 (has: v1, v2)" in res.stderr

    # A command that fails: its output, its status, and v2 still served.
    recipe["commands"] = [*recipe["commands"], "echo about to fail; exit 3"]
    write_recipe(cli.site, "rec", recipe)
    res = cli("image", "build", "rec", "--cache", CACHE, check=False)
    assert res.returncode == 1 and "recipe command 'echo about to fail; exit 3' failed (exit 3)" in res.stderr
    assert "about to fail" in res.stderr
    assert images.current_version(state, "rec") == "v2" and len(images.versions(state, "rec")) == 2
    assert not list(layout.image_versions(state, "rec").glob(".*"))
    res = cli("image", "build", "rec", "--suite", "trixie", check=False)
    assert res.returncode == 1 and "rec has a recipe (" in res.stderr and "not with --suite" in res.stderr


def test_a_recipe_from_a_container_image(cli, tmp_path):
    """An `oci:` base: the container's root, then the recipe's files and commands."""
    root = make_root(tmp_path / "rootfs", "#!/bin/sh\nexec sh\n")
    tarball = tmp_path / "root.tar"
    subprocess.run(["tar", "-cf", str(tarball), "--numeric-owner", "-C", str(root), "."], check=True)
    src = oci_dir(tmp_path / "layout", [tarball.read_bytes()])
    write_recipe(
        cli.site,
        "box",
        {
            "oci": f"oci:{src}:t",
            "files": [{"path": "/etc/role", "content": "compute\n"}],
            "commands": ["id -u > /etc/uid"],
        },
    )
    res = cli("image", "build", "box")
    assert "box v1: kernel " in res.stdout and "kernel none" not in res.stdout, res.stderr[-2000:]
    rootfs = layout.image_rootfs(State(cli.state), "box")
    assert (rootfs / "etc" / "role").read_text() == "compute\n" and (rootfs / "etc" / "uid").read_text() == "0\n"
    assert images.versions(State(cli.state), "box")[0].meta["source"] == f"oci:{src}:t"


def test_a_bad_recipe_is_reported_with_its_lines(cli):
    path = cli.site / "images" / "bad.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("suite: bookworm\noci: oci-archive:/x.tar\npackage: [a]\nfiles:\n  - {path: etc/x, mode: 999}\n")
    res = cli("image", "build", "bad", check=False)
    assert res.returncode == 1 and "recipe of image bad is invalid" in res.stderr
    assert f"{path}:2: oci: give `suite` (debootstrap) or `oci` (a container image), not both" in res.stderr
    assert f"{path}:3: package: unknown key 'package' (did you mean 'packages'?)" in res.stderr
    assert f"{path}:5: files[0].path: must be an absolute path without .." in res.stderr
    assert f"{path}:5: files[0].mode: 999 is not a file mode in octal" in res.stderr, res.stderr
