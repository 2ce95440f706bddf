"""Secrets at rest: an unprivileged local user on the master reads no secret, after any command
that writes state, run with an umask of 0 (the worst an admin's shell can have), and after
builds killed with SIGKILL half-way. The attacker is a real process as `nobody` that walks the
state directory and tries to open every folder and file (decompressing gzip files, as the
overlay archives are) and looks for the MUNGE key and every SSH private key in what it can read.
Public artifacts (bootloaders, kernels, initramfs, the image root) stay readable."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from labs.busyroot import make_root
from provisioner.artifacts import layout, secrets
from provisioner.paths import State

EXE = shutil.which("provisioner") or str(Path(sys.executable).parent / "provisioner")

# Runs as nobody under the system Python (the venv may be out of its reach): prints what it
# could open and which of the secrets (hex on stdin) it found inside.
ATTACKER = r"""
import gzip, json, os, sys
needles = [bytes.fromhex(h) for h in json.load(sys.stdin)]
opened, found = [], []
for top, dirs, files in os.walk(sys.argv[1], onerror=lambda e: None):
    for d in dirs:
        p = os.path.join(top, d)
        if os.path.islink(p):
            continue
        try:
            os.listdir(p)
            opened.append(p + "/")
        except OSError:
            pass
    for f in files:
        p = os.path.join(top, f)
        try:
            with open(p, "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        opened.append(p)
        if data[:2] == b"\x1f\x8b":
            try:
                data += gzip.decompress(data)
            except Exception:
                pass
        found += [p for n in needles if n in data]
print(json.dumps({"opened": opened, "found": found}))
"""


@pytest.fixture
def world(tmp_path):
    """Site and state in a folder anyone may enter (pytest's own tmp is root's alone, which
    would hide every mistake)."""
    top = Path(tempfile.mkdtemp(prefix="pv-at-rest-"))
    os.chmod(top, 0o755)
    try:
        yield top / "site", top / "state"
    finally:
        shutil.rmtree(top)


def run(
    site: Path, state: Path, *args: str, prefix: tuple[str, ...] = (), check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROVISIONER_SITE": str(site), "PROVISIONER_STATE": str(state)}
    res = subprocess.run(
        [*prefix, EXE, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=lambda: os.umask(0),
        check=False,
    )
    if check:
        assert res.returncode == 0, f"provisioner {' '.join(args)}: {res.stdout}\n{res.stderr}"
    return res


def needles(state: Path) -> list[bytes]:
    """Every secret there is: the MUNGE key and each private key (and the CA's)."""
    root = layout.secrets_dir(State(state))
    found = [root / secrets.MUNGE_KEY, root / secrets.SSH_CA, *root.glob("ssh/*/ssh_host_*_key")]
    return [p.read_bytes() for p in found if p.is_file()]


def attack(state: Path) -> dict[str, list[str]]:
    res = subprocess.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            ATTACKER,
            str(state),
        ],
        input=json.dumps([n.hex() for n in needles(state)]),
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(res.stdout)


SECRET_PLACES = ("secrets", "overlays", "nodes.sqlite")


def assert_root_only(state: Path, after: str) -> None:
    got = attack(state)
    assert not got["found"], f"after {after}: nobody read secrets in {got['found']}"
    rel = [os.path.relpath(p, state) for p in got["opened"]]
    exposed = [p for p in rel if p.split("/")[0].startswith(SECRET_PLACES)]
    assert not exposed, f"after {after}: nobody opened {exposed}"


def test_nobody_reads_a_secret_after_any_command(world):
    site, state = world
    s = State(state)
    run(site, state, "init", "--interface", "lo", "--name", "rest")
    assert_root_only(state, "init")
    for i in (1, 2):
        run(site, state, "node", "add", f"node0{i}", "--mac", f"52:54:00:12:00:0{i}", "--image", "tiny")
    assert_root_only(state, "node add")

    src = Path(tempfile.mkdtemp(prefix="pv-root-", dir=site.parent))
    os.chmod(src, 0o755)  # an image's / as a real one is (mkdtemp made it 0700)
    make_root(src, "#!/bin/sh\nexec sh\n")
    for table, line in (("passwd", "{0}:x:{1}:{1}::/:/bin/false\n"), ("group", "{0}:x:{1}:\n")):
        with open(src / "etc" / table, "a") as f:
            f.writelines(line.format(user, uid) for user, uid in (("munge", 101), ("slurm", 102)))
    run(site, state, "image", "import", "tiny", str(src))  # rebuilds the nodes' overlays too
    assert layout.overlay_archive(s, "node01").is_file()
    assert_root_only(state, "image import")

    run(site, state, "secrets", "regenerate", "munge", "--yes")
    run(site, state, "secrets", "regenerate", "ssh", "node01", "--yes")
    assert_root_only(state, "secrets regenerate")
    run(site, state, "overlay", "build", "--force")
    assert_root_only(state, "overlay build")
    run(site, state, "overlay", "show", "node01")
    run(site, state, "plan")
    assert_root_only(state, "overlay show, plan")

    # killed half-way: the build once it has written the new generation's archives (at the
    # first symlink of the generation's view); a key regeneration with a new private key made
    # but not yet moved into place (each keygen thread's second rename)
    (site / "overlays" / "base" / "etc").mkdir(parents=True)
    (site / "overlays" / "base" / "etc" / "motd").write_text("killed\n")
    shards = set(layout.overlay_shards(s).iterdir())
    res = run(
        site,
        state,
        "overlay",
        "build",
        check=False,
        prefix=("strace", "-qq", "-o", "/dev/null", "-e", "trace=symlink", "-e", "inject=symlink:signal=KILL:when=1"),
    )
    assert res.returncode != 0
    assert set(layout.overlay_shards(s).iterdir()) - shards, "the killed build left nothing behind"
    assert_root_only(state, "a killed overlay build")
    res = run(
        site,
        state,
        "secrets",
        "regenerate",
        "ssh",
        "node02",
        "--yes",
        check=False,
        prefix=(
            "strace",
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "trace=rename",
            "-e",
            "inject=rename:signal=KILL:when=3",  # 1: the old keys revoked, 2: moved aside
        ),
    )
    assert res.returncode != 0
    assert list((layout.secrets_dir(s) / "ssh").glob("node02/.keygen.*/ssh_host_*_key")), "no new key was left half-way"
    assert_root_only(state, "a killed key generation")

    run(site, state, "initramfs", "build", "tiny")
    assert_root_only(state, "initramfs build")
    run(site, state, "boot", "install")
    assert_root_only(state, "boot install")
    with serving(site, state):
        assert Path(f"{s.db}-wal").exists()
        assert_root_only(state, "serve")

    # what nodes and clients are served in the clear stays readable (the servers run as root,
    # but an admin may point another server or tool at it)
    opened = {os.path.relpath(p, state) for p in attack(state)["opened"]}
    kernel = os.path.relpath(os.path.realpath(layout.image_kernel(s, "tiny")), state)
    initrd = os.path.relpath(os.path.realpath(layout.image_initramfs(s, "tiny")), state)
    assert {kernel, initrd, "boot/undionly.kpxe"} <= opened
    assert os.stat(layout.image_rootfs(s, "tiny")).st_mode & 0o777 == 0o755  # the root nodes mount


@contextlib.contextmanager
def serving(site: Path, state: Path):
    """`provisioner serve` (HTTP) in a private network namespace, asked once, so it has written
    its node-state database (and its WAL) the way it does when nodes boot; running meanwhile."""
    ready = state.parent / "served"
    script = (
        f'ip link set lo up; umask 0; "{EXE}" serve --services http --listen 127.0.0.1 --http-port 8080 & '
        "for i in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:8080/boot/none && break; sleep 0.2; done; "
        f"curl -s -o /dev/null http://127.0.0.1:8080/boot/undionly.kpxe; sleep 1; touch {ready}; wait"
    )
    env = {**os.environ, "PROVISIONER_SITE": str(site), "PROVISIONER_STATE": str(state)}
    proc = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", script],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            if ready.exists() or proc.poll() is not None:
                break
            time.sleep(0.2)
        assert ready.exists(), "serve did not answer"
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
