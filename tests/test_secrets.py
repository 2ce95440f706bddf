"""Cluster secrets: made once with real OpenSSH tools, kept private, regenerated on demand."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from labs.site import node, site_yaml
from provisioner.artifacts import layout, secrets
from provisioner.inventory import parse_text
from provisioner.paths import State


def inventory(ip: str = "10.88.0.11", nodes: str = "n[1-2]") -> str:
    """n1 and n2 from `ip` on, with the overlays that need secrets."""
    macs = ["52:54:00:88:00:01", "52:54:00:88:00:02"]
    return site_yaml(
        [node(nodes, ip, macs if nodes == "n[1-2]" else macs[1])],
        {"default": {"image": "debian12", "overlays": ["base", "ssh", "munge"]}},
        name="sec",
        domain="sec.cluster",
        subnet="10.88.0.0/24",
        interface=None,
    )


@pytest.fixture
def inv():
    return parse_text(inventory(), "cluster.yaml")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_generated_once_with_private_modes_and_real_openssh_keys(tmp_path, inv):
    state = State(tmp_path / "state")
    made = secrets.ensure_secrets(state, inv)
    assert set(made) == {"munge.key", "ssh_host_ca", "ssh_revoked.krl", "ssh/n1", "ssh/n2"}
    root = layout.secrets_dir(state)
    assert mode(root) == 0o700
    for p in root.rglob("*"):
        assert mode(p) == (0o700 if p.is_dir() else 0o600), p
    assert len(secrets.munge_key(state)) == 1024
    d = root / "ssh" / "n1"
    for ktype, name in (("ed25519", "ED25519"), ("ecdsa", "ECDSA"), ("rsa", "RSA")):
        key = d / f"ssh_host_{ktype}_key"
        assert key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        derived = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, check=True)
        assert derived.stdout.split()[:2] == (d / f"ssh_host_{ktype}_key.pub").read_text().split()[:2]
        listing = subprocess.run(["ssh-keygen", "-l", "-f", str(key)], capture_output=True, text=True, check=True)
        assert f"({name})" in listing.stdout
        cert = subprocess.run(
            ["ssh-keygen", "-L", "-f", str(d / f"ssh_host_{ktype}_key-cert.pub")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "host certificate" in cert
        for principal in ("n1", "n1.sec.cluster", "10.88.0.11"):
            assert principal in cert
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert secrets.ensure_secrets(state, inv) == []
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_certificates_verify_against_the_cluster_ca(tmp_path, inv):
    state = State(tmp_path / "state")
    secrets.ensure_secrets(state, inv)
    root = layout.secrets_dir(state)
    cert = root / "ssh" / "n2" / "ssh_host_ed25519_key-cert.pub"
    # ssh-keygen -L shows the signing CA's fingerprint: it must be the cluster CA's.
    ca_fp = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(root / "ssh_host_ca.pub")], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    shown = subprocess.run(["ssh-keygen", "-L", "-f", str(cert)], capture_output=True, text=True, check=True).stdout
    assert ca_fp in shown


def test_changed_address_resigns_certificates_but_keeps_keys(tmp_path, inv):
    state = State(tmp_path / "state")
    secrets.ensure_secrets(state, inv)
    d = layout.secrets_dir(state) / "ssh" / "n1"
    key = (d / "ssh_host_ed25519_key").read_bytes()
    moved = parse_text(inventory("10.88.0.51"), "cluster.yaml")
    assert "ssh/n1" in secrets.ensure_secrets(state, moved)
    assert (d / "ssh_host_ed25519_key").read_bytes() == key
    cert = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(d / "ssh_host_ed25519_key-cert.pub")], capture_output=True, text=True, check=True
    ).stdout
    assert "10.88.0.51" in cert


def test_regenerate_replaces_only_what_was_asked(tmp_path, inv):
    state = State(tmp_path / "state")
    secrets.ensure_secrets(state, inv)
    root = layout.secrets_dir(state)
    munge = secrets.munge_key(state)
    n1 = (root / "ssh/n1/ssh_host_rsa_key").read_bytes()
    n2 = (root / "ssh/n2/ssh_host_rsa_key").read_bytes()
    old = tmp_path / "n1-old"
    subprocess.run(["cp", "-a", str(root / "ssh" / "n1"), str(old)], check=True)
    secrets.regenerate_ssh(state, inv, [inv.node("n1")])
    assert (root / "ssh/n1/ssh_host_rsa_key").read_bytes() != n1
    assert (root / "ssh/n2/ssh_host_rsa_key").read_bytes() == n2
    # the replaced keys (and so their still-unexpired certificates) are revoked, the new ones not
    krl = root / secrets.SSH_KRL
    for pub in [*old.glob("*.pub")]:
        q = subprocess.run(["ssh-keygen", "-Q", "-f", str(krl), str(pub)], capture_output=True, text=True)
        assert q.returncode == 1 and "REVOKED" in q.stdout, q.stdout
    for pub in [*(root / "ssh" / "n1").glob("*.pub"), *(root / "ssh" / "n2").glob("*.pub")]:
        q = subprocess.run(["ssh-keygen", "-Q", "-f", str(krl), str(pub)], capture_output=True, text=True)
        assert q.returncode == 0, q.stdout
    assert secrets.munge_key(state) == munge
    secrets.regenerate_munge(state)
    assert secrets.munge_key(state) != munge and len(secrets.munge_key(state)) == 1024
    assert not [p for p in (root / "ssh").iterdir() if p.name.startswith(".")]


def test_concurrent_first_use_agrees_on_one_munge_key(tmp_path):
    state = State(tmp_path / "state")
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: secrets.munge_key(state), range(16)))
    assert len(keys) == 1


def test_read_secret_refuses_paths_outside_the_secrets_folder(tmp_path):
    state = State(tmp_path / "state")
    secrets.munge_key(state)
    (tmp_path / "state" / "outside").write_text("nope")
    for bad in ("../outside", "/etc/passwd", "", ".", "ssh/../../outside"):
        with pytest.raises(secrets.SecretMissing):
            secrets.read_secret(state, bad)
    with pytest.raises(secrets.SecretMissing, match="does not exist"):
        secrets.read_secret(state, "ssh/nobody/key")
    assert secrets.read_secret(state, "munge.key") == secrets.munge_key(state)


def test_listing_masks_and_reveal_shows(tmp_path, inv):
    state = State(tmp_path / "state")
    secrets.ensure_secrets(state, inv)
    infos = {s.path: s for s in secrets.list_secrets(state, "n1")}
    assert "ssh/n2/ssh_host_rsa_key" not in infos and "ssh/n1/ssh_host_rsa_key" in infos
    munge = infos["munge.key"]
    assert munge.size == 1024 and munge.mode == "0600"
    assert infos["ssh/n1/ssh_host_ed25519_key.pub"].fingerprint.startswith("SHA256:")
    assert "PRIVATE KEY" in infos["ssh/n1/ssh_host_ed25519_key"].reveal(state)


def validity(cert) -> tuple[str, str]:
    shown = subprocess.run(["ssh-keygen", "-L", "-f", str(cert)], capture_output=True, text=True, check=True).stdout
    line = next(x for x in shown.splitlines() if x.strip().startswith("Valid:"))
    assert "forever" not in line, line
    start, _, end = line.split("from ", 1)[1].partition(" to ")
    return start, end.strip()


def test_certificates_have_a_bounded_validity_and_are_renewed_near_its_end(tmp_path, inv):
    state = State(tmp_path / "state")
    secrets.ensure_secrets(state, inv, validity=20)
    signed = time.time()  # every certificate is signed by now (n2's later than n1's under load)
    cert = layout.secrets_dir(state) / "ssh" / "n1" / "ssh_host_ed25519_key-cert.pub"
    first = cert.read_bytes()
    _, end = validity(cert)
    assert time.mktime(time.strptime(end, "%Y-%m-%dT%H:%M:%S")) - time.time() < 22
    before = secrets.stamp(state, "n1")
    assert secrets.ensure_secrets(state, inv, validity=20) == []  # most of the 20 s is left
    time.sleep(max(0.0, signed + 15.5 - time.time()))  # less than a quarter left for both
    assert secrets.stamp(state, "n1") != before  # the stamp says so (a build's digest changes)
    assert secrets.ensure_secrets(state, inv) == ["ssh/n1", "ssh/n2"]
    assert cert.read_bytes() != first
    _, end = validity(cert)
    days = (time.mktime(time.strptime(end, "%Y-%m-%dT%H:%M:%S")) - time.time()) / 86400
    assert 363 < days <= 364  # the default: 52 weeks
    assert secrets.ensure_secrets(state, inv) == []


def test_forgetting_a_node_revokes_its_host_keys_and_deletes_its_secrets(tmp_path, inv):
    state = State(tmp_path / "state")
    secrets.ensure_secrets(state, inv)
    secrets.ensure_credentials(state, inv.nodes)
    root = layout.secrets_dir(state)
    kept = tmp_path / "n1-keys"
    subprocess.run(["cp", "-a", str(root / "ssh" / "n1"), str(kept)], check=True)
    krl = root / secrets.SSH_KRL
    assert krl.exists() and mode(krl) == 0o600
    smaller = parse_text(inventory("10.88.0.12", "n2"), "cluster.yaml")
    assert secrets.departed(state, smaller) == {"n1"}
    assert secrets.forget(state, secrets.departed(state, smaller)) == ["n1"]
    assert not any("n1" in p.relative_to(root).as_posix() for p in root.rglob("*"))
    assert secrets.departed(state, smaller) == set()
    for pub in [*kept.glob("*.pub")]:
        q = subprocess.run(["ssh-keygen", "-Q", "-f", str(krl), str(pub)], capture_output=True, text=True)
        assert q.returncode == 1 and "REVOKED" in q.stdout, q.stdout  # the keys and their certificates
    for pub in (root / "ssh" / "n2").glob("*.pub"):
        q = subprocess.run(["ssh-keygen", "-Q", "-f", str(krl), str(pub)], capture_output=True, text=True)
        assert q.returncode == 0 and "ok" in q.stdout, q.stdout
