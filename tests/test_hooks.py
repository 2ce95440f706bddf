"""The initramfs hook scripts: syntax, shellcheck, and the runtime's HTTP side (privileged
source port, JSON reports, clear errors) run by busybox against a real server."""

import json
import subprocess

import pytest

from labs.boot import HTTP_PORT, BootLab
from provisioner.resources import INITCPIO

SH_SCRIPTS = ["provisioner.sh", "init", "udhcpc.script", "hooks/provisioner"]


@pytest.mark.parametrize("script", SH_SCRIPTS)
def test_sh_syntax(script):
    assert subprocess.run(["sh", "-n", str(INITCPIO / script)]).returncode == 0
    assert subprocess.run(["busybox", "sh", "-n", str(INITCPIO / script)]).returncode == 0


def test_install_hook_bash_syntax():
    assert subprocess.run(["bash", "-n", str(INITCPIO / "install" / "provisioner")]).returncode == 0


def test_shellcheck_clean():
    files = [*SH_SCRIPTS, "install/provisioner"]
    res = subprocess.run(["shellcheck", "-x", *files], cwd=INITCPIO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


@pytest.mark.netns
def test_runtime_http_uses_privileged_port_and_restores_sysctls(lab, tmp_path):
    node = lab.host(ip="10.99.0.21")
    with BootLab(lab, tmp_path / "lab") as bl:
        bl.start_http()
        bl.put_overlay("n1", {"etc/hostname": b"n1\n"})
        base = f"http://{lab.server_ip}:{HTTP_PORT}"
        run = tmp_path / "run"
        run.mkdir()
        script = f"""
            . {INITCPIO}/provisioner.sh
            PV_RUN={run} PV_REPORT={base}/api/v1 PV_NETUP=1
            pv_report failed 'cannot "mount" \\ it'
            pv_http {base}/overlays/n1.cpio.gz {run}/got && echo got-ok
            out=$(pv_http {base}/overlays/nobody.cpio.gz {run}/none) || echo "missing: $out"
            cat /proc/sys/net/ipv4/ip_local_port_range /proc/sys/net/ipv4/ip_unprivileged_port_start
        """
        before = node.run(["cat", "/proc/sys/net/ipv4/ip_local_port_range"]).stdout
        res = node.run(["busybox", "sh", "-c", script])
        reports = bl.reports()
    lines = res.stdout.splitlines()
    assert "got-ok" in lines
    assert any(ln.startswith("missing: ") and "404" in ln for ln in lines), res.stdout
    assert lines[-2:] == [before.strip(), "1024"]
    assert (run / "got").read_bytes() == (bl.web / "overlays" / "n1.cpio.gz").read_bytes()
    assert reports[0]["body"] == {"stage": "failed", "detail": 'cannot "mount" \\ it'}
    assert [r["method"] for r in reports] == ["POST", "GET", "GET"]
    assert all(r["port"] < 1024 for r in reports), reports
    json.dumps(reports)
