"""Runtime overlays reach a running node without a reboot. The stock agent script runs as a
real process in node01's namespace against a real `provisioner serve`, with a scratch folder
as the node's root: a per-node override file is on the node within 5 s of `overlay build`, a
file dropped from the overlay disappears, a reload action runs once per change and a failing
one is reported once, a corrupt or truncated archive is refused and the node keeps its files,
and a node whose master was away catches up when it returns. The node's timeline shows the
refresh; status, `overlay show` and `overlay diff --live` see what the node runs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from labs.serve import IMAGE, NODES, SERVER_IP, Serve, curl, set_limits
from labs.site import node, site_yaml
from labs.site import write_site as write_yaml
from provisioner.artifacts import layout, overlay_build
from provisioner.nodestate import NodeStateDB
from provisioner.paths import State
from provisioner.resources import STOCK_OVERLAYS

AGENT = STOCK_OVERLAYS / "agent" / "usr" / "local" / "sbin" / "provisioner-agent"
PORT = 8326  # rt-
IP, MAC = NODES["node01"]


def write_site(site: Path) -> None:
    nodes = [node(n, ip, mac) for n, (ip, mac) in NODES.items()]
    write_yaml(site, site_yaml(nodes, {"default": {"image": IMAGE, "overlays": ["rtapp"]}}, secure=True))
    app = site / "overlays" / "rtapp"
    (app / "etc" / "rtapp").mkdir(parents=True)
    (app / "etc" / "rtapp" / "app.conf").write_text("level=1\n")
    (app / "_overlay.yaml").write_text(
        yaml.safe_dump(
            {
                "runtime": True,
                "reload": {
                    "etc/rtapp/": 'echo reload >>"$PV_ROOT/reloads"',
                    "etc/rtapp/broken.conf": "echo no such service >&2; exit 3",
                },
            }
        )
    )
    own = site / "nodes" / "node01" / "etc"
    own.mkdir(parents=True)
    (own / "motd").write_text("hello 1\n")


class Agent:
    """The agent script in the node's namespace, on a scratch root (see boot())."""

    def __init__(self, lab, ns, cli, root: Path, state: Path | None = None):
        self.root = root
        self.log = root.parent / "agent.log"
        env = {
            "PATH": os.environ["PATH"],
            "PV_API": f"http://{SERVER_IP}:{PORT}/api/v1",
            "PV_ROOT": str(root),
            "PV_WAIT": "30",  # `overlay diff --live` asks for a report: no need of quiet polls
            "PV_FALLBACK": "1",
        }
        if state is not None:  # another file system than the root's: files are copied, not renamed
            env["PV_STATE"] = str(state)
        self.proc = ns.popen(["bash", str(AGENT)], log=self.log, env=env)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def boot(cli, root: Path) -> None:
    """The node's boot overlay unpacked into `root`, as the initramfs leaves it."""
    for e in overlay_build.read_archive(layout.overlay_archive(State(cli.state), "node01")):
        path = root / e.path
        if stat.S_ISDIR(e.mode):
            path.mkdir(parents=True, exist_ok=True)
        elif stat.S_ISLNK(e.mode):
            path.symlink_to(e.data.decode())
        else:
            path.write_bytes(e.data)
        if not stat.S_ISLNK(e.mode):
            os.chmod(path, stat.S_IMODE(e.mode))


