"""Rendering of the stock overlays and boot configs: golden files, precedence of site and
per-node files, owners from the image, symlinks, and errors that name template, line and node.

Goldens live in tests/golden/; after an intended change, regenerate them with
UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_render_overlays.py
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from labs.site import Entry, node, node_of, site_yaml
from provisioner.artifacts import layout, secrets
from provisioner.artifacts.overlay_build import Build
from provisioner.inventory import Inventory, load_inventory
from provisioner.paths import Site, State
from provisioner.render.context import RenderError

GOLDEN = Path(__file__).parent / "golden"


def inventory(
    gpu01: Mapping[str, Any] | None = None,
    default: Mapping[str, Any] | None = None,
    more: Sequence[Entry] = (),
    subnet: str = "10.77.0.0/24",
) -> str:
    """The golden cluster: node01-03 and gpu01 (its own kernel_args and vars); `gpu01` and
    `default` change that node's and the default profile's settings (None unsets one), `more`
    adds nodes before gpu01."""
    gpu = {"kernel_args": ["quiet"], "vars": {"debug": True}} | dict(gpu01 or {})
    profile = {"image": "debian12", "kernel_args": ["console=ttyS0"], "overlays": ["base", "ssh", "munge"]}
    return site_yaml(
        [
            node("node[01-03]", "10.77.0.11", [f"52:54:00:00:00:0{i}" for i in (1, 2, 3)]),
            *more,
            node("gpu01", gpu.pop("ip", "10.77.0.21"), "52:54:00:00:01:01", **gpu),
        ],
        {"default": profile | dict(default or {})},
        name="gold",
        domain="gold.cluster",
        subnet=subnet,
        interface=None,
        network={"master": "10.77.0.1", "gateway": "10.77.0.1", "dns": ["10.77.0.1", "10.77.0.2"]},
        nfs={
            "exports": [{"path": "/home", "access": "rw"}, {"path": "/opt/apps", "access": "ro", "options": "noatime"}]
        },
        time_servers=["10.77.0.1"],
    )


INVENTORY = inventory()


def plant_secrets(state: State, inv) -> None:
    """Fixed stand-ins for every secret, so goldens are stable and no ssh-keygen runs."""
    root = layout.secrets_dir(state)
    root.mkdir(parents=True, mode=0o700, exist_ok=True)
    (root / secrets.MUNGE_KEY).write_bytes(bytes(range(256)) * 4)
    (root / secrets.SSH_CA).write_text("CA PRIVATE\n")
    (root / f"{secrets.SSH_CA}.pub").write_text("ssh-ed25519 AAAAgoldenCA gold host CA\n")
    (root / secrets.SSH_KRL).write_bytes(b"golden KRL\n")
    for n in inv.nodes:
        d = root / secrets.node_ssh_dir(n.name)
        d.mkdir(parents=True, exist_ok=True)
        for t in secrets.SSH_KEY_TYPES:
            base = f"ssh_host_{t}_key"
            (d / base).write_text(f"PRIVATE {t} {n.name}\n")
            (d / f"{base}.pub").write_text(f"ssh-{t} AAAA{t}{n.name} root@{n.name}\n")
            (d / f"{base}-cert.pub").write_text(f"ssh-{t}-cert AAAA{t}{n.name}\n")
        (d / secrets.signed_for(inv.cluster, n)).write_text(secrets.principals(inv.cluster, n))
        (d / f"valid.{int(time.time())}.{int(time.time()) + secrets.CERT_VALIDITY}").write_text("")
    (root / secrets.CREDENTIALS).mkdir(mode=0o700, exist_ok=True)
    for n in inv.nodes:
        (root / secrets.node_credential(n.name)).write_text(f"credential of {n.name}")


def make_site(tmp_path: Path, text: str = INVENTORY) -> tuple[Site, State, Inventory]:
    site, state = Site(tmp_path / "site"), State(tmp_path / "state")
    site.root.mkdir(parents=True, exist_ok=True)
    site.cluster_yaml.write_text(text)
    inv = load_inventory(site.cluster_yaml)
    plant_secrets(state, inv)
    return site, state, inv


def fake_image(
    state: State, image: str = "debian12", munge_ids: tuple[int, int] = (777, 778), version: str = "v1"
) -> None:
    """A version of `image` with just its user tables, made current as the image builder does."""
    etc = layout.image_rootfs(state, image, version) / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text(f"root:x:0:0:root:/root:/bin/sh\nmunge:x:{munge_ids[0]}:{munge_ids[1]}::/:/bin/false\n")
    (etc / "group").write_text(f"root:x:0:\nmunge:x:{munge_ids[1]}:\n")
    link = layout.image_dir(state, image)
    link.unlink(missing_ok=True)
    link.symlink_to(f"versions/{version}")


def by_path(entries):
    return {e.path: e for e in entries}


def check_golden(name: str, data: bytes) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert path.exists(), f"no golden file {path} (run with UPDATE_GOLDEN=1)"
    assert data.decode() == path.read_text(), f"{name} differs from its golden file"


GOLDEN_FILES = [
    "etc/hostname",
    "etc/hosts",
    "etc/resolv.conf",
    "etc/fstab",
    "etc/systemd/network/10-provisioner.network",
    "etc/systemd/timesyncd.conf.d/provisioner.conf",
    "etc/ssh/ssh_known_hosts",
    "etc/ssh/sshd_config.d/provisioner.conf",
]


@pytest.mark.parametrize("node", ["node02", "gpu01"])
def test_stock_overlays_match_golden_files(tmp_path, node):
    site, state, inv = make_site(tmp_path)
    fake_image(state)
    entries = by_path(Build(state, site, inv).render(node_of(inv, node))[0])
    for rel in GOLDEN_FILES:
        check_golden(f"{node}/{rel}", entries[rel].data)


@pytest.mark.parametrize("node", ["node02", "gpu01"])
def test_boot_configs_match_golden_files(tmp_path, node):
    site, state, inv = make_site(tmp_path)
    fake_image(state, version="v3")  # kernel, initramfs and root all name the current version
    boot = Build(state, site, inv).render(node_of(inv, node))[1]
    assert boot is not None
    for kind, text in boot.items():
        check_golden(f"boot/{node}.{kind}", text.encode())


def test_modes_owners_symlinks_and_secrets(tmp_path):
    site, state, inv = make_site(tmp_path)
    fake_image(state)
    e = by_path(Build(state, site, inv).render(node_of(inv, "node01"))[0])
    key = e["etc/munge/munge.key"]
    assert (key.perm, key.uid, key.gid, key.owner) == (0o400, 777, 778, "munge")
    assert key.data == bytes(range(256)) * 4 and key.secret
    assert e["etc/ssh/ssh_host_ed25519_key"].perm == 0o600
    assert e["etc/ssh/ssh_host_ed25519_key"].data == b"PRIVATE ed25519 node01\n"
    assert e["etc/ssh/ssh_host_ed25519_key.pub"].perm == 0o644
    assert e["etc/machine-id"].data == b"" and e["etc/machine-id"].perm == 0o444
    link = e["etc/systemd/system/multi-user.target.wants/systemd-networkd.service"]
    assert link.kind == "symlink" and link.data == b"/lib/systemd/system/systemd-networkd.service"
    assert e["etc"].kind == "dir" and e["etc"].perm == 0o755
    paths = list(e)
    assert paths == sorted(paths)


def test_owner_ids_come_from_the_nodes_image(tmp_path):
    site, state, inv = make_site(tmp_path)
    fake_image(state, munge_ids=(4242, 4343))
    key = by_path(Build(state, site, inv).render(node_of(inv, "node01"))[0])["etc/munge/munge.key"]
    assert (key.uid, key.gid) == (4242, 4343)


def test_site_overlay_overrides_stock_file_by_file_and_node_files_win(tmp_path):
    site, state, inv = make_site(tmp_path)
    fake_image(state)
    (site.overlays / "base" / "etc").mkdir(parents=True)
    (site.overlays / "base" / "etc" / "resolv.conf").write_text("nameserver 192.0.2.53\n")
    (site.overlays / "base" / "etc" / "motd.j2").write_text("Welcome to {{ node.name }} of {{ cluster.name }}\n")
    (site.overlays / "base" / "_meta.yaml").write_text('etc/motd: {mode: "0640", group: munge}\n')
    own = site.node_overrides("node03") / "etc"
    own.mkdir(parents=True)
    (own / "motd").write_text("node03 is reserved\n")
    b = Build(state, site, inv)
    n1 = by_path(b.render(node_of(inv, "node01"))[0])
    n3 = by_path(b.render(node_of(inv, "node03"))[0])
    assert n1["etc/resolv.conf"].data == b"nameserver 192.0.2.53\n"
    assert n1["etc/hosts"].data == n3["etc/hosts"].data and b"node03" in n1["etc/hosts"].data  # stock kept
    assert n1["etc/motd"].data == b"Welcome to node01 of gold\n"
    assert (n1["etc/motd"].perm, n1["etc/motd"].gid) == (0o640, 778)
    assert n3["etc/motd"].data == b"node03 is reserved\n"
    assert (n3["etc/motd"].perm, n3["etc/motd"].gid) == (0o640, 778)  # the path's meta still applies


def test_undefined_variable_names_template_line_and_node(tmp_path):
    site, state, inv = make_site(tmp_path)
    (site.overlays / "base" / "etc").mkdir(parents=True)
    (site.overlays / "base" / "etc" / "issue.j2").write_text("line one\n{{ node.name }}\n{{ node.vars.rack }}\n")
    with pytest.raises(RenderError) as err:
        Build(state, site, inv).render(node_of(inv, "node02"))
    e = err.value
    assert (e.template, e.line, e.node) == ("base:etc/issue.j2", 3, "node02")
    assert "rack" in str(e) and "base:etc/issue.j2:3" in str(e) and "node02" in str(e)


def test_syntax_error_and_unknown_owner_and_missing_overlay(tmp_path):
    site, state, inv = make_site(tmp_path)
    (site.overlays / "base" / "etc").mkdir(parents=True)
    (site.overlays / "base" / "etc" / "bad.j2").write_text("ok\n{% if %}\n")
    with pytest.raises(RenderError, match=r"base:etc/bad.j2:2: syntax error"):
        Build(state, site, inv)
    (site.overlays / "base" / "etc" / "bad.j2").unlink()
    (site.overlays / "base" / "_meta.yaml").write_text("etc/hostname: {owner: nobody-here}\n")
    with pytest.raises(RenderError, match="no user 'nobody-here'"):
        Build(state, site, inv).render(node_of(inv, "node01"))
    text = inventory(default={"overlays": ["base", "nosuch"]})
    site.cluster_yaml.write_text(text)
    with pytest.raises(RenderError, match="no overlay 'nosuch'"):
        Build(state, site, load_inventory(site.cluster_yaml))


def test_missing_secret_is_a_clear_error(tmp_path):
    site, state, inv = make_site(tmp_path)
    os.unlink(layout.secrets_dir(state) / "munge.key")
    with pytest.raises(RenderError, match=r"munge\.key.*does not exist"):
        Build(state, site, inv).render(node_of(inv, "node01"))


def test_site_pxe_template_replaces_the_stock_one(tmp_path):
    site, state, inv = make_site(tmp_path)
    (site.root / "pxe").mkdir()
    (site.root / "pxe" / "boot.ipxe.j2").write_text(
        "#!ipxe\necho {{ node.name }} {{ node.mac | mac_bare }}\nkernel http://x/vmlinuz {{ cmdline }}\nboot\n"
    )
    boot = Build(state, site, inv).render(node_of(inv, "node03"))[1]
    assert boot is not None
    assert boot.ipxe.startswith("#!ipxe\necho node03 525400000003\nkernel http://x/vmlinuz provisioner.node=node03 ")
    assert "LABEL node03" in boot.pxelinux  # the others stay stock


def test_node_without_image_gets_no_boot_configs(tmp_path):
    site, state, inv = make_site(tmp_path, INVENTORY.replace("    image: debian12\n", ""))
    entries, boot = Build(state, site, inv).render(node_of(inv, "node01"))
    assert boot is None and by_path(entries)["etc/hostname"].data == b"node01\n"


def test_template_that_is_not_text_is_a_clear_error(tmp_path):
    site, state, inv = make_site(tmp_path)
    (site.overlays / "base" / "etc").mkdir(parents=True)
    (site.overlays / "base" / "etc" / "blob.j2").write_bytes(b"\xff\xfe{{ node.name }}")
    with pytest.raises(RenderError, match=r"base:etc/blob.j2: not UTF-8"):
        Build(state, site, inv)


@pytest.mark.parametrize(
    "meta, message",
    [
        ('etc/hostname: {mode: "rw-"}', "not octal"),
        ("etc/hostname: {mode: 0644, colour: red}", "expected {mode, owner, group}"),
        ("- just a list", "must map node paths"),
        ("etc/hostname: {mode: [", "invalid YAML"),
    ],
)
def test_bad_meta_is_a_clear_error(tmp_path, meta, message):
    site, state, inv = make_site(tmp_path)
    (site.overlays / "base").mkdir(parents=True)
    (site.overlays / "base" / "_meta.yaml").write_text(meta + "\n")
    with pytest.raises(RenderError, match=message) as err:
        Build(state, site, inv)
    assert "site/overlays/base/_meta.yaml" in str(err.value)
