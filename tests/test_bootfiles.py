"""The boot registry (provisioner.bootfiles) against the four places that read it: `boot
install` from Debian's packages, the DHCP server's answer per client architecture (real
server, scapy-made PXE clients in network namespaces), the stage table and the boot tree and
templates; and `boot_files` overrides checked at load, at DHCP start and per answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner import bootfiles
from provisioner.artifacts import bootloaders, layout
from provisioner.bootfiles import ARCHES, BOOT_FILES, CONFIGS, DEFAULTS, FIRMWARE
from provisioner.inventory import InventoryInvalid, parse_text
from provisioner.paths import State
from provisioner.render.pxe import TEMPLATES
from provisioner.resources import STOCK_PXE
from provisioner.servers.boottree import BootTree
from provisioner.servers.stages import stage_of
from test_dhcp_server import MACS, Server, pxe_client, write_site

HTTP = "http://10.99.0.1:8080/boot/"


def test_every_architecture_has_one_default_that_runs_on_it():
    assert set(DEFAULTS) == set(FIRMWARE)
    for arch in ARCHES.values():
        default = DEFAULTS[arch.firmware]
        assert arch.firmware in default.runs_on, (arch, default)
    for f in BOOT_FILES:
        assert set(f.default_for) <= set(f.runs_on) <= set(FIRMWARE), f
    assert {f.loader for f in BOOT_FILES} == {"", *TEMPLATES}  # each loader reads a config rendered for it
    names = [f.name.rsplit("/", 1)[-1] for f in bootfiles.BY_NAME.values()]
    assert len(names) == len(set(names))  # stage_of goes by the last path component


def test_stages_templates_and_boot_tree_come_from_the_registry(tmp_path):
    assert {f.name: stage_of(f"/{f.name}") for f in bootfiles.BY_NAME.values()} == {
        f.name: "bootloader" for f in bootfiles.BY_NAME.values()
    }
    assert stage_of("efi64/ldlinux.e64") is None and stage_of("images/x/versions/v1/vmlinuz") == "kernel"
    assert {c.loader: c.template for c in CONFIGS} == TEMPLATES
    assert all((STOCK_PXE / t).is_file() for t in TEMPLATES.values())
    inv = parse_text(
        """
cluster: {name: t, network: {interface: br0, subnet: 10.77.0.0/24, master: 10.77.0.1}}
profiles: {default: {image: debian12}}
nodes: [{name: node01, ip: 10.77.0.11, mac: "52:54:00:00:00:01"}]
""",
        "cluster.yaml",
    )
    state = State(tmp_path)
    tree = BootTree(state, inv)
    wanted = {
        "ipxe": layout.ipxe_script(state, "node01"),
        "pxelinux": layout.pxelinux_config(state, "node01"),
        "grub": layout.grub_config(state, "node01"),
    }
    for config in CONFIGS:
        for path in config.paths:
            wanted[config.loader].parent.mkdir(parents=True, exist_ok=True)
            wanted[config.loader].write_text(config.loader)
            assert tree("10.77.0.11", path.format(mac="52-54-00-00-00-01")) == wanted[config.loader]


def test_boot_install_puts_every_file_dhcp_can_name_in_the_tree(tmp_path):
    """The real install from Debian's packages: each architecture's default is in the tree,
    unless it is an optional file this host's packages lack (DHCP then refuses it, below)."""
    state = State(tmp_path / "state")
    bootloaders.install(state)
    for arch in ARCHES.values():
        f = DEFAULTS[arch.firmware]
        there = (layout.boot_dir(state) / f.name).is_file()
        assert there or (not f.required and not Path(f.source).exists()), arch


def test_boot_install_says_which_clients_the_tree_leaves_without_a_boot_file(cli):
    write_site(cli.site, efi_file="mine.efi")
    err = cli("boot", "install").stderr
    assert "warning: boot_files uefi: mine.efi of node03 will get no boot file: mine.efi is not in the boot tree" in err
    for firmware, f in DEFAULTS.items():
        said = f"note: {firmware} clients will get no boot file: {f.name} is not in the boot tree"
        assert (said in err) == (not Path(f.source).exists()), err


SITE = """\
cluster:
  name: t
  network: {interface: br0, subnet: 10.77.0.0/24, master: 10.77.0.1}
profiles:
  default: {image: debian12, boot_files: %s}
nodes: [{name: node01, ip: 10.77.0.11}]
"""


@pytest.mark.parametrize(
    "files,problem",
    [
        ("{uefi64: snponly.efi}", "unknown boot_files key 'uefi64' (one of bios, uefi32, uefi, arm64, http, ipxe)"),
        ("{uefi: pxelinux.0}", "pxelinux.0 runs on bios firmware, not uefi (loaders for uefi: snponly.efi"),
        ("{bios: ldlinux.c32}", "ldlinux.c32 is a loader module, not a boot loader"),
        ("{bios: [undionly.kpxe]}", "must be a path in the boot tree or a URL"),
    ],
)
def test_inventory_refuses_an_override_no_boot_tree_can_serve(files, problem):
    with pytest.raises(InventoryInvalid) as e:
        parse_text(SITE % files, "cluster.yaml")
    assert problem in str(e.value) and "boot_files" in str(e.value)


