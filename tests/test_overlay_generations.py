"""A build is all or nothing for the whole cluster: `kill -9` of a real `provisioner overlay
build` at every step it takes on the overlay tree (strace stops it with SIGKILL at the Nth
mkdir, link, symlink, rename or unlink, so the points are exact, the switch included) and at
moments spread over its run leaves every node on the old generation or every node on the new
one, archive and boot configs alike; the next build removes what the killed one left."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from provisioner.artifacts import layout
from provisioner.artifacts.overlay_build import read_archive
from provisioner.paths import State
from test_overlay_build import _many_nodes, leftovers
from test_render_overlays import fake_image, make_site

NODES = 40
MUTATING = (
    "mkdir",
    "mkdirat",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "rmdir",
)
EXE = shutil.which("provisioner") or str(Path(sys.executable).parent / "provisioner")


def provisioner(site, state, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    env = {**os.environ, "PROVISIONER_SITE": str(site.root), "PROVISIONER_STATE": str(state.root)}
    return subprocess.Popen(
        [*prefix, EXE, *args],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float | None = None) -> None:
    """Wait for the build (or until timeout), then SIGKILL what is left of its process group."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def build(site, state) -> None:
    proc = provisioner(site, state, "overlay", "build", "--jobs", "2")
    finish(proc, 600)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


def view(state: State, names: list[str]) -> dict[str, tuple[bytes, ...]]:
    """What each node is served now, found through layout as the servers find it: its
    archive and its boot configs."""
    return {
        name: (
            layout.overlay_archive(state, name).read_bytes(),
            *(layout.boot_config(state, name, kind).read_bytes() for kind in layout.BOOT_CONFIGS),
        )
        for name in names
    }


def motd(state: State, name: str) -> bytes:
    return {e.path: e.data for e in read_archive(layout.overlay_archive(state, name))}["etc/motd"]


def site_with(tmp_path: Path):
    site, state, inv = make_site(tmp_path, _many_nodes(NODES))
    fake_image(state)
    (site.overlays / "base" / "etc").mkdir(parents=True, exist_ok=True)
    return site, state, [n.name for n in inv.nodes]


def set_motd(site, text: str) -> None:
    (site.overlays / "base" / "etc" / "motd").write_text(text)


def kill_points(log: str) -> list[tuple[str, int]]:
    """(syscall, its ordinal among all calls of that name) of each call that touched the
    overlay tree, from an strace log of the main process."""
    seen: dict[str, int] = {}
    points = []
    for line in log.splitlines():
        m = re.match(r"(\w+)\(", line)
        if not m or m.group(1) not in MUTATING:
            continue
        seen[m.group(1)] = seen.get(m.group(1), 0) + 1
        if "/overlays" in line:
            points.append((m.group(1), seen[m.group(1)]))
    return points


def sample(points: list[tuple[str, int]], n: int) -> list[tuple[str, int]]:
    """Every rename and symlink (the switch and the generation's view), the first and last of
    each kind, and an even spread of the rest."""
    must = {p for p in points if p[0].startswith(("rename", "symlink"))}
    for name in {p[0] for p in points}:
        of = [p for p in points if p[0] == name]
        must |= {of[0], of[-1]}
    rest = [p for p in points if p not in must]
    step = max(1, len(rest) // max(1, n - len(must)))
    return sorted(must | set(rest[::step]), key=points.index)


def test_kill_9_at_every_step_leaves_all_nodes_on_one_generation(tmp_path):
    site, state, names = site_with(tmp_path)
    set_motd(site, "one\n")
    build(site, state)
    set_motd(site, "two\n")
    build(site, state)  # so `previous` exists and the build below also drops a generation
    old = view(state, names)
    snap = tmp_path / "snap"
    shutil.copytree(state.root, snap, symlinks=True)

    # new archives for all, new boot configs for most
    site.cluster_yaml.write_text(_many_nodes(NODES, default={"kernel_args": ["console=ttyS0", "gen-mark"]}))
    set_motd(site, "three\n")
    trace = tmp_path / "trace.log"
    proc = provisioner(
        site,
        state,
        "overlay",
        "build",
        "--jobs",
        "2",
        prefix=("strace", "-qq", "-o", str(trace), "-e", f"trace={','.join(MUTATING)}"),
    )
    finish(proc, 600)
    assert proc.returncode == 0
    new = view(state, names)
    assert all(old[n][0] != new[n][0] for n in names) and sum(old[n][1] != new[n][1] for n in names) > NODES / 2
    points = kill_points(trace.read_text())
    assert any(p[0].startswith("rename") for p in points), points  # the switch was seen

    outcomes = []
    for syscall, nth in sample(points, 10):
        shutil.rmtree(state.root)
        shutil.copytree(snap, state.root, symlinks=True)
        proc = provisioner(
            site,
            state,
            "overlay",
            "build",
            "--jobs",
            "2",
            prefix=(
                "strace",
                "-qq",
                "-o",
                "/dev/null",
                "-e",
                f"trace={syscall}",
                "-e",
                f"inject={syscall}:signal=KILL:when={nth}",
            ),
        )
        finish(proc, 600)
        assert proc.returncode != 0, f"not killed at {syscall} #{nth}"
        seen = view(state, names)
        assert seen in (old, new), (
            f"killed at {syscall} #{nth}: nodes see a mix of generations: "
            f"{sum(seen[n] == old[n] for n in names)} old, {sum(seen[n] == new[n] for n in names)} new"
        )
        outcomes.append(seen == new)
    assert False in outcomes and True in outcomes  # the kills fell on both sides of the switch

    # the next build completes the killed one and leaves nothing else behind
    build(site, state)
    assert view(state, names) == new
    assert not leftovers(state)


def test_kill_9_at_moments_spread_over_a_build(tmp_path):
    site, state, names = site_with(tmp_path)
    set_motd(site, "start\n")
    build(site, state)
    started = time.monotonic()
    set_motd(site, "timed\n")
    build(site, state)
    whole = time.monotonic() - started
    published = b"timed\n"
    for i in range(5):
        attempt = f"attempt {i}\n".encode()
        set_motd(site, attempt.decode())
        proc = provisioner(site, state, "overlay", "build", "--jobs", "2")
        finish(proc, whole * (i + 1) / 5)
        seen = {motd(state, n) for n in names}
        assert seen in ({published}, {attempt}), (i, seen)
        published = seen.pop()
    build(site, state)
    assert {motd(state, n) for n in names} == {b"attempt 4\n"}
    assert not leftovers(state)
