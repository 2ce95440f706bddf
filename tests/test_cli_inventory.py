"""The inventory CLI through the installed `provisioner` script."""

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

SITE = """\
# Admin's note: do not touch the storage nodes.
cluster:
  name: demo   # the name slurm uses too
  network:
    subnet: 10.77.0.0/24
    master: 10.77.0.1
    dynamic_range: 10.77.0.200-10.77.0.250
profiles:
  default:
    image: debian12
    overlays: [base]
  gpu:
    features: [gpu]
nodes:
  # compute rack 1
  - name: node[01-04]
    ip: 10.77.0.11
    mac: [52:54:00:00:00:01, 52:54:00:00:00:02, 52:54:00:00:00:03, 52:54:00:00:00:04]
  - name: storage01   # keep
    ip: 10.77.0.2
"""


def write_site(cli, text=SITE):
    cli.site.mkdir(parents=True, exist_ok=True)
    (cli.site / "cluster.yaml").write_text(text)
    return cli.site / "cluster.yaml"


def test_init_detects_the_interface_inside_a_namespace(lab, cli, tmp_path):
    site = tmp_path / "s"
    res = lab.server.run([cli.exe, "--site", str(site), "init"], check=False)
    assert res.returncode == 0, res.stderr
    assert "interface br0" in res.stdout and "10.99.0.0/24" in res.stdout
    text = (site / "cluster.yaml").read_text()
    assert "interface: br0" in text and "master: 10.99.0.1" in text
    res = lab.server.run([cli.exe, "--site", str(site), "check"], check=False)
    assert res.returncode == 0 and "ok" in res.stdout
    again = lab.server.run([cli.exe, "--site", str(site), "init"], check=False)
    assert again.returncode == 1 and "exists" in again.stderr


def test_init_with_a_named_interface_that_has_no_address(lab, cli, tmp_path):
    res = lab.server.run([cli.exe, "--site", str(tmp_path / "s"), "init", "--interface", "lo0"], check=False)
    assert res.returncode == 1 and "no interface named 'lo0'" in res.stderr


def test_check_reports_problems_with_exit_1_and_no_traceback(cli):
    path = write_site(
        cli, SITE.replace("ip: 10.77.0.2", "ip: 10.77.0.201").replace("name: storage01", "name: storage_01")
    )
    res = cli("check", check=False)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert f"{path}:19: nodes[1].name" in res.stderr
    assert f"{path}:20: nodes[1].ip" in res.stderr and "dynamic range" in res.stderr


def test_usage_errors_exit_2(cli):
    write_site(cli)
    assert cli("node", "add", check=False).returncode == 2
    assert cli("node", "frobnicate", check=False).returncode == 2


def test_missing_site_is_a_clear_user_error(cli):
    res = cli("node", "list", check=False)
    assert res.returncode == 1 and "provisioner init" in res.stderr


def test_node_add_takes_the_next_free_address_outside_the_dynamic_range(cli):
    write_site(cli)
    cli("node", "add", "n5", "--mac", "52-54-00-00-00-AA", "--profile", "default,gpu")
    node = json.loads(cli("node", "show", "n5", "--json").stdout)[0]
    # .1 is the master, .2 storage01; .3 is the first free one.
    assert node["interfaces"][0] == {"name": "eth0", "mac": "52:54:00:00:00:aa", "ip": "10.77.0.3"}
    assert node["features"] == ["gpu"]


def test_edits_keep_comments_and_key_order(cli):
    path = write_site(cli)
    cli("node", "add", "extra1", "--ip", "10.77.0.99")
    cli("node", "set", "node03", "--image", "other")  # splits the range entry
    assert cli("node", "rm", "node01").stdout.startswith("removed 1 node(s)")
    cli("profile", "set", "gpu", "--image", "cuda")
    text = path.read_text()
    for comment in (
        "# Admin's note: do not touch the storage nodes.",
        "# the name slurm uses too",
        "# compute rack 1",
        "# keep",
    ):
        assert comment in text
    assert text.index("cluster:") < text.index("profiles:") < text.index("nodes:")
    names = [n["name"] for n in json.loads(cli("node", "list", "--json").stdout)]
    assert names == ["node02", "node03", "node04", "storage01", "extra1"]
    nodes = {n["name"]: n for n in json.loads(cli("node", "list", "--json").stdout)}
    assert nodes["node03"]["image"] == "other" and nodes["node04"]["image"] == "debian12"
    assert nodes["node04"]["interfaces"][0]["ip"] == "10.77.0.14"
    assert nodes["node04"]["interfaces"][0]["mac"] == "52:54:00:00:00:04"