def test_inventory_takes_site_files_and_urls():
    inv = parse_text(
        SITE % '{uefi: site/mine.efi, ipxe: "tftp://10.77.0.1/pxelinux.0", http: "http://x/y.efi"}', "cluster.yaml"
    )
    assert inv.nodes[0].boot_files["uefi"] == "site/mine.efi"


# -- the real DHCP server ------------------------------------------------------------------------


def _vendor(arch: int) -> str:
    return f"{'HTTPClient' if ARCHES[arch].http else 'PXEClient'}:Arch:{arch:05d}:UNDI:003016"


@pytest.mark.netns
def test_dhcp_names_installed_files_and_refuses_the_rest(lab, tmp_path):
    """Every architecture against a real `boot install`: the file it is offered is in the boot
    tree, or it gets no boot file and the log names the file and its Debian package."""
    write_site(tmp_path / "site")
    server = Server(lab, tmp_path / "site", tmp_path / "state").start()  # runs boot install
    boot = layout.boot_dir(State(tmp_path / "state"))
    try:
        ns = lab.host(mac=MACS[0])
        refused = 0
        for arch, entry in ((a, DEFAULTS[ARCHES[a].firmware]) for a in ARCHES):
            got = pxe_client(ns, tmp_path, MACS[0], "--arch", str(arch), "--vendor", _vendor(arch))
            ack = got["reply"]
            assert ack["yiaddr"] == "10.99.0.11", (arch, got)
            if (boot / entry.name).is_file():
                assert ack["file"] == (HTTP + entry.name if ARCHES[arch].http else entry.name), arch
            else:
                refused += 1
                assert ack["file"] == "" and "vendor_class_id" not in ack["options"], (arch, ack)
                assert "root_path" not in ack["options"]  # nothing for firmware to SAN-boot either
                kind = "http" if ARCHES[arch].http else "pxe"
                line = f"no boot file for node01 ({MACS[0]}, {kind} client, arch {arch})"
                assert line in server.text() and f"{entry.name} is not in the boot tree" in server.text()
                assert f"Debian package {entry.package}" in server.text()
        assert refused == sum(not Path(DEFAULTS[a.firmware].source).exists() for a in ARCHES.values())
        # an architecture the registry does not know gets no BIOS file by mistake
        got = pxe_client(ns, tmp_path, MACS[0], "--arch", "10", "--vendor", "PXEClient:Arch:00010:UNDI:003016")
        assert got["reply"]["file"] == ""
        assert "no boot file is registered for client architecture 10" in server.text()
    finally:
        server.stop()
    assert "Traceback" not in server.text(), server.text()


@pytest.mark.netns
def test_a_file_missing_from_the_tree_is_refused_and_said(lab, tmp_path):
    """A boot tree without undionly.kpxe, and an override naming a file nothing provides: the
    start-up check says so, a BIOS client gets a lease but no boot file, once logged; in proxy
    mode it gets no answer at all."""
    write_site(tmp_path / "site", efi_file="mine.efi")
    state = tmp_path / "state"
    bootloaders.install(State(state))
    (state / "boot" / "undionly.kpxe").unlink()
    server = Server(lab, tmp_path / "site", state, install=False).start()
    bios = ("--arch", "0", "--vendor", "PXEClient:Arch:00000:UNDI:002001")
    try:
        text = server.text()
        assert "bios clients will get no boot file: undionly.kpxe is not in the boot tree" in text
        assert "`provisioner boot install` copies it from /usr/lib/ipxe/undionly.kpxe (Debian package ipxe)" in text
        assert "boot_files uefi: mine.efi of node03 will get no boot file: mine.efi is not in the boot tree" in text
        assert "no Debian package provides it" in text
        ns = lab.host(mac=MACS[0])
        for _ in range(2):
            ack = pxe_client(ns, tmp_path, MACS[0], *bios)["reply"]
            assert ack["yiaddr"] == "10.99.0.11" and ack["file"] == "" and ack["siaddr"] == "0.0.0.0"
        assert server.text().count(f"no boot file for node01 ({MACS[0]}, pxe client, arch 0)") == 1
        # the UEFI default is there: node01 still boots that way
        efi = pxe_client(ns, tmp_path, MACS[0], "--arch", "7", "--vendor", "PXEClient:Arch:00007:UNDI:003016")
        assert efi["reply"]["file"] == "snponly.efi"
        ns3 = lab.host(mac=MACS[2])
        ack = pxe_client(ns3, tmp_path, MACS[2], "--arch", "7", "--vendor", "PXEClient:Arch:00007:UNDI:003016")["reply"]
        assert ack["file"] == "" and "no boot file for node03" in server.text()
        assert "mine.efi is not in the boot tree" in server.text()
    finally:
        server.stop()
    write_site(tmp_path / "site", mode="proxy")
    proxy = Server(lab, tmp_path / "site", state, install=False).start()
    try:
        got = pxe_client(lab.host(mac=MACS[1]), tmp_path, MACS[1], "--only", "discover", *bios)
        assert got["offers"] == []
        assert f"no boot file for node02 ({MACS[1]}, pxe client, arch 0)" in proxy.text()
    finally:
        proxy.stop()
    assert "Traceback" not in server.text() + proxy.text()
