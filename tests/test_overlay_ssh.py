"""The ssh overlay against real OpenSSH: a node's sshd serves the host keys and certificates
from its built archive, and a client holding only the cluster-wide ssh_known_hosts from the
same build connects with strict host key checking, by address and by name, no prompts."""

from __future__ import annotations

import contextlib
import gzip
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labs.site import Entry, node, site_yaml
from provisioner.artifacts import layout, overlay_build, secrets
from provisioner.inventory import load_inventory
from provisioner.paths import Site, State


def inventory(*nodes: Entry) -> str:
    return site_yaml(
        nodes,
        {"default": {"image": "debian12", "overlays": ["base", "ssh"]}},
        name="sshlab",
        domain="sshlab.cluster",
        interface=None,
    )


INVENTORY = inventory(node("node[01-02]", "10.99.0.11", ["52:54:00:99:00:11", "52:54:00:99:00:12"]))


def extract(archive: Path, dest: Path) -> Path:
    dest.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], input=gzip.decompress(archive.read_bytes()), cwd=dest, check=True)
    return dest


def wait_port(ns, ip: str, port: int, proc) -> None:
    deadline = time.time() + 20
    while time.time() < deadline and proc.poll() is None:
        if ns.run(["bash", "-c", f"exec 3<>/dev/tcp/{ip}/{port}"], check=False).returncode == 0:
            return
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"nothing listening on {ip}:{port}: {proc.communicate()[0]}")


@pytest.fixture
def built(tmp_path):
    site, state = Site(tmp_path / "site"), State(tmp_path / "state")
    site.root.mkdir()
    site.cluster_yaml.write_text(INVENTORY)
    inv = load_inventory(site.cluster_yaml)
    overlay_build.build(state, site, inv)
    return state, inv


@contextlib.contextmanager
def node01_sshd(lab, node_root: Path, known: Path, tmp_path: Path) -> Iterator[tuple[Any, list[str]]]:
    """sshd on 10.99.0.11 with the host keys and certificates of `node_root` (an extracted
    archive), and a client at 10.99.0.12; yields the client and the ssh command line that
    trusts the cluster through `known` alone."""
    ssh_dir = node_root / "etc" / "ssh"
    userkey = tmp_path / "userkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(userkey)], check=True)
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(Path(f"{userkey}.pub").read_text())
    os.chmod(authorized, 0o600)
    config = tmp_path / "sshd_config"
    # The node's own sshd_config.d drop-in, with paths moved under the extracted tree.
    dropin = (ssh_dir / "sshd_config.d" / "provisioner.conf").read_text().replace("/etc/ssh/", f"{ssh_dir}/")
    config.write_text(
        dropin + f"ListenAddress 10.99.0.11:2222\nPidFile none\nUsePAM no\nStrictModes no\n"
        f"PermitRootLogin prohibit-password\nAuthorizedKeysFile {authorized}\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory

    node = lab.host(ip="10.99.0.11", mac="52:54:00:99:00:11")
    client = lab.host(ip="10.99.0.12", mac="52:54:00:99:00:12")
    sshd = node.popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], text=True)
    try:
        wait_port(client, "10.99.0.11", 2222, sshd)
        yield (
            client,
            [
                "ssh",
                "-p",
                "2222",
                "-i",
                str(userkey),
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                f"GlobalKnownHostsFile={known}",
            ],
        )
    finally:
        sshd.kill()
        sshd.wait()


def test_client_trusts_node_host_certificates_through_known_hosts(built, lab, tmp_path):
    state, _ = built
    node_root = extract(layout.overlay_archive(state, "node01"), tmp_path / "node01")
    peer_root = extract(layout.overlay_archive(state, "node02"), tmp_path / "node02")
    known = peer_root / "etc" / "ssh" / "ssh_known_hosts"  # what node02 was given
    with node01_sshd(lab, node_root, known, tmp_path) as (client, base):
        by_ip = client.run([*base, "root@10.99.0.11", "echo", "ok"], check=False)
        assert by_ip.returncode == 0 and by_ip.stdout.strip() == "ok", by_ip.stderr
        by_name = client.run(
            [*base, "-o", "HostKeyAlias=node01.sshlab.cluster", "root@10.99.0.11", "true"], check=False
        )
        assert by_name.returncode == 0, by_name.stderr
        # a certificate for node01 does not vouch for another name
        wrong = client.run([*base, "-o", "HostKeyAlias=node02", "root@10.99.0.11", "true"], check=False)
        assert wrong.returncode == 255 and "Host key verification failed" in wrong.stderr
        # and without the cluster CA nothing is trusted
        stranger = tmp_path / "other_known_hosts"
        stranger.write_text(
            "@cert-authority * ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOmQ8sS0uJ0SHpWz5Zz9q4uG1w3i7kq9j8nX0zq3pQ2k x\n"
        )
        refused = client.run(
            [*base[:-2], "-o", f"GlobalKnownHostsFile={stranger}", "root@10.99.0.11", "true"], check=False
        )
        assert refused.returncode == 255 and "Host key verification failed" in refused.stderr
    ca = (layout.secrets_dir(state) / f"{secrets.SSH_CA}.pub").read_text().strip()
    assert known.read_text().rstrip().endswith(f"@cert-authority * {ca}")


def test_a_removed_node_is_refused_by_the_others(built, lab, tmp_path):
    """node01 is removed, but a machine kept its keys and certificates (they are still signed
    by the cluster CA and valid): node02, rebuilt after the removal, refuses it."""
    state, _ = built
    node_root = extract(layout.overlay_archive(state, "node01"), tmp_path / "node01")
    site = Site(tmp_path / "site")
    site.cluster_yaml.write_text(inventory(node("node02", "10.99.0.12", "52:54:00:99:00:12")))
    report = overlay_build.build(state, site, load_inventory(site.cluster_yaml))
    assert report.removed == ["node01"] and report.built == ["node02"]
    peer_root = extract(layout.overlay_archive(state, "node02"), tmp_path / "node02")
    etc = peer_root / "etc" / "ssh"
    with node01_sshd(lab, node_root, etc / "ssh_known_hosts", tmp_path) as (client, base):
        trusted = client.run([*base, "root@10.99.0.11", "true"], check=False)  # before the KRL is heeded
        assert trusted.returncode == 0, trusted.stderr
        # node02's client config names the revocation list it was given
        revoked_opt = (etc / "ssh_config.d" / "provisioner.conf").read_text().split("RevokedHostKeys ")[1].split()[0]
        krl = etc / os.path.basename(revoked_opt)
        refused = client.run([*base, "-o", f"RevokedHostKeys={krl}", "root@10.99.0.11", "true"], check=False)
        assert refused.returncode == 255 and "revoked" in refused.stderr.lower(), refused.stderr