def until(check, timeout: float = 5.0, what: str = "") -> float:
    """Seconds until check() is true; fails after `timeout`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def stages(cli, name: str) -> list[tuple[str, str]]:
    db = NodeStateDB(cli.state / "nodes.sqlite")
    try:
        return [(r["stage"], r["detail"] or "") for r in db.timeline(name)]
    finally:
        db.close()


def live_report_at(cli) -> float:
    db = NodeStateDB(cli.state / "nodes.sqlite")
    try:
        row = db.runtime("node01")
        return row["at"] if row else 0.0
    finally:
        db.close()


def read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


@pytest.mark.netns
def test_runtime_overlay_reaches_a_running_node(lab, cli, tmp_path):
    write_site(cli.site)
    cli("overlay", "build")
    root = tmp_path / "root"
    node_ns = lab.host(ip=IP, mac=MAC)
    motd, app, reloads = root / "etc" / "motd", root / "etc" / "rtapp" / "app.conf", root / "reloads"
    boot(cli, root)
    shm = Path(tempfile.mkdtemp(prefix="rt-agent-", dir="/dev/shm"))
    srv = Serve(lab, cli, port=PORT)
    agent = Agent(lab, node_ns, cli, root)
    try:
        until(lambda: any(s == "runtime" for s, _ in stages(cli, "node01")), 10, "first apply reported")
        assert read(motd) == "hello 1\n" and read(app) == "level=1\n"
        assert (app.stat().st_mode & 0o777) == 0o644 and os.access(root / "usr/local/sbin/provisioner-agent", os.X_OK)
        assert read(reloads) is None  # nothing under etc/rtapp/ changed: the node had it

        # An edit reaches the node within 5 s of the build; the action follows once.
        (cli.site / "overlays" / "rtapp" / "etc" / "rtapp" / "app.conf").write_text("level=2\n")
        (cli.site / "nodes" / "node01" / "etc" / "motd").write_text("hello 2\n")
        cli("overlay", "build")
        took = until(lambda: read(motd) == "hello 2\n" and read(app) == "level=2\n", 5, "edit after build")
        print(f"edit reached the node {took:.2f} s after the build")
        until(lambda: read(reloads) == "reload\n", 3, "reload action")
        gen = layout.generation(State(cli.state))
        until(lambda: any(f"generation {gen} " in d for s, d in stages(cli, "node01") if s == "runtime"), 5)

        # A dropped file disappears; a failing action is reported once, never retried.
        (cli.site / "nodes" / "node01" / "etc" / "motd").unlink()
        (cli.site / "overlays" / "rtapp" / "etc" / "rtapp" / "broken.conf").write_text("x\n")
        cli("overlay", "build")
        until(lambda: not motd.exists(), 5, "removed file")
        until(lambda: any(s == "runtime-action-failed" for s, _ in stages(cli, "node01")), 5, "failure report")
        time.sleep(3)
        failed = [d for s, d in stages(cli, "node01") if s == "runtime-action-failed"]
        assert len(failed) == 1 and "no such service" in failed[0], failed
        assert read(reloads) == "reload\nreload\n"  # broken.conf is under etc/rtapp/ too: once more

        # status / overlay show say node01 runs the latest generation; a hand edit shows up.
        show = cli("overlay", "show", "node01").stdout
        assert "runtime: latest" in show, show
        app.write_text("level=hand-edited\n")
        edited = time.time()
        diff = cli("overlay", "diff", "node01", "--live", check=False)  # asks the agent to report now
        assert live_report_at(cli) > edited, diff.stdout
        assert "etc/rtapp/app.conf" in diff.stdout and diff.returncode == 1, diff.stdout + diff.stderr
        push = cli("overlay", "push", "node01", "--timeout", "10").stdout
        assert "ok" in push and read(app) == "level=2\n"  # the push put the rendered file back
        diff = cli("overlay", "diff", "node01", "--live")
        assert "no drift" in diff.stdout

        # A corrupt archive (bytes flipped, size kept) and a truncated one are refused.
        agent.stop()
        (cli.site / "overlays" / "rtapp" / "etc" / "rtapp" / "app.conf").write_text("level=3\n")
        cli("overlay", "build")
        archive = layout.runtime_archive(State(cli.state), "node01")
        good = archive.read_bytes()
        st = archive.stat()
        creds = ("-H", f"Authorization: Bearer {(root / 'etc/provisioner/credential').read_text()}")
        curl(node_ns, "--local-port", "700-900", *creds, f"{srv.url}/api/v1/runtime")  # server hashes it
        bad = bytearray(good)
        bad[len(bad) // 2 : len(bad) // 2 + 16] = os.urandom(16)
        archive.write_bytes(bytes(bad))
        os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns))
        agent = Agent(lab, node_ns, cli, root)
        until(lambda: any(s == "runtime-refused" and "sha256" in d for s, d in stages(cli, "node01")), 10)
        assert read(app) == "level=2\n"
        agent.stop()
        archive.write_bytes(good[: len(good) // 2])
        agent = Agent(lab, node_ns, cli, root, state=shm)
        until(lambda: any(s == "runtime-refused" and "unpack" in d for s, d in stages(cli, "node01")), 10)
        assert read(app) == "level=2\n" and not list(root.rglob("*.pv-new"))
        archive.write_bytes(good)
        cli("overlay", "push", "node01", "--timeout", "10")  # the stage on tmpfs: copy and rename
        assert read(app) == "level=3\n" and not list(root.rglob("*.pv-new"))
        assert (app.stat().st_mode & 0o777) == 0o644

        # The master away: the node keeps its files, and catches up when it is back.
        srv.stop()
        (cli.site / "overlays" / "rtapp" / "etc" / "rtapp" / "app.conf").write_text("level=4\n")
        cli("overlay", "build")
        time.sleep(3)
        assert read(app) == "level=3\n" and agent.proc.poll() is None
        srv = Serve(lab, cli, port=PORT)
        until(lambda: read(app) == "level=4\n", 10, "catch up")

        def runtime_of(name: str) -> str | None:
            return next(r["runtime"] for r in json.loads(cli("status", "--json").stdout) if r["node"] == name)

        until(lambda: runtime_of("node01") == "latest", 5, "status says latest")
        assert runtime_of("node02") is None  # no agent there
    finally:
        agent.stop()
        srv.stop()
        shutil.rmtree(shm, ignore_errors=True)
        print((tmp_path / "agent.log").read_text() if (tmp_path / "agent.log").exists() else "")


@pytest.mark.netns
def test_long_polls_are_bounded_and_only_for_the_node(lab, cli, tmp_path):
    """Only the node itself may poll; an answer offering an archive carries it when asked
    (archive=1); polls past the waiter bound (half the connection cap) are answered at once
    with `retry`, and a push answers a waiting poll at once."""
    write_site(cli.site)
    set_limits(cli.site, http_connections=4, http_per_client=4)  # two waiters at most
    cli("overlay", "build")
    cred = (cli.state / "secrets" / "credentials" / "node01").read_text().strip()
    node_ns, stranger = lab.host(ip=IP, mac=MAC), lab.host(ip="10.99.0.79")
    priv = ("--local-port", "700-900")
    url = f"http://{SERVER_IP}:{PORT}/api/v1/runtime"
    with Serve(lab, cli, port=PORT):
        first = curl(node_ns, *priv, "-H", f"Authorization: Bearer {cred}", url).stdout
        offer = dict(line.split(" ", 1) for line in first.splitlines())
        assert offer["generation"] == "1" and len(offer["sha256"]) == 64 and offer["refresh"] == "0"
        auth = ("-H", f"Authorization: Bearer {cred}")
        body = tmp_path / "archive"
        head = curl(node_ns, *priv, *auth, "-D", "-", "-o", str(body), url + "?have=none&archive=1").stdout
        assert f"X-Provisioner-Offer: generation 1 sha256 {offer['sha256']} size {offer['size']} refresh 0" in head
        assert hashlib.sha256(body.read_bytes()).hexdigest() == offer["sha256"]
        same = curl(node_ns, *priv, *auth, f"{url}?have={offer['sha256']}&archive=1").stdout
        assert same == first  # nothing new: the offer alone
        code = ("-o", "/dev/null", "-w", "%{http_code}")
        assert curl(node_ns, *priv, *code, url, check=False).stdout == "401"  # no credential
        assert curl(node_ns, *code, "-H", f"Authorization: Bearer {cred}", url, check=False).stdout == "403"
        assert curl(stranger, *priv, *code, "-H", f"Authorization: Bearer {cred}", url, check=False).stdout == "404"
        bad = curl(node_ns, *priv, *code, "-H", f"Authorization: Bearer {cred}", url + "?wait=x", check=False)
        assert bad.stdout == "400"

        # Two polls wait; the third is answered at once with retry.
        wait = f"{url}?have={offer['sha256']}&wait=30"
        waiting = [
            node_ns.popen(
                [
                    "curl",
                    "-sS",
                    "--local-port",
                    f"{700 + 10 * k}-{709 + 10 * k}",
                    "-H",
                    f"Authorization: Bearer {cred}",
                    wait,
                ],
                text=True,
            )
            for k in range(2)
        ]
        time.sleep(1.5)
        started = time.monotonic()
        third = curl(node_ns, "--local-port", "800-820", "-H", f"Authorization: Bearer {cred}", wait).stdout
        assert "retry 30" in third and time.monotonic() - started < 3
        assert all(p.poll() is None for p in waiting)
        # A push answers a waiting poll at once (one: a node runs one agent), asking for a refresh.
        env = {**os.environ, "PROVISIONER_SITE": str(cli.site), "PROVISIONER_STATE": str(cli.state)}
        push = subprocess.Popen([cli.exe, "overlay", "push", "node01", "--timeout", "1"], env=env)
        try:
            took = until(lambda: any(p.poll() is not None for p in waiting), 10, "push answers a poll")
            done = next(p for p in waiting if p.poll() is not None)
            assert "refresh 1" in done.communicate()[0] and took < 10
        finally:
            push.wait(30)
            for p in waiting:
                p.kill()
                p.wait()


def test_runtime_archive_holds_runtime_files_only_and_is_stable(tmp_path):
    """The runtime archive has the runtime overlays' files and the node's own, never a secret;
    a rebuild for a boot-time change leaves it byte for byte the same; a bad _overlay.yaml
    fails the build with its path."""
    from provisioner.errors import UserError
    from provisioner.inventory import load_inventory
    from provisioner.paths import Site

    site, state = Site(tmp_path / "site"), State(tmp_path / "state")
    write_site(site.root)
    doc = yaml.safe_load((site.root / "cluster.yaml").read_text())
    doc["profiles"]["default"]["overlays"] = ["rtapp", "ssh", "munge"]
    (site.root / "cluster.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    note = site.root / "overlays" / "munge" / "etc" / "munge" / "note.conf"  # a boot-time file
    note.parent.mkdir(parents=True)
    note.write_text("a\n")
    inv = load_inventory(site.root / "cluster.yaml")
    overlay_build.build(state, site, inv)
    members = overlay_build.runtime_members(state, "node01")
    assert members is not None
    assert {"etc/motd", "etc/rtapp/app.conf", "etc/ssh/sshd_config.d/provisioner.conf"} <= set(members)
    assert "usr/local/sbin/provisioner-agent" in members
    secret = {"etc/provisioner/credential", "etc/munge/munge.key", "etc/ssh/ssh_host_ed25519_key"}
    assert not secret & set(members) and "etc/hostname" not in members
    before = overlay_build.runtime_digest(state, "node01")
    note.write_text("b\n")
    assert overlay_build.build(state, site, inv).built == ["node01", "node02"]
    assert overlay_build.runtime_digest(state, "node01") == before  # running nodes: nothing to do
    (site.root / "nodes" / "node01" / "_overlay.yaml").write_text("runtime: false\n")
    report = overlay_build.build(state, site, inv)
    assert report.built == ["node01"]
    assert set(overlay_build.runtime_members(state, "node01") or ()) == members.keys() - {"etc/motd"}
    (site.root / "nodes" / "node01" / "_overlay.yaml").unlink()
    overlay_build.build(state, site, inv)
    assert overlay_build.runtime_digest(state, "node01") == before
    (site.root / "overlays" / "rtapp" / "_overlay.yaml").write_text("runtime: yes please\n")
    with pytest.raises(UserError, match=r"rtapp/_overlay.yaml.*runtime: expected true or false"):
        overlay_build.build(state, site, inv)
