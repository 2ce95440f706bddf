"""NFS exports: images read-only with no_root_squash at /images/{image} (the image's own
directory, every version in it), homes read-write; the same inputs give the same text, export
ids do not move when an image is added, and a rebuild changes nothing."""

import re
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from labs.busyroot import make_root
from labs.site import node, site_yaml, write_site
from provisioner.render.nfs import Export, render_exports, render_ganesha

SUBNET = IPv4Network("10.77.0.0/24")

CLUSTER_YAML = site_yaml(
    [node("node01", "10.77.0.11", "52:54:00:00:00:01")],
    {"default": {"image": "tiny"}},
    name="demo",
    domain="demo.cluster",
    subnet="10.77.0.0/24",
    nfs={"exports": [{"path": "/home", "access": "rw"}]},
)


def image(name: str) -> Export:
    return Export(Path(f"/state/images/{name}"), f"/images/{name}", False, False, image=True)


HOME = Export(Path("/home"), "/home", True, True)


def test_ganesha_config_images_ro_homes_rw():
    text = render_ganesha([image("debian12"), HOME], SUBNET, IPv4Address("10.77.0.1"), Path("/var/lib/g"))
    blocks = re.findall(r"EXPORT \{(.*?)\n\}", text, re.S)
    assert len(blocks) == 2
    img, home = blocks
    assert 'Pseudo = "/images/debian12";' in img and "Squash = No_Root_Squash;" in img
    assert "Access_Type = RO;" in img and "Clients = 10.77.0.0/24;" in img
    assert 'Path = "/state/images/debian12";' in img
    assert 'Pseudo = "/home";' in home and "Access_Type = RW;" in home and "Squash = Root_Squash;" in home
    assert "Graceless = true;" in text and "Bind_addr = 10.77.0.1;" in text
    assert 'RecoveryRoot = "/var/lib/g";' in text
    assert text == render_ganesha([image("debian12"), HOME], SUBNET, IPv4Address("10.77.0.1"), Path("/var/lib/g"))


def test_export_ids_stable_when_an_image_is_added():
    def ids(exports: list[Export]) -> dict[str, str]:
        return dict(
            re.findall(
                r'Export_Id = (\d+);\n    Path = "[^"]*";\n    Pseudo = "([^"]*)"', render_ganesha(exports, SUBNET)
            )
        )

    before = {v: k for k, v in ids([image("b"), HOME]).items()}
    after = {v: k for k, v in ids([image("a"), image("b"), HOME]).items()}
    assert before["/images/b"] == after["/images/b"] and before["/home"] == after["/home"]
    assert len(set(after.values())) == 3


def test_kernel_exports_file():
    text = render_exports([image("debian12"), HOME], SUBNET)
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert lines[0].startswith("/state/images/debian12 10.77.0.0/24(ro,no_root_squash,")
    assert lines[1].startswith("/home 10.77.0.0/24(rw,root_squash,")
    assert "# /images/debian12 (nodes mount versions/VERSION/rootfs below it)" in text
    assert "# /home\n" in text


def test_cli_renders_from_inventory_and_images(cli, tmp_path):
    write_site(cli.site, CLUSTER_YAML)
    root = make_root(tmp_path / "root", "#!/bin/sh\n")
    cli("image", "import", "tiny", root)
    real = (cli.state / "images" / "tiny").resolve()
    text = cli("nfs", "exports", "--format", "ganesha").stdout
    assert f'Path = "{real}";' in text and 'Pseudo = "/images/tiny";' in text and 'Pseudo = "/home";' in text
    out = tmp_path / "exports"
    cli("nfs", "exports", "-o", out)
    assert f"{real} 10.77.0.0/24(ro,no_root_squash," in out.read_text()
    # a new version needs no new exports (and so no NFS reload)
    cli("image", "import", "tiny", root)
    assert cli("nfs", "exports", "--format", "ganesha").stdout == text
    res = cli("image", "rm", "tiny", check=False)
    assert res.returncode == 1 and "node01" in res.stderr
