"""Writing the Slurm files (atomic, only on change) and when slurmctld is told, plus the CLI.

The reconfigure/restart commands here are small shell scripts that log their calls and answer
like scontrol does; test_slurm_cluster.py runs the same code against the real slurmctld.
"""

from __future__ import annotations

import json
import os

import pytest

from labs.site import write_site
from provisioner.artifacts.slurm_config import ReconfigureFailed, apply, diff
from provisioner.nodestate import NodeStateDB
from provisioner.render.slurm import SlurmConfig
from test_slurm_render import INVENTORY, facts_for


def conf(nodes: str, mem: int = 1000) -> SlurmConfig:
    lines = "".join(f"NodeName={n} CPUs=2 RealMemory={mem}\n" for n in nodes.split(","))
    return SlurmConfig(
        {"slurm.conf": "ClusterName=x\n" + lines, "cgroup.conf": "ConstrainCores=yes\n", "gres.conf": ""}
    )


@pytest.fixture
def ctl(tmp_path):
    """Commands standing in for scontrol: each call appends its name to calls.log; the
    reconfigure answers like slurmctld refusing a topology change when refuse.flag exists."""
    log = tmp_path / "calls.log"
    flag = tmp_path / "refuse.flag"
    reconfigure_cmd = [
        "sh",
        "-c",
        f"echo reconfigure >>{log}; if [ -e {flag} ]; then rm {flag}; "
        'echo "slurm_reconfigure error: The node configuration changes that were made '
        'require restart of the slurmctld daemon to take effect" >&2; exit 1; fi',
    ]
    restart_cmd = ["sh", "-c", f"echo restart >>{log}"]

    class Ctl:
        reconfigure = reconfigure_cmd
        restart = restart_cmd

        def calls(self) -> list[str]:
            return log.read_text().split() if log.exists() else []

        def refuse_next(self) -> None:
            flag.touch()

    return Ctl()


def test_first_write_then_nothing_when_unchanged(tmp_path, ctl):
    d = tmp_path / "etc-slurm"
    r = apply(conf("n1,n2"), d, ctl.reconfigure, ctl.restart)
    assert r.changed == ("slurm.conf", "cgroup.conf", "gres.conf") and r.action == "restarted"
    assert (d / "slurm.conf").read_text().endswith("NodeName=n2 CPUs=2 RealMemory=1000\n")
    assert oct((d / "slurm.conf").stat().st_mode & 0o777) == "0o644"
    mtime = (d / "slurm.conf").stat().st_mtime_ns
    r = apply(conf("n1,n2"), d, ctl.reconfigure, ctl.restart)
    assert (r.changed, r.action) == ((), "none")
    assert (d / "slurm.conf").stat().st_mtime_ns == mtime
    assert ctl.calls() == ["restart", "reconfigure"]
    assert not [p for p in d.iterdir() if p.name.startswith(".slurm.conf")]  # no temp files left


def test_a_change_of_hardware_reconfigures(tmp_path, ctl):
    d = tmp_path / "etc-slurm"
    apply(conf("n1,n2"), d, None)
    r = apply(conf("n1,n2", mem=2000), d, ctl.reconfigure, ctl.restart)
    assert (r.changed, r.action) == (("slurm.conf",), "reconfigured")
    assert ctl.calls() == ["reconfigure"]


def test_a_refused_reconfigure_falls_back_to_a_restart(tmp_path, ctl):
    d = tmp_path / "etc-slurm"
    apply(conf("n1,n2"), d, None)
    ctl.refuse_next()
    r = apply(conf("n1,n2", mem=3000), d, ctl.reconfigure, ctl.restart)
    assert r.action == "restarted"
    assert ctl.calls() == ["reconfigure", "restart", "reconfigure"]


def test_a_changed_node_set_never_reconfigures_first(tmp_path, ctl):
    """slurmctld 22.05 dies on a reconfigure that changes its node names."""
    d = tmp_path / "etc-slurm"
    apply(conf("n1,n2"), d, None)
    assert apply(conf("n1,n2,n3"), d, ctl.reconfigure, ctl.restart).action == "restarted"
    assert ctl.calls() == ["restart", "reconfigure"]
    with pytest.raises(ReconfigureFailed, match="must be restarted"):
        apply(conf("n1"), d, ctl.reconfigure, None)
    assert ctl.calls() == ["restart", "reconfigure"]


def test_a_failing_reconfigure_is_reported_with_files_written(tmp_path):
    d = tmp_path / "etc-slurm"
    apply(conf("n1"), d, None)
    with pytest.raises(ReconfigureFailed, match="exited 1: Unable to contact slurm controller"):
        apply(conf("n1", mem=5), d, ["sh", "-c", "echo 'Unable to contact slurm controller' >&2; exit 1"], None)
    assert "RealMemory=5" in (d / "slurm.conf").read_text()


def test_diff_shows_what_apply_would_change(tmp_path):
    d = tmp_path / "etc-slurm"
    apply(conf("n1"), d, None)
    assert diff(conf("n1"), d) == ""
    text = diff(conf("n1", mem=7), d)
    assert "-NodeName=n1 CPUs=2 RealMemory=1000" in text and "+NodeName=n1 CPUs=2 RealMemory=7" in text


# -- CLI ---------------------------------------------------------------------------------------------