def test_invalid_edit_writes_nothing(cli):
    path = write_site(cli)
    before = path.read_bytes()
    for args in (
        ["node", "add", "n9", "--ip", "10.99.0.5"],  # outside the subnet
        ["node", "add", "n9", "--ip", "10.77.0.11"],  # taken by node01
        ["node", "add", "bad_name"],
        ["node", "set", "node02", "--mac", "52:54:00:00:00:01"],  # node01's MAC
        ["profile", "rm", "default"],
    ):  # still in use
        res = cli(*args, check=False)
        assert res.returncode == 1, (args, res.stdout, res.stderr)
        assert "Traceback" not in res.stderr
    assert path.read_bytes() == before
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_twenty_concurrent_adds_leave_twenty_nodes(cli):
    path = write_site(cli)
    env = {"PROVISIONER_SITE": str(cli.site), "PROVISIONER_STATE": str(cli.state)}

    def add(i):
        return subprocess.run(
            [cli.exe, "node", "add", f"c{i:02d}", "--mac", f"52:54:00:01:00:{i:02x}"],
            capture_output=True,
            text=True,
            env={**__import__("os").environ, **env},
        )

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(add, range(20)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    nodes = json.loads(cli("node", "list", "@default", "--json").stdout)
    added = [n for n in nodes if n["name"].startswith("c")]
    assert len(added) == 20
    assert len({n["interfaces"][0]["ip"] for n in nodes}) == len(nodes)
    assert "# compute rack 1" in path.read_text()


def test_list_is_an_aligned_table_and_json_is_parseable(cli):
    write_site(cli)
    out = cli("node", "list", "node[01-02],storage01").stdout.splitlines()
    assert out[0].split() == ["NAME", "IP", "MAC", "PROFILES", "IMAGE"]
    assert [line.split()[0] for line in out[1:]] == ["node01", "node02", "storage01"]
    assert len({line.index(line.split()[1]) for line in out}) == 1  # IP column aligned
    profiles = json.loads(cli("profile", "list", "--json").stdout)
    assert {p["name"]: p["nodes"] for p in profiles} == {"default": 5, "gpu": 0}


def test_show_sources_says_where_values_came_from(cli):
    write_site(cli)
    cli("node", "set", "node02", "--profile", "default,gpu", "--image", "mine")
    out = cli("node", "show", "node02", "--sources").stdout
    assert "image: mine    [node]" in out
    assert "features: gpu    [profile:gpu]" in out
    assert "overlays: base    [profile:default]" in out


def test_profile_crud(cli):
    write_site(cli)
    cli("profile", "add", "bigmem", "--description", "1 TB nodes", "--partition", "bigmem", "--mpi-slots", "64")
    assert json.loads(cli("profile", "show", "bigmem", "--json").stdout)["mpi_slots"] == 64
    cli("node", "set", "node04", "--profile", "default,bigmem")
    assert json.loads(cli("node", "show", "node04", "--json").stdout)[0]["partitions"] == ["bigmem"]
    assert cli("profile", "rm", "bigmem", check=False).returncode == 1
    cli("node", "set", "node04", "--profile", "default")
    cli("profile", "rm", "bigmem")
    assert "bigmem" not in cli("profile", "list").stdout


def test_check_json_lists_problems(cli):
    write_site(cli, SITE.replace("name: storage01", "name: storage_01"))
    res = cli("check", "--json", check=False)
    assert res.returncode == 1
    assert [(p["line"], p["field"]) for p in json.loads(res.stdout)] == [(19, "nodes[1].name")]
    write_site(cli)
    assert json.loads(cli("check", "--json").stdout) == []
