"""The core actions called directly, as the demo and `serve` call them (no click): overlay
builds with facts and build metrics, image switches that rebuild their nodes, Slurm apply and
its watch loop, adoption, status; and the CLI's one mapping of a core error to exit status 1."""

from __future__ import annotations

import logging
import re
import threading
import time
from ipaddress import IPv4Address
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from provisioner.actions import discovery, images, overlays, slurm, status
from provisioner.actions.context import Context
from provisioner.artifacts import images as image_store
from provisioner.artifacts import layout
from provisioner.artifacts.slurm_config import ApplyResult
from provisioner.errors import UserError
from provisioner.logs import FIELDS
from provisioner.nodestate import NodeStateDB
from provisioner.paths import Site, State

CLUSTER_YAML = """\
# the admin's comment
cluster:
  name: t
  domain: t.cluster
  network: {subnet: 10.77.0.0/24, master: 10.77.0.1, dynamic_range: 10.77.0.200-10.77.0.210}
  slurm: {controller: master}
  discovery: {names: "new[1-3]", addresses: 10.77.0.50-10.77.0.51}
profiles:
  default: {image: tiny, overlays: [base], partitions: [batch]}
nodes:
  - {name: node01, ip: 10.77.0.11, mac: "52:54:00:00:00:01"}
  - {name: node02, ip: 10.77.0.12, mac: "52:54:00:00:00:02"}
  - {name: other01, ip: 10.77.0.21, mac: "52:54:00:00:00:03", image: other}
"""
FACTS = {"cpus": 8, "sockets": 1, "cores_per_socket": 4, "threads_per_core": 2, "memory_mb": 7900}


@pytest.fixture
def ctx(tmp_path) -> Context:
    site = Site(tmp_path / "site")
    site.root.mkdir()
    site.cluster_yaml.write_text(CLUSTER_YAML)
    return Context(site, State(tmp_path / "state"))


