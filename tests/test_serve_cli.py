"""`provisioner serve` command line: clear errors for bad services and busy ports, the
systemd unit shipped as package data."""

import configparser
import subprocess
from importlib import resources

import pytest

from labs.serve import NODES, SERVER_IP, Serve, curl, write_site, write_state


def test_unknown_service_is_a_clear_error(cli):
    write_site(cli.site)
    res = cli("serve", "--services", "http,ftp", check=False)
    assert res.returncode == 1 and "unknown service(s) ftp" in res.stderr and "Traceback" not in res.stderr
    res = cli("serve", "--services", ",", check=False)
    assert res.returncode == 1 and "(none given)" in res.stderr


def test_no_inventory_is_a_clear_error(cli):
    res = cli("serve", check=False)
    assert res.returncode == 1 and "no inventory" in res.stderr


def test_systemd_unit_ships_and_prints_with_this_install(cli):
    text = resources.files("provisioner").joinpath("systemd/provisioner.service").read_text()
    assert "@PROVISIONER@ serve" in text
    printed = cli("serve", "--print-unit").stdout
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    # Keys keep their case, as configparser's documentation says to do; typeshed declares the hook
    # a method, so assigning it is flagged.
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(printed)
    assert unit["Service"]["ExecStart"] == f"{cli.exe} serve" or unit["Service"]["ExecStart"].endswith(
        "/provisioner serve"
    )
    assert unit["Service"]["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    path = cli.site.parent / "provisioner.service"
    path.write_text(printed)
    check = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
    assert check.returncode == 0 and "provisioner.service" not in check.stderr, check.stderr


def test_printed_unit_names_the_site_and_state_it_was_given(cli, tmp_path, monkeypatch):
    """--site/--state (relative ones made absolute) or else the environment end up in the unit."""
    monkeypatch.chdir(tmp_path)
    flags = cli("--site", "mysite", "--state", "/srv/pv-state", "serve", "--print-unit").stdout
    assert f"Environment=PROVISIONER_SITE={tmp_path / 'mysite'}\n" in flags
    assert "Environment=PROVISIONER_STATE=/srv/pv-state\n" in flags
    from_env = cli("serve", "--print-unit").stdout
    assert f"Environment=PROVISIONER_SITE={cli.site}\n" in from_env
    assert f"Environment=PROVISIONER_STATE={cli.state}\n" in from_env
    assert "@" not in flags  # every placeholder filled in


@pytest.mark.netns
def test_busy_port_exits_1_with_a_log_line(lab, cli):
    write_site(cli.site)
    write_state(cli.state)
    with Serve(lab, cli) as first:
        res = lab.server.run(
            [cli.exe, "serve", "--services", "http", "--listen", SERVER_IP, "--http-port", str(first.port)],
            check=False,
            env={"PROVISIONER_SITE": str(cli.site), "PROVISIONER_STATE": str(cli.state)},
        )
        assert res.returncode == 1
        assert "service failed" in res.stderr and "service=http" in res.stderr
        n1 = lab.host(ip=NODES["node01"][0])
        assert curl(n1, "-o", "/dev/null", "-w", "%{http_code}", f"{first.url}/boot/ipxe").stdout == "200"


@pytest.mark.netns
def test_busy_tftp_port_is_a_clear_error(lab, cli):
    write_site(cli.site)
    write_state(cli.state)
    with lab.server.popen(
        [
            "python3",
            "-c",
            f"import socket,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.bind(('{SERVER_IP}', 6970)); print('bound', flush=True); time.sleep(60)",
        ],
        text=True,
    ) as holder:
        assert holder.stdout.readline().strip() == "bound"
        res = lab.server.run(
            [cli.exe, "serve", "--services", "tftp", "--listen", SERVER_IP, "--tftp-port", "6970"],
            check=False,
            env={"PROVISIONER_SITE": str(cli.site), "PROVISIONER_STATE": str(cli.state)},
        )
        holder.kill()
    assert res.returncode == 1 and "cannot start tftp" in res.stderr and "Traceback" not in res.stderr


def test_missing_token_file_is_a_clear_error(cli, tmp_path):
    write_site(cli.site)
    res = cli("serve", "--services", "http", "--token-file", tmp_path / "nope", check=False)
    assert res.returncode == 1 and "cannot read token file" in res.stderr and "Traceback" not in res.stderr
