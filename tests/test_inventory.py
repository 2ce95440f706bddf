"""Loading, validation (one test per error kind, with its line), merging and selection."""

import textwrap
from ipaddress import IPv4Address

import pytest

from labs.site import node_of
from provisioner.inventory import InventoryInvalid, parse_text

HEAD = """\
cluster:
  name: demo
  network:
    subnet: 10.77.0.0/24
    master: 10.77.0.1
    dynamic_range: 10.77.0.200-10.77.0.250
profiles:
  default:
    image: debian12
    overlays: [base, ssh]
    kernel_args: [console=ttyS0]
  gpu:
    features: [gpu]
    overlays: [gpu]
    image: cuda
nodes:
"""  # nodes start on line 17


def problems(nodes_yaml: str, head: str = HEAD) -> list:
    with pytest.raises(InventoryInvalid) as e:
        parse_text(head + textwrap.dedent(nodes_yaml), "site/cluster.yaml")
    return e.value.problems


def only(nodes_yaml: str, head: str = HEAD):
    ps = problems(nodes_yaml, head)
    assert len(ps) == 1, ps
    assert ps[0].file == "site/cluster.yaml"
    return ps[0]


def test_valid_inventory_loads_with_ranges_and_profiles():
    inv = parse_text(
        HEAD
        + textwrap.dedent("""\
      - name: node[01-03]
        ip: 10.77.0.11
        mac: [52:54:00:00:00:01, 52-54-00-00-00-02, 5254.0000.0003]
      - name: gpu01
        ip: 10.77.0.21
        mac: 52:54:00:00:01:01
        profiles: [default, gpu]
        overlays: [extra]
        vars: {rack: 7}
    """),
        "c.yaml",
    )
    assert [n.name for n in inv.nodes] == ["node01", "node02", "node03", "gpu01"]
    assert [str(n.ip) for n in inv.nodes[:3]] == ["10.77.0.11", "10.77.0.12", "10.77.0.13"]
    assert node_of(inv, "node02").mac == "52:54:00:00:00:02"
    assert node_of(inv, "node03").mac == "52:54:00:00:00:03"
    gpu = node_of(inv, "gpu01")
    assert gpu.image == "cuda"  # the later profile wins for scalars
    assert gpu.overlays == ("base", "ssh", "gpu", "extra")  # lists append, node last
    assert gpu.sources["image"] == "profile:gpu"
    assert gpu.sources["overlays"] == "profile:default + profile:gpu + node"
    assert gpu.sources["vars.rack"] == "node"
    assert inv.by_mac("52:54:00:00:01:01") is gpu
    assert inv.by_ip(IPv4Address("10.77.0.12")) is node_of(inv, "node02")


def test_node_scalar_beats_every_profile():
    inv = parse_text(HEAD + "  - {name: n1, ip: 10.77.0.5, profiles: [default, gpu], image: mine}\n", "c.yaml")
    assert inv.nodes[0].image == "mine"
    assert inv.nodes[0].sources["image"] == "node"


def test_nodes_without_profiles_get_default():
    inv = parse_text(HEAD + "  - {name: n1, ip: 10.77.0.5}\n", "c.yaml")
    assert inv.nodes[0].profiles == ("default",)
    assert inv.nodes[0].image == "debian12"


def test_select_by_range_list_and_profile():
    inv = parse_text(
        HEAD
        + textwrap.dedent("""\
      - {name: "n[1-4]", ip: 10.77.0.11}
      - {name: g1, ip: 10.77.0.21, profiles: [gpu]}
    """),
        "c.yaml",
    )
    assert [n.name for n in inv.select("n[2-3],@gpu")] == ["n2", "n3", "g1"]
    assert len(inv.select("all")) == 5
    with pytest.raises(KeyError, match="n9"):
        inv.select("n[1,9]")


def test_duplicate_name_names_its_line():
    p = only("""\
      - {name: n1, ip: 10.77.0.5}
      - {name: n1, ip: 10.77.0.6}
    """)
    assert (p.line, p.field) == (18, "nodes[1].name")
    assert "duplicate node name 'n1'" in p.message and "line 17" in p.message


def test_duplicate_name_across_a_range():
    p = only("""\
      - {name: "n[1-3]", ip: 10.77.0.5}
      - {name: n2, ip: 10.77.0.9}
    """)
    assert p.line == 18 and "'n2'" in p.message


