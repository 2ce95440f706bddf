"""Users log into a node as themselves, against a real sshd running on the node's built files:
the node's namespace sees its overlay over / (passwd and group with the master's users merged
in, sshd_config.d, the users' keys, the site's user CA), as it does after boot. A key the
master's ~/.ssh/authorized_keys names and a certificate from `provisioner secrets sign-user`
get in; an unsigned key, or a certificate for another user, does not."""

from __future__ import annotations

import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from labs.site import node, site_yaml
from labs.slurm import Host, install_overlay
from provisioner.artifacts import layout, secrets
from provisioner.inventory import load_inventory
from provisioner.paths import Site, State

NODE_IP, CLIENT_IP, PORT = "10.99.0.11", "10.99.0.12", 2222
# Ids the host's own tables do not use: the node's "image" here is the host's root.
PASSWD = (
    "root:x:0:0:root:/root:/bin/bash\nalice:x:4242:4242:Alice:/home/alice:/bin/sh\nbob:x:4243:4243::/home/bob:/bin/sh\n"
)
GROUP = "root:x:0:\nalice:x:4242:\nbob:x:4243:\nusrresearch:x:4300:alice\n"


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return path


@pytest.fixture
def usr_node(lab, tmp_path, cli):
    """node01's sshd in its namespace (10.99.0.11) and a client namespace; the keys."""
    keys = {name: keygen(tmp_path / name) for name in ("usr_authorized", "usr_certified", "usr_stranger")}
    master = tmp_path / "master"
    (master / "etc").mkdir(parents=True)
    (master / "etc/passwd").write_text(PASSWD)
    (master / "etc/group").write_text(GROUP)
    (master / "home/alice/.ssh").mkdir(parents=True)
    (master / "home/alice/.ssh/authorized_keys").write_text(Path(f"{keys['usr_authorized']}.pub").read_text())
    site, state = Site(cli.site), State(cli.state)
    site.root.mkdir()
    site.cluster_yaml.write_text(
        site_yaml(
            [node("node01", NODE_IP, "52:54:00:99:00:11")],
            {"default": {"overlays": ["ssh", "ssh-user-ca", "users"]}},
            name="usrlab",
            users={"min_id": 4000, "max_id": 4999, "root": str(master)},
        )
    )
    cli("overlay", "build")
    # Not under /tmp: the node's namespace mounts a private /tmp over it.
    work = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="usr-ssh-"))
    sshd = None
    try:
        install_overlay(state, site, load_inventory(site.cluster_yaml), "node01", work / "root")
        host = Host(lab.host(ip=NODE_IP, mac="52:54:00:99:00:11"), "node01", work / "node01", work / "root")
        host.run(["mkdir", "-p", "-m", "0755", "/run/sshd"])  # sshd's privilege-separation directory
        sshd = host.popen(["/usr/sbin/sshd", "-D", "-e", "-p", str(PORT), "-o", "UsePAM=no"], "sshd.log")
        client = lab.host(ip=CLIENT_IP, mac="52:54:00:99:00:12")
        deadline = time.time() + 20
        while client.run(["bash", "-c", f"exec 3<>/dev/tcp/{NODE_IP}/{PORT}"], check=False).returncode != 0:
            assert time.time() < deadline and sshd.poll() is None, (work / "node01/sshd.log").read_text()
            time.sleep(0.1)
        yield client, keys, state, work / "node01/sshd.log"
    finally:
        if sshd is not None:
            sshd.kill()
            sshd.wait()
        lab.close()  # the node's namespace holder first, then its files
        shutil.rmtree(work, ignore_errors=True)


def ssh(client, key: Path, user: str, cert: Path | None = None) -> subprocess.CompletedProcess:
    opts = ["-F", "/dev/null", "-p", str(PORT), "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
    opts += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10"]
    if cert is not None:
        opts += ["-o", f"CertificateFile={cert}"]
    return client.run(["ssh", *opts, f"{user}@{NODE_IP}", "id"], check=False)


def test_user_certificates_from_the_site_ca_and_the_masters_keys_log_in(usr_node, cli):
    client, keys, state, log = usr_node
    ca = layout.secrets_dir(state) / secrets.SSH_USER_CA
    assert stat.S_IMODE(ca.stat().st_mode) == 0o600 and stat.S_IMODE(ca.parent.stat().st_mode) == 0o700

    cert = Path(f"{keys['usr_certified']}-cert.pub")
    cli("secrets", "sign-user", "alice", f"{keys['usr_certified']}.pub", "--validity", "-5m:+1h", "-o", cert)
    shown = subprocess.run(["ssh-keygen", "-L", "-f", str(cert)], capture_output=True, text=True, check=True).stdout
    assert "Principals: \n                alice\n" in shown, shown

    alice = "uid=4242(alice) gid=4242(alice) groups=4242(alice),4300(usrresearch)"
    res = ssh(client, keys["usr_certified"], "alice", cert)
    assert res.returncode == 0 and res.stdout.strip() == alice, res.stderr + log.read_text()[-2000:]
    res = ssh(client, keys["usr_authorized"], "alice")  # from the master's ~alice/.ssh/authorized_keys
    assert res.returncode == 0 and res.stdout.strip() == alice, res.stderr

    for key, user, why in (
        ("usr_stranger", "alice", "an unsigned, unlisted key"),
        ("usr_certified", "bob", "alice's certificate used for bob"),
    ):
        with_cert = cert if key == "usr_certified" else None
        res = ssh(client, keys[key], user, with_cert)
        assert res.returncode == 255 and "Permission denied" in res.stderr, f"{why}: {res.stdout}{res.stderr}"
    # The certificate alone (without its key) proves nothing either.
    res = ssh(client, keys["usr_stranger"], "alice", cert)
    assert res.returncode == 255, res.stdout


def test_sign_user_refuses_what_is_not_a_public_key(tmp_path, cli):
    cli.site.mkdir()
    cli.site.joinpath("cluster.yaml").write_text(site_yaml([], name="usrlab"))
    key = keygen(tmp_path / "usr_key")
    for arg, message in (
        (str(key), "not an OpenSSH public key"),  # the private key, by mistake
        (str(tmp_path / "nothing.pub"), "No such file or directory"),
    ):
        res = cli("secrets", "sign-user", "alice", arg, check=False)
        assert res.returncode != 0 and message in res.stderr, res.stderr
    res = cli("secrets", "sign-user", "Alice Smith", f"{key}.pub", check=False)
    assert res.returncode == 1 and "is not a user name" in res.stderr, res.stderr
    res = cli("secrets", "sign-user", "alice", f"{key}.pub", "--validity", "forever", check=False)
    assert res.returncode == 1 and "ssh-keygen" in res.stderr, res.stderr