def kernelless_root(path: Path) -> Path:
    """The least an image import takes: etc/ (with the user tables overlays read) and a sh."""
    (path / "etc").mkdir(parents=True)
    (path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (path / "etc" / "group").write_text("root:x:0:\n")
    (path / "bin").mkdir()
    (path / "bin" / "sh").symlink_to("busybox")
    return path


def pinned(state: State, node: str) -> set[str]:
    return set(re.findall(r"images/tiny/versions/(v\d+)/", layout.ipxe_script(state, node).read_text()))


def test_build_overlays_renders_facts_and_records_the_build(ctx):
    cpus = ctx.site.overlays / "base" / "etc" / "cpus.j2"
    cpus.parent.mkdir(parents=True)
    cpus.write_text("{{ facts.cpus | default('unknown') }}\n")
    first = overlays.build_overlays(ctx)
    assert sorted(first.built) == ["node01", "node02", "other01"]
    db = NodeStateDB(ctx.state.db)
    db.set_facts("node01", FACTS)
    assert {e.path: e.data for e in overlays.render_node(ctx, ctx.node("node01"))}["etc/cpus"] == b"8\n"
    again = overlays.build_overlays(ctx)
    assert (again.built, sorted(again.unchanged)) == (["node01"], ["node02", "other01"])
    totals = {r["kind"]: r for r in db.build_totals()}
    assert totals["overlay"]["n"] == 2
    assert [(n.name, c) for n, c in overlays.plan(ctx, ctx.select("node01"))] == [("node01", [])]


def test_a_failed_override_build_saves_nothing(ctx):
    overlays.build_overlays(ctx)
    node = ctx.node("node01")
    rel, seed = overlays.editable(ctx, node, "/etc/hostname")
    assert (rel, seed) == ("etc/hostname", b"node01\n")
    overlays.save_override(ctx, node, "etc/motd.j2", b"hello {{ node.name }}\n")
    assert overlays.editable(ctx, node, "etc/motd.j2")[1] == b"hello {{ node.name }}\n"  # the override, raw
    assert {e.path: e.data for e in overlays.render_node(ctx, node)}["etc/motd"] == b"hello node01\n"
    with pytest.raises(UserError, match=r"not saved: .*no_such_variable"):
        overlays.save_override(ctx, node, "etc/motd.j2", b"{{ no_such_variable }}\n")
    assert (ctx.site.node_overrides("node01") / "etc" / "motd.j2").read_bytes() == b"hello {{ node.name }}\n"
    with pytest.raises(UserError, match="not a path inside"):
        overlays.editable(ctx, node, "../etc/passwd")


def test_image_switches_rebuild_the_boot_configs_of_its_nodes_only(ctx, tmp_path):
    root = kernelless_root(tmp_path / "root")
    said: list[str] = []
    first = images.import_image(ctx, "tiny", root, progress=said.append)
    assert (first.version.version, first.nodes, first.error) == ("v1", ("node01", "node02"), None)
    assert first.message == "2 node(s) now boot tiny v1" and "tiny: now at v1" in said
    assert pinned(ctx.state, "node01") == {"v1"}
    assert not layout.ipxe_script(ctx.state, "other01").exists()
    images.import_image(ctx, "tiny", root)
    assert pinned(ctx.state, "node02") == {"v2"}
    back = images.rollback_image(ctx, "tiny")
    assert back.version.version == "v1" and pinned(ctx.state, "node01") == {"v1"}
    # a failing rebuild: the version switched, the old one is kept and still named
    broken = ctx.site.overlays / "base" / "etc" / "broken.j2"
    broken.parent.mkdir(parents=True)
    broken.write_text("{{ no_such_variable }}\n")
    failed = images.import_image(ctx.fresh(), "tiny", root, keep=1)
    assert failed.version.version == "v3" and failed.error and "boot configs were not rebuilt" in failed.error
    with pytest.raises(UserError, match="tiny is now at v3"):
        failed.check()
    assert [v.version for v in image_store.versions(ctx.state, "tiny")] == ["v1", "v2", "v3"]
    assert pinned(ctx.state, "node01") == {"v1"}
    with pytest.raises(UserError, match=r"2 node\(s\) boot tiny"):
        images.remove_image(ctx, "tiny")
    assert images.remove_image(ctx, "tiny", force=True) == ["node01", "node02"]


def test_an_image_switch_before_init_has_no_nodes_to_rebuild(tmp_path):
    ctx = Context(Site(tmp_path / "site"), State(tmp_path / "state"))
    switch = images.import_image(ctx, "tiny", kernelless_root(tmp_path / "root"))
    assert switch.nodes == () and "no inventory at" in (switch.message or "")
    switch.check()


def test_apply_slurm_takes_facts_and_the_watch_keeps_trying(ctx, tmp_path):
    slurm_yaml = CLUSTER_YAML.replace("overlays: [base]", "overlays: [base, slurm]")  # slurmd runs there
    ctx.site.cluster_yaml.write_text(slurm_yaml)
    conf = tmp_path / "etc-slurm"
    warned: list[str] = []
    result = slurm.apply_slurm(ctx, conf, reconfigure=None, warn=warned.append)
    assert result.changed == ("slurm.conf", "cgroup.conf", "gres.conf") and result.action == "none"
    assert "NodeName=node01 State=FUTURE" in (conf / "slurm.conf").read_text()
    NodeStateDB(ctx.state.db).set_facts("node01", FACTS)
    with pytest.raises(UserError, match="files written, but slurmctld did not take them: false exited 1"):
        slurm.apply_slurm(ctx, conf, reconfigure=["false"], restart=["false"])
    assert "NodeName=node01 CPUs=8" in (conf / "slurm.conf").read_text()

    # The watch: each round reads the inventory and facts again; a refusing slurmctld is
    # reported and tried again; a round that changes nothing says nothing.
    applied: list[ApplyResult] = []
    errors: list[str] = []
    stop = threading.Event()
    rounds = threading.Semaphore(0)

    def error(msg: str) -> None:
        errors.append(msg)
        rounds.release()

    watcher = threading.Thread(
        target=slurm.watch_slurm,
        args=(ctx, conf, 0.2),
        daemon=True,
        kwargs={
            "reconfigure": ["false"],
            "restart": ["false"],
            "applied": applied.append,
            "error": error,
            "stop": stop,
        },
    )
    NodeStateDB(ctx.state.db).set_facts("node02", FACTS)
    watcher.start()
    assert rounds.acquire(timeout=20)
    assert errors == ["false exited 1"] and "NodeName=node02 CPUs=8" in (conf / "slurm.conf").read_text()
    ctx.site.cluster_yaml.write_text(slurm_yaml.replace("node02", "node05"))
    assert rounds.acquire(timeout=20)
    assert "NodeName=node05 State=FUTURE" in (conf / "slurm.conf").read_text()
    stop.set()
    watcher.join(timeout=20)
    assert not watcher.is_alive() and applied == []


def test_hostfile_uses_facts_and_names_unknown_partitions(ctx):
    NodeStateDB(ctx.state.db).set_facts("node01", FACTS)
    assert slurm.hostfile(ctx, "batch").splitlines()[0] == "node01 slots=8"
    with pytest.raises(UserError, match="no node is in partition 'gpu'"):
        slurm.hostfile(ctx, "gpu")


def test_adopt_names_from_the_policy_builds_the_node_and_notes_it(ctx):
    db = NodeStateDB(ctx.state.db)
    db.saw_unknown("52:54:00:bb:00:01", 7, None, "10.77.0.200")
    got = discovery.adopt_node(ctx, "52:54:00:BB:00:01")
    assert (got.mac, got.name, str(got.ip)) == ("52:54:00:bb:00:01", "new1", "10.77.0.50")
    assert ctx.fresh().node("new1").interfaces[0].mac == "52:54:00:bb:00:01"
    assert layout.overlay_archive(ctx.state, "new1").exists()  # built before the inventory named it
    assert [dict(r)["adopted_as"] for r in db.discovered()] == ["new1"]
    assert discovery.adopt_node(ctx, "52:54:00:bb:00:02", "chosen").ip == IPv4Address("10.77.0.51")
    for mac, name, msg in (
        ("52:54:00:bb:00:01", None, "already node new1"),
        ("52:54:00:bb:00:04", None, "no free address left in 10.77.0.50-10.77.0.51"),
        ("52:54:00:bb:00:04", "node01", "node node01 exists already"),
        ("nonsense", None, "not a MAC address"),
    ):
        with pytest.raises(UserError, match=msg):
            discovery.adopt_node(ctx, mac, name)
    assert ctx.site.cluster_yaml.read_text().startswith("# the admin's comment")
    assert not layout.overlay_archive(ctx.state, "new2").exists()
    ctx.site.cluster_yaml.write_text(ctx.site.cluster_yaml.read_text().replace("10.77.0.51}", "10.77.0.60}"))
    assert [discovery.adopt_node(ctx, f"52:54:00:bb:00:0{i}").name for i in (4, 5)] == ["new2", "new3"]
    with pytest.raises(UserError, match=r"every name of new\[1-3\] is taken"):
        discovery.adopt_node(ctx, "52:54:00:bb:00:06", None)


def test_auto_adopter_takes_at_most_the_rate_and_answers_for_pending_macs(ctx, caplog):
    caplog.set_level(logging.WARNING, "provisioner.discovery")
    adopter = discovery.AutoAdopter(ctx)
    macs = [f"52:54:00:bb:01:0{i}" for i in range(4)]
    assert [adopter(m, 2) for m in macs] == [True, True, False, False]
    assert adopter(macs[0], 2)  # taken on already: no second token, no second adoption
    deadline = time.time() + 30
    while len(ctx.fresh().inventory().nodes) < 5 and time.time() < deadline:
        time.sleep(0.1)
    fresh = ctx.fresh()
    assert [fresh.inventory().by_mac(m).name for m in macs[:2]] == ["new1", "new2"]
    assert fresh.inventory().by_mac(macs[2]) is None
    assert not adopter(macs[2], 2) and adopter(macs[2], 3)  # the rate read at each call

    def failed() -> list[dict[str, object]]:
        return [getattr(r, FIELDS) for r in caplog.records if r.getMessage() == "could not adopt"]

    while not failed() and time.time() < deadline:
        time.sleep(0.1)
    assert "no free address left in 10.77.0.50-10.77.0.51" in str(failed()[0]["error"])  # a log line, no crash
    assert [r.getMessage() for r in caplog.records].count("adoption rate limit reached; the node stays discovered") == 1


def test_discovery_policy_defaults_and_the_old_adopt_key(ctx):
    policy = ctx.inventory().cluster.discovery
    assert (policy.mode, policy.rate) == ("approve", 10)
    for old, new, msg in (
        (
            '{names: "new[1-3]", addresses: 10.77.0.50-10.77.0.51}',
            '{adopt: "new[1-2]"}',
            "is now two settings: write `mode: auto` and `names: new[1-2]`",
        ),
        ('{names: "new[1-3]", addresses: 10.77.0.50-10.77.0.51}', "{mode: auto}", "mode auto needs `names`"),
        ("10.77.0.50-10.77.0.51", "10.78.0.50-10.78.0.51", "inside 10.77.0.0/24"),
    ):
        ctx.site.cluster_yaml.write_text(CLUSTER_YAML.replace(old, new))
        with pytest.raises(UserError, match=re.escape(msg)):
            ctx.fresh().inventory()


def test_status_timeline_takes_one_node(ctx):
    db = NodeStateDB(ctx.state.db)
    db.record_stage("node01", "dhcp", None)
    db.record_stage("node01", "ipxe", None)
    name, steps = status.boot_timeline(ctx, "node01")
    assert name == "node01" and [s.stage for s in steps] == ["dhcp", "ipxe"]
    with pytest.raises(UserError, match="--timeline takes exactly one node"):
        status.boot_timeline(ctx, "node[01-02]")
    assert [s.stage for s in status.statuses(ctx, "node01")] == ["ipxe"]


def test_the_cli_shows_a_core_error_in_one_line_with_status_1(ctx):
    from provisioner.cli import main

    assert not issubclass(UserError, click.ClickException)  # the core knows nothing of click
    res = CliRunner().invoke(
        main, ["--site", str(ctx.site.root), "--state", str(ctx.state.root), "status", "node[01-02]", "--timeline"]
    )
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit)
    assert res.stderr == "Error: --timeline takes exactly one node\n" and res.stdout == ""
