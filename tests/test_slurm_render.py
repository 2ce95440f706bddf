"""slurm.conf, cgroup.conf and gres.conf rendering (pure functions)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import yaml

from labs.site import node, site_yaml
from provisioner.facts import FactsInvalid, hardware, parse_slurmd_c
from provisioner.inventory import parse_text
from provisioner.render.slurm import render


def inventory(g01: Mapping[str, Any] | None = None, default: Mapping[str, Any] | None = None) -> str:
    """Three plain nodes, a GPU node, a storage node out of Slurm; `g01` and `default` add to
    that node's and the default profile's settings."""
    return site_yaml(
        [
            node("c[01-03]", "10.5.0.11"),
            node("g01", "10.5.0.21", profiles=["default", "gpu"], **(g01 or {})),
            node("nfs01", "10.5.0.31", profiles=["storage"]),
        ],
        {
            "default": {"overlays": ["munge", "slurm", "mpi"], "partitions": ["batch"]} | dict(default or {}),
            "gpu": {"features": ["gpu", "a100"], "partitions": ["gpu"]},
            "storage": {"overlays": ["base"]},
        },
        name="hpc",
        domain="hpc.cluster",
        subnet="10.5.0.0/24",
        interface=None,
        slurm={"controller": "head", "options": {"SelectTypeParameters": "CR_Core", "SchedulerType": "sched/backfill"}},
    )


INVENTORY = inventory()

C01 = "NodeName=c01 CPUs=8 Boards=1 SocketsPerBoard=2 CoresPerSocket=2 ThreadsPerCore=2 RealMemory=15890"


def facts_for(name: str, mem: int = 15890) -> dict:
    line = C01.replace("c01", name).replace("RealMemory=15890", f"RealMemory={mem}")
    return {"slurmd_C": line + "\nUpTime=0-01:02:03", "cpus": 8, "memory_mb": mem, "gpus": []}


@pytest.fixture
def inv():
    return parse_text(INVENTORY, "cluster.yaml")


def conf_lines(text: str, prefix: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(prefix)]


def test_global_section_names_the_controller_and_the_plugins(inv):
    conf = render(inv, {}).files["slurm.conf"]
    for line in (
        "ClusterName=hpc",
        "SlurmctldHost=head(10.5.0.1)",
        "SlurmctldParameters=enable_configless",
        "AuthType=auth/munge",
        "ProctrackType=proctrack/cgroup",
        "TaskPlugin=task/cgroup,task/affinity",
        "MpiDefault=pmix",
        "SchedulerType=sched/backfill",
        "SlurmdParameters=config_overrides",
    ):
        assert line in conf.splitlines()
    assert "SelectTypeParameters=CR_Core" in conf.splitlines()  # the inventory's options win
    assert "SelectTypeParameters=CR_Core_Memory" not in conf


def test_node_lines_carry_slurmd_C_word_for_word_then_address_gres_and_features(inv):
    facts = {
        "c01": facts_for("c01"),
        "g01": {
            **facts_for("g01"),
            "gpus": [{"file": "/dev/nvidia0", "type": "a100"}, {"file": "/dev/nvidia1", "type": "a100"}],
        },
    }
    conf = render(inv, facts).files["slurm.conf"]
    assert conf_lines(conf, "NodeName=c01 ") == [f"{C01} NodeAddr=10.5.0.11"]
    assert conf_lines(conf, "NodeName=g01 ") == [
        f"{C01.replace('c01', 'g01')} NodeAddr=10.5.0.21 Gres=gpu:a100:2 Features=gpu,a100"
    ]
    assert "GresTypes=gpu" in conf.splitlines()


def test_nodes_without_facts_are_future_and_in_no_partition(inv):
    conf = render(inv, {"c02": facts_for("c02")}).files["slurm.conf"]
    assert conf_lines(conf, "NodeName=c01 ") == ["NodeName=c01 State=FUTURE NodeAddr=10.5.0.11"]
    assert conf_lines(conf, "PartitionName=") == [
        "PartitionName=batch Nodes=c02 Default=YES MaxTime=INFINITE State=UP",
        "PartitionName=gpu Default=NO MaxTime=INFINITE State=UP",
    ]


def test_only_nodes_with_the_slurm_overlay_are_listed(inv):
    conf = render(inv, {n: facts_for(n) for n in ("c01", "c02", "c03", "g01", "nfs01")}).files["slurm.conf"]
    assert [ln.split()[0] for ln in conf_lines(conf, "NodeName=")] == [
        "NodeName=c01",
        "NodeName=c02",
        "NodeName=c03",
        "NodeName=g01",
    ]
    assert "PartitionName=batch Nodes=c[01-03],g01 Default=YES" in conf


def test_cpus_and_memory_alone_make_a_line(inv):
    conf = render(inv, {"c03": {"cpus": 4, "memory_mb": 2000}}).files["slurm.conf"]
    assert conf_lines(conf, "NodeName=c03 ") == ["NodeName=c03 CPUs=4 RealMemory=2000 NodeAddr=10.5.0.13"]


def test_broken_facts_leave_that_node_waiting_and_say_why(inv):
    cfg = render(
        inv,
        {
            "c01": {"slurmd_C": "garbage"},
            "c02": {"cpus": -3},
            "c03": facts_for("c03"),
            "g01": {**facts_for("g01"), "gpus": ["/dev/nvidia0\nNodeName=evil"]},
        },
    )
    assert len(cfg.problems) == 3
    assert any("c01" in p and "slurmd_C" in p for p in cfg.problems)
    assert any("c02" in p and "cpus" in p for p in cfg.problems)
    assert any("g01" in p and "gpu" in p for p in cfg.problems)
    assert conf_lines(cfg.files["slurm.conf"], "NodeName=c03 CPUs=8")
    assert conf_lines(cfg.files["slurm.conf"], "NodeName=c01 ") == ["NodeName=c01 State=FUTURE NodeAddr=10.5.0.11"]


def test_gres_conf_lists_each_gpu_device(inv):
    facts = {"g01": {**facts_for("g01"), "gpus": ["/dev/nvidia0", {"file": "/dev/nvidia1", "type": "h100"}]}}
    cfg = render(inv, facts)
    assert conf_lines(cfg.files["gres.conf"], "NodeName=") == [
        "NodeName=g01 Name=gpu File=/dev/nvidia0",
        "NodeName=g01 Name=gpu Type=h100 File=/dev/nvidia1",
    ]
    assert "Gres=gpu:1,gpu:h100:1" in cfg.files["slurm.conf"]


def test_cgroup_conf_constrains_cores_memory_devices(inv):
    text = render(inv, {}).files["cgroup.conf"]
    assert {"ConstrainCores=yes", "ConstrainRAMSpace=yes", "ConstrainDevices=yes"} <= set(text.splitlines())


def test_same_inputs_same_bytes(inv):
    facts = {"c01": facts_for("c01"), "g01": facts_for("g01")}
    assert render(inv, facts) == render(inv, dict(reversed(list(facts.items()))))


def test_parse_slurmd_c_and_hardware():
    assert parse_slurmd_c(C01 + "\nUpTime=1-00:00:00\n")["CoresPerSocket"] == "2"
    with pytest.raises(ValueError):
        parse_slurmd_c("CPUs=2")
    assert hardware("x", {}) is None
    assert hardware("x", {"gpus": []}) is None
    with pytest.raises(FactsInvalid, match="x: facts must be a JSON object"):
        hardware("x", ["not", "an", "object"])
    with pytest.raises(FactsInvalid):
        hardware("x", {"cpus": True})
    with pytest.raises(FactsInvalid, match="plain word"):
        hardware("x", {"cpus": 1, "gpus": [{"file": "/dev/nvidia0", "type": "a b"}]})
    with pytest.raises(FactsInvalid, match="/dev path"):
        hardware("x", {"cpus": 1, "gpus": ["/etc/passwd"]})
    with pytest.raises(FactsInvalid, match="RealMemory='1G'"):
        hardware("x", {"slurmd_C": "NodeName=x CPUs=2 RealMemory=1G"})


def test_an_inventory_without_slurm_nodes_is_reported():
    inv = parse_text(inventory(default={"overlays": ["munge"]}), "cluster.yaml")
    assert any("no node carries the `slurm` overlay" in p for p in render(inv, {}).problems)


# -- hardware drift -----------------------------------------------------------------------------------


def held(name: str, mem: int = 15890, gpus: list | None = None) -> dict:
    """The accepted record of `name`'s hardware, as `slurm apply` keeps it."""
    hw = hardware(name, {**facts_for(name, mem), "gpus": gpus or []})
    assert hw is not None
    return hw.as_facts(name)


