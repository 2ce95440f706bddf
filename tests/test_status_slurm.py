"""The `idle` boot stage and the Slurm column come from the real slurmctld: a node in a
namespace reports its facts to `provisioner serve` and starts slurmd (labs/slurm.py); serve's
sinfo poller records `idle`, and `provisioner status` shows it."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from labs.net import Lab
from labs.site import numbered, write_site
from labs.slurm import PROVISIONER, SlurmLab, lab_site

pytestmark = [pytest.mark.netns, pytest.mark.daemons]

INVENTORY = lab_site(numbered(2))


def test_idle_stage_polled_from_slurmctld():
    if os.geteuid() != 0:
        pytest.fail("Slurm lab tests need root")
    work = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="statuslab-"))
    site = work / "site"
    lab = Lab()
    try:
        sl = SlurmLab(lab, write_site(site, INVENTORY), work / "state", work / "lab")
        sl.node("node01")
        sl.start_slurmd("node01")
        sl.report_facts("node01")
        sl.wait_idle(["node01"])
        env = ["env", f"PROVISIONER_SITE={site}", f"PROVISIONER_STATE={work / 'state'}", PROVISIONER]

        def status():
            return {r["node"]: r for r in json.loads(sl.ctl.run([*env, "status", "--json"]).stdout)}

        deadline = time.time() + 30  # serve polls sinfo every 10 s
        while status()["node01"]["stage"] != "idle" and time.time() < deadline:
            time.sleep(0.5)
        rows = status()
        assert rows["node01"]["stage"] == "idle" and rows["node01"]["slurm"] == "idle"
        assert rows["node02"]["stage"] is None and rows["node02"]["slurm"] != "idle"
        steps = json.loads(sl.ctl.run([*env, "status", "node01", "--timeline", "--json"]).stdout)
        assert [s["stage"] for s in steps][-2:] == ["registered", "idle"]
        table = sl.ctl.run([*env, "status"]).stdout.splitlines()
        assert table[1].split()[:2] == ["node01", "idle"] and "idle" in table[1].split()[4:]
        assert "stage=idle" in (work / "lab" / "master" / "serve.out").read_text()
    finally:
        lab.close()
        shutil.rmtree(work, ignore_errors=True)
