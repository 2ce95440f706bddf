import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Cli:
    """The installed `provisioner` script with a private site and state directory."""

    exe: str
    site: Path
    state: Path

    def __call__(
        self, *args: object, input: str | None = None, check: bool = True, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        full_env = {
            **os.environ,
            "PROVISIONER_SITE": str(self.site),
            "PROVISIONER_STATE": str(self.state),
            **(env or {}),
        }
        res = subprocess.run([self.exe, *map(str, args)], capture_output=True, text=True, input=input, env=full_env)
        if check and res.returncode != 0:
            raise AssertionError(
                f"provisioner {' '.join(map(str, args))} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
            )
        return res


@pytest.fixture
def cli(tmp_path):
    """Run the installed `provisioner` script with a private site and state directory."""
    exe = shutil.which("provisioner") or str(Path(sys.executable).parent / "provisioner")
    return Cli(exe, tmp_path / "site", tmp_path / "state")
