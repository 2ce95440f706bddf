"""Every declared setting works everywhere it is derived from its declaration.

Node settings: parse, profile merge, the CLI's `node set` and `profile add` flags, `node show
--sources` and `--json`; a new one needs nothing but its declaration line. Cluster settings:
wrong values are reported at their field, defaults are the declared ones."""

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from labs.site import node_of
from provisioner.inventory import InventoryInvalid, parse_text
from provisioner.inventory.model import SETTINGS, BootFiles, Cluster
from provisioner.inventory.schema import (
    Choice,
    Count,
    Names,
    Section,
    Sections,
    Table,
    Text,
    Words,
    settings_of,
)

HEAD = """\
cluster:
  name: demo
  network: {subnet: 10.77.0.0/24, master: 10.77.0.1}
"""


# Per kind of setting: the YAML values of profile p1, profile p2 and the node (which names
# both profiles, in that order), the merged value and its sources; then CLI flag values and
# the value they give.
def samples(kind):
    if type(kind) is Text:
        return ("a1", "b2", "c3"), "c3", {"": "node"}, ["cli"], "cli"
    if type(kind) is Choice:
        c = kind.choices
        return (c[0], c[1], c[-1]), c[-1], {"": "node"}, [c[0]], c[0]
    if type(kind) is Count:
        lo = kind.lo
        return (lo, lo + 1, lo + 2), lo + 2, {"": "node"}, [str(lo + 3)], lo + 3
    if type(kind) is Words:  # a string splits on whitespace; a CLI flag is one item, commas kept
        return (
            (["x=1", "y"], ["y", "z"], "w v"),
            ("x=1", "y", "z", "w", "v"),
            {"": "profile:p1 + profile:p2 + node"},
            ["a=1,b", "c"],
            ["a=1,b", "c"],
        )
    if type(kind) is Names:  # a string is one name; a CLI flag takes a comma list
        return (
            (["a"], ["a", "b"], "c"),
            ("a", "b", "c"),
            {"": "profile:p1 + profile:p2 + node"},
            ["d,e", "f"],
            ["d", "e", "f"],
        )
    if type(kind) is Table:  # merged key by key, nested mappings too; the CLI takes KEY=VALUE
        return (
            ({"k": "1", "d": {"x": 1}}, {"d": {"y": 2}}, {"k": "n"}),
            {"k": "n", "d": {"x": 1, "y": 2}},
            {".k": "node", ".d.x": "profile:p1", ".d.y": "profile:p2"},
            ["k=v", "j=w=x"],
            {"k": "v", "j": "w=x"},
        )
    if type(kind) is BootFiles:  # a table of boot files by firmware: keys the registry knows
        return (
            ({"bios": "a.kpxe"}, {"uefi": "b.efi"}, {"bios": "n.kpxe"}),
            {"bios": "n.kpxe", "uefi": "b.efi"},
            {".bios": "node", ".uefi": "profile:p2"},
            ["bios=c.kpxe"],
            {"bios": "c.kpxe"},
        )
    raise AssertionError(f"no samples for {type(kind).__name__}: add them here")


def site_yaml() -> str:
    layers = {key: samples(s.kind)[0] for key, s in SETTINGS.items()}
    doc = {
        "profiles": {p: {key: v[i] for key, v in layers.items()} for i, p in enumerate(("p1", "p2"))},
        "nodes": [
            {"name": "n1", "ip": "10.77.0.11", "profiles": ["p1", "p2"], **{k: v[2] for k, v in layers.items()}},
            {"name": "n2", "ip": "10.77.0.12", "profiles": []},
        ],
    }
    return HEAD + yaml.safe_dump(doc, sort_keys=False)


@pytest.mark.parametrize("key", list(SETTINGS))
def test_every_setting_parses_and_merges_by_its_kind(key):
    _, merged, sources, _, _ = samples(SETTINGS[key].kind)
    node = node_of(parse_text(site_yaml(), "c.yaml"), "n1")
    assert getattr(node, key) == merged
    assert {k[len(key) :]: v for k, v in node.sources.items() if k == key or k.startswith(key + ".")} == sources


@pytest.mark.parametrize("key", list(SETTINGS))
def test_every_setting_reports_a_wrong_value_with_its_line(key):
    text = HEAD + f"nodes:\n  - name: n1\n    ip: 10.77.0.11\n    {key}: {{wrong: [shape]}}\n"
    if isinstance(SETTINGS[key].kind, Table):
        text = text.replace("{wrong: [shape]}", "[wrong]")
    with pytest.raises(InventoryInvalid) as e:
        parse_text(text, "c.yaml")
    assert [(p.line, p.field) for p in e.value.problems] == [(7, f"nodes[0].{key}")]


def test_every_setting_round_trips_through_the_cli(cli):
    cli.site.mkdir(parents=True)
    (cli.site / "cluster.yaml").write_text(site_yaml())
    flagged = {key: s for key, s in SETTINGS.items() if s.flag}
    args = [a for key, s in flagged.items() for v in samples(s.kind)[3] for a in (s.flag, v)]

    shown = json.loads(cli("node", "show", "n1", "--json", "--sources").stdout)[0]
    text = cli("node", "show", "n1", "--sources").stdout
    for key, s in SETTINGS.items():
        _, merged, sources, _, _ = samples(s.kind)
        assert shown[key] == s.kind.to_json(merged), key
        assert {k[len(key) :]: v for k, v in shown["sources"].items() if k.split(".")[0] == key} == sources, key
        line = next(line for line in text.splitlines() if line.startswith(f"  {key}: "))
        origin = sources.get("") or ", ".join(f"{k[1:]}<-{v}" for k, v in sources.items())
        assert line.endswith(f"    [{origin}]"), line

    cli("node", "set", "n2", *args)
    cli("profile", "add", "p3", *args)
    node = json.loads(cli("node", "show", "n2", "--json", "--sources").stdout)[0]
    profile = json.loads(cli("profile", "show", "p3", "--json").stdout)
    for key, s in flagged.items():
        given = samples(s.kind)[4]
        assert node[key] == given and profile[key] == given, key
        assert {v for k, v in node["sources"].items() if k.split(".")[0] == key} == {"node"}, key