def test_accepted_hardware_reads_back_as_the_same_hardware():
    gpus = [{"file": "/dev/nvidia0", "type": "a100"}, "/dev/nvidia1"]
    hw = hardware("g01", {**facts_for("g01"), "gpus": gpus})
    assert hw is not None and hardware("g01", hw.as_facts("g01")) == hw
    simple = hardware("c01", {"cpus": 4, "memory_mb": 2000})
    assert simple is not None and hardware("c01", simple.as_facts("c01")) == simple


def test_a_first_report_is_taken_a_different_one_keeps_the_held_line_and_is_named(inv):
    facts = {"c01": facts_for("c01", mem=8000), "c02": facts_for("c02"), "c03": facts_for("c03")}
    cfg = render(inv, facts, {"c01": held("c01"), "c02": held("c02")})
    conf = cfg.files["slurm.conf"]
    assert conf_lines(conf, "NodeName=c01 ") == [f"{C01} NodeAddr=10.5.0.11"]  # not shrunk
    assert cfg.drift == {"c01": "RealMemory 15890 -> 8000"}
    assert conf_lines(conf, "NodeName=c03 ") == [f"{C01.replace('c01', 'c03')} NodeAddr=10.5.0.13"]  # first boot
    assert set(cfg.hardware) == {"c01", "c02", "c03"}
    assert cfg.hardware["c01"] == hardware("c01", held("c01"))


