import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from labs.net import Lab


@pytest.fixture
def lab():
    """A fresh network lab (namespaces, bridge); everything in it is gone after the test."""
    if os.geteuid() != 0:
        pytest.fail("network tests need root: run tests/run as root")
    with Lab() as lab:
        yield lab


@pytest.fixture
def cli(tmp_path):
    """Run the installed `provisioner` script with a private site and state directory."""
    exe = shutil.which("provisioner") or str(Path(sys.executable).parent / "provisioner")
    site, state = tmp_path / "site", tmp_path / "state"

    def run(*args, input=None, check=True, env=None):
        full_env = {**os.environ, "PROVISIONER_SITE": str(site), "PROVISIONER_STATE": str(state), **(env or {})}
        res = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, input=input, env=full_env)
        if check and res.returncode != 0:
            raise AssertionError(f"provisioner {' '.join(map(str, args))} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
        return res

    run.site = site
    run.state = state
    run.exe = exe
    return run