def test_a_new_setting_needs_only_its_declaration(tmp_path):
    """A copy of the package with one line added to Node parses, merges, shows and sets it."""
    import provisioner

    pkg = tmp_path / "pkg"
    shutil.copytree(
        Path(provisioner.__file__).parent, pkg / "provisioner", ignore=shutil.ignore_patterns("__pycache__")
    )
    model = pkg / "provisioner" / "inventory" / "model.py"
    anchor = next(
        line for line in model.read_text().splitlines(keepends=True) if line.lstrip().startswith("mpi_slots:")
    )
    model.write_text(
        model.read_text().replace(
            anchor, anchor + '    gpus: int | None = setting(Count(0, 16), "--gpus", "GPUs per node.")\n'
        )
    )
    site = tmp_path / "site"
    site.mkdir()
    (site / "cluster.yaml").write_text(
        HEAD
        + textwrap.dedent("""\
        profiles:
          gpu: {gpus: 2}
        nodes:
          - {name: g1, ip: 10.77.0.11, profiles: [gpu]}
          - {name: g2, ip: 10.77.0.12, profiles: [gpu], gpus: 4}
    """)
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(pkg),
        "PROVISIONER_SITE": str(site),
        "PROVISIONER_STATE": str(tmp_path / "state"),
    }

    def run(*args, check=True):
        main = f"import sys, provisioner.cli as c; assert c.__file__.startswith({str(pkg)!r}); sys.exit(c.main())"
        res = subprocess.run(
            [sys.executable, "-c", main, *args], capture_output=True, text=True, env=env, cwd=tmp_path, check=False
        )
        assert res.returncode == 0 or not check, res.stderr
        return res

    nodes = {n["name"]: n for n in json.loads(run("node", "show", "g1,g2", "--json", "--sources").stdout)}
    assert (nodes["g1"]["gpus"], nodes["g1"]["sources"]["gpus"]) == (2, "profile:gpu")
    assert (nodes["g2"]["gpus"], nodes["g2"]["sources"]["gpus"]) == (4, "node")
    assert "gpus: 2    [profile:gpu]" in run("node", "show", "g1", "--sources").stdout
    run("node", "set", "g1", "--gpus", "8")
    run("profile", "add", "big", "--gpus", "16")
    assert json.loads(run("node", "show", "g1", "--json").stdout)[0]["gpus"] == 8
    assert json.loads(run("profile", "show", "big", "--json").stdout)["gpus"] == 16
    assert "GPUs per node." in run("node", "add", "--help").stdout
    assert run("node", "set", "g1", "--gpus", "17", check=False).returncode == 2
    (site / "cluster.yaml").write_text((site / "cluster.yaml").read_text().replace("gpus: 4", "gpus: many"))
    res = run("check", check=False)
    assert res.returncode == 1 and "nodes[1].gpus: 'many' is not a whole number" in res.stderr


def cluster_leaves(model, path=("cluster",)):
    """(path, setting) for every setting of the cluster section, nested sections walked into
    (a list of sections through its first item)."""
    for key, s in settings_of(model).items():
        if isinstance(s.kind, Section):
            yield from cluster_leaves(s.kind.model, (*path, key))
        elif isinstance(s.kind, Sections):
            yield from cluster_leaves(s.kind.model, (*path, key, 0))
        else:
            yield (*path, key), s


MINIMAL = {
    "cluster": {
        "name": "demo",
        "network": {"subnet": "10.77.0.0/24"},
        "nfs": {"exports": [{"path": "/home"}]},
        "discovery": {"switches": [{"address": "10.77.0.2", "rack": 1}]},  # the default pattern uses {rack}
    }
}
GIVEN = {("cluster", "discovery", "switches", 0, "rack")}


@pytest.mark.parametrize("path", [p for p, _ in cluster_leaves(Cluster)], ids=lambda p: ".".join(map(str, p[1:])))
def test_every_cluster_setting_reports_a_wrong_value_at_its_field(path):
    doc = copy.deepcopy(MINIMAL)
    where: Any = doc
    for part in path[:-1]:
        where = where.setdefault(part, {}) if isinstance(part, str) else where[part]
    settings = dict(cluster_leaves(Cluster))
    where[path[-1]] = ["not", "this"] if isinstance(settings[path].kind, Table) else {"not": "this"}
    with pytest.raises(InventoryInvalid) as e:
        parse_text(yaml.safe_dump(doc), "c.yaml")
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)[1:]
    assert field in [p.field for p in e.value.problems], e.value.problems


def test_cluster_defaults_come_from_the_declarations():
    cluster = parse_text(yaml.safe_dump(MINIMAL), "c.yaml").cluster
    for path, s in cluster_leaves(Cluster):
        value: Any = cluster
        for part in path[1:]:
            value = value[part] if isinstance(part, int) else getattr(value, part)
        if s.derive is None and not s.required and path not in GIVEN:
            assert value == s.fallback(), path
    net = cluster.network
    assert str(net.master) == "10.77.0.1" and cluster.nfs.server == cluster.slurm.address == net.master
    assert cluster.nfs.exports[0].mount == "/home"