def test_drift_names_every_difference_in_slurm_conf_words(inv):
    fewer = {
        **facts_for("g01"),
        "slurmd_C": C01.replace("c01", "g01")
        .replace("CPUs=8", "CPUs=4")
        .replace("ThreadsPerCore=2", "ThreadsPerCore=1"),
        "gpus": [{"file": "/dev/nvidia0", "type": "a100"}],
    }
    gpus = [{"file": "/dev/nvidia0", "type": "a100"}, {"file": "/dev/nvidia1", "type": "a100"}]
    cfg = render(inv, {"g01": fewer}, {"g01": held("g01", gpus=gpus)})
    assert cfg.drift == {"g01": "CPUs 8 -> 4, ThreadsPerCore 2 -> 1, Gres gpu:a100:2 -> gpu:a100:1"}
    assert "Gres=gpu:a100:2" in cfg.files["slurm.conf"]
    assert conf_lines(cfg.files["gres.conf"], "NodeName=g01") == [
        "NodeName=g01 Name=gpu Type=a100 File=/dev/nvidia0",
        "NodeName=g01 Name=gpu Type=a100 File=/dev/nvidia1",
    ]
    moved = [{"file": "/dev/nvidia2", "type": "a100"}, {"file": "/dev/nvidia1", "type": "a100"}]
    cfg = render(inv, {"g01": {**facts_for("g01"), "gpus": moved}}, {"g01": held("g01", gpus=gpus)})
    assert cfg.drift == {"g01": "Gres /dev/nvidia0,/dev/nvidia1 -> /dev/nvidia2,/dev/nvidia1"}


def test_broken_reports_or_records_never_drain_and_never_lose_the_held_line(inv):
    cfg = render(inv, {"c01": {"cpus": -3}, "c02": facts_for("c02")}, {"c01": held("c01"), "c02": {"cpus": "x"}})
    assert cfg.drift == {}
    assert conf_lines(cfg.files["slurm.conf"], "NodeName=c01 ") == [f"{C01} NodeAddr=10.5.0.11"]
    assert conf_lines(cfg.files["slurm.conf"], "NodeName=c02 CPUs=8")  # the record ignored, the report taken
    assert any("c01" in p and "keeps its accepted hardware" in p for p in cfg.problems)
    assert any("c02" in p and "accepted hardware ignored" in p for p in cfg.problems)


def test_down_after_is_slurmd_timeout(inv):
    assert "SlurmdTimeout=300" in render(inv, {}).files["slurm.conf"].splitlines()
    data = yaml.safe_load(INVENTORY)
    data["cluster"]["slurm"]["down_after"] = 60
    late = parse_text(yaml.safe_dump(data), "cluster.yaml")
    assert "SlurmdTimeout=60" in render(late, {}).files["slurm.conf"].splitlines()


def test_memory_moving_by_a_kernel_update_is_taken_not_drift(inv):
    cfg = render(
        inv,
        {"c01": facts_for("c01", mem=15700), "c02": facts_for("c02", mem=15000)},
        {"c01": held("c01"), "c02": held("c02")},
    )
    assert cfg.drift == {"c02": "RealMemory 15890 -> 15000"}
    assert "RealMemory=15700" in conf_lines(cfg.files["slurm.conf"], "NodeName=c01 ")[0]
    assert cfg.hardware["c01"] == hardware("c01", facts_for("c01", mem=15700))