def test_duplicate_mac():
    p = only("""\
      - {name: n1, ip: 10.77.0.5, mac: "52:54:00:00:00:01"}
      - {name: n2, ip: 10.77.0.6, mac: "52:54:00:00:00:01"}
    """)
    assert (p.line, p.field) == (18, "nodes[1].mac")
    assert "already used by n1" in p.message


def test_duplicate_ip():
    p = only("""\
      - {name: n1, ip: 10.77.0.5}
      - {name: n2, ip: 10.77.0.5}
    """)
    assert (p.line, p.field) == (18, "nodes[1].ip")


def test_ip_outside_subnet():
    p = only("  - name: n1\n    ip: 10.78.0.5\n")
    assert p.line == 18 and "not a host address of the subnet 10.77.0.0/24" in p.message


def test_ip_inside_dynamic_range():
    p = only("  - {name: n1, ip: 10.77.0.201}\n")
    assert p.line == 17 and "inside the dynamic range" in p.message


def test_invalid_hostname():
    p = only("  - {name: node_1, ip: 10.77.0.5}\n")
    assert (p.line, p.field) == (17, "nodes[0].name") and "RFC 1123" in p.message


def test_malformed_mac_names_its_line():
    p = only("  - name: n1\n    ip: 10.77.0.5\n    mac: 52:54:00:zz:00:01\n")
    assert (p.line, p.field) == (19, "nodes[0].mac")


def test_range_needs_one_mac_per_node():
    p = only("  - name: n[1-3]\n    ip: 10.77.0.5\n    mac: [52:54:00:00:00:01]\n")
    assert p.line == 19 and "1 MACs given for 3 nodes" in p.message


def test_unknown_profile_suggests_the_right_one():
    p = only("  - name: n1\n    ip: 10.77.0.5\n    profiles: [gpuu]\n")
    assert (p.line, p.field) == (19, "nodes[0].profiles")
    assert "unknown profile 'gpuu' (did you mean 'gpu'?)" in p.message


def test_unknown_key_is_a_typo_with_a_suggestion():
    p = only("  - name: n1\n    ip: 10.77.0.5\n    imgae: x\n")
    assert (p.line, p.field) == (19, "nodes[0].imgae")
    assert "did you mean 'image'" in p.message


def test_unknown_key_in_cluster_section():
    head = HEAD.replace("    master: 10.77.0.1\n", "    master: 10.77.0.1\n    gatway: 10.77.0.1\n")
    p = only("", head)
    assert (p.line, p.field) == (6, "cluster.network.gatway")
    assert "did you mean 'gateway'" in p.message


def test_key_given_twice():
    p = only("  - name: n1\n    ip: 10.77.0.5\n    ip: 10.77.0.6\n")
    assert p.line == 19 and "twice" in p.message


def test_yaml_syntax_error_names_line():
    p = only("  - name: n1\n    ip: [10.77.0.5\n")
    assert p.field == "(syntax)" and p.line >= 18


def test_every_problem_is_reported_at_once_in_line_order():
    ps = problems("""\
      - {name: n1, ip: 10.77.0.5, mac: "52:54:00:00:00:01"}
      - {name: bad_name, ip: 10.77.0.6}
      - {name: n3, ip: 10.99.0.1, profiles: [nope]}
      - {name: n1, ip: 10.77.0.5, mac: "52:54:00:00:00:01", colour: red}
    """)
    found = {(p.line, p.field) for p in ps}
    assert found == {
        (18, "nodes[1].name"),  # bad hostname
        (19, "nodes[2].profiles"),  # unknown profile
        (19, "nodes[2].ip"),  # outside the subnet
        (20, "nodes[3].colour"),  # unknown key
        (20, "nodes[3].name"),  # duplicate name
        (20, "nodes[3].mac"),  # duplicate MAC
        (20, "nodes[3].ip"),  # duplicate IP
    }, ps
    assert [p.line for p in ps] == sorted(p.line for p in ps)


def test_sexagesimal_mac_is_read_as_text():
    inv = parse_text(HEAD + "  - {name: n1, ip: 10.77.0.5, mac: 52:54:00:00:00:01}\n", "c.yaml")
    assert inv.nodes[0].mac == "52:54:00:00:00:01"