@pytest.fixture
def site(cli):
    write_site(cli.site, INVENTORY)
    db = NodeStateDB(cli.state / "nodes.sqlite")
    db.set_facts("c01", facts_for("c01"))
    db.set_facts("c02", {"cpus": "lots"})
    db.close()
    return cli


def test_cli_render_diff_apply(site, tmp_path):
    d = tmp_path / "etc-slurm"
    res = site("slurm", "render")
    assert "NodeName=c01 CPUs=8 " in res.stdout and "NodeName=c02 State=FUTURE" in res.stdout
    assert "warning: c02: facts cpus='lots' is not a whole number from 1 to 65533 (the node stays FUTURE)" in res.stderr
    assert "Name=gpu" not in site("slurm", "render", "--file", "gres.conf").stdout
    assert "+NodeName=c01 CPUs=8" in site("slurm", "diff", "--conf-dir", d).stdout
    res = site("slurm", "apply", "--conf-dir", d, "--no-reload")
    assert res.stdout == "slurm.conf, cgroup.conf, gres.conf changed; slurmctld: none\n"
    assert site("slurm", "diff", "--conf-dir", d).stdout == ""
    assert site("slurm", "apply", "--conf-dir", d, "--no-reload").stdout == "nothing changed; slurmctld: none\n"


def test_cli_apply_reports_a_controller_that_does_not_answer(site, tmp_path):
    res = site(
        "slurm",
        "apply",
        "--conf-dir",
        tmp_path / "etc-slurm",
        "--reconfigure-command",
        "false",
        "--restart-command",
        "false",
        check=False,
    )
    assert res.returncode == 1
    assert "Error: files written, but slurmctld did not take them: false exited 1\n" in res.stderr
    assert "Traceback" not in res.stderr


def test_cli_apply_to_an_unwritable_dir_is_a_user_error(site, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    res = site("slurm", "apply", "--conf-dir", blocker / "sub", "--no-reload", check=False)
    assert res.returncode == 1 and "cannot write" in res.stderr and "Traceback" not in res.stderr
    assert os.path.isfile(blocker)


def test_cli_prints_the_watch_unit(cli):
    text = cli("slurm", "apply", "--print-unit").stdout
    assert f"ExecStart={cli.exe} slurm apply --watch 5\n" in text and "@PROVISIONER@" not in text
    assert f"Environment=PROVISIONER_SITE={cli.site}\n" in text
    assert f"Environment=PROVISIONER_STATE={cli.state}\n" in text


def test_cli_retire_without_slurm_answering_changes_nothing_unless_forced(site, tmp_path):
    d = tmp_path / "etc-slurm"
    site("slurm", "apply", "--conf-dir", d, "--no-reload")
    before = (site.site / "cluster.yaml").read_text()
    res = site("node", "retire", "c01", "--conf-dir", d, "--no-reload", check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.startswith("Error: cannot drain c01: sinfo")
    assert res.stderr.endswith("(--force retires without draining)\n") and res.stderr.count("\n") == 1
    assert (site.site / "cluster.yaml").read_text() == before
    assert "c01" in json.loads((site.state / "slurm" / "hardware.json").read_text())

    res = site("node", "retire", "c01", "--force", "--conf-dir", d, "--no-reload")
    assert "not drained, Slurm does not answer" in res.stdout
    assert res.stdout.endswith("retired 1 node(s); slurmctld: none\n")
    assert "c01" not in (d / "slurm.conf").read_text() and "c01" not in (site.site / "cluster.yaml").read_text()
    assert "c01" not in json.loads((site.state / "slurm" / "hardware.json").read_text())
    assert oct((site.state / "slurm" / "hardware.json").stat().st_mode & 0o777) == "0o600"
    res = site("node", "retire", "c01", "--force", "--conf-dir", d, "--no-reload", check=False)
    assert res.returncode == 1 and res.stderr == "Error: no such node or profile: c01\n"


def test_cli_accept_takes_the_reported_hardware(site, tmp_path):
    d = tmp_path / "etc-slurm"
    site("slurm", "apply", "--conf-dir", d, "--no-reload")
    db = NodeStateDB(site.state / "nodes.sqlite")
    db.set_facts("c01", facts_for("c01", mem=7000))
    db.close()
    assert "RealMemory=15890" in site("slurm", "render").stdout  # held, not shrunk
    res = site("slurm", "accept", "c01", "--conf-dir", d, "--no-reload")
    assert res.stdout == "accepted the reported hardware of 1 node(s)\nslurm.conf changed; slurmctld: none\n"
    assert (
        "NodeName=c01 CPUs=8 Boards=1 SocketsPerBoard=2 CoresPerSocket=2 ThreadsPerCore=2 RealMemory=7000 "
        in (d / "slurm.conf").read_text()
    )
    for node, said in (
        ("nfs01", "nfs01 is not a Slurm node (no `slurm` overlay)"),
        ("c03", "c03 has reported no hardware yet"),
        ("c02", "cannot accept: c02: facts cpus='lots' is not a whole number"),
        ("zz9", "no such node or profile: zz9"),
    ):
        res = site("slurm", "accept", node, "--conf-dir", d, "--no-reload", check=False)
        assert res.returncode == 1 and said in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_cli_up_hostfile_needs_slurm(site):
    res = site("mpi", "hostfile", "--up", check=False)
    assert res.returncode == 1 and res.stderr.startswith("Error: cannot tell which nodes are up: sinfo")
