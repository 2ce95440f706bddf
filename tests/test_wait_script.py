"""The script a PXE client gets while no inventory names it (bootfiles.WAIT), as rendered:
bounded backoff, copies that differ only in their jitter, nothing of a node or a secret, a
site's own template in place of the stock one, and `overlay build` writing the copies into
the boot tree. (A real iPXE running it: test_join_qemu.py.)"""

from __future__ import annotations

import re

from provisioner.artifacts import layout
from provisioner.bootfiles import WAIT
from provisioner.inventory import parse_text
from provisioner.paths import Site, State
from provisioner.render.pxe import wait_scripts

SITE = "cluster: {name: t, network: {interface: br0, subnet: 10.77.0.0/24, master: 10.77.0.1}}\n"


def cluster():
    return parse_text(SITE, "cluster.yaml").cluster


def sleeps_of(script: str) -> list[int]:
    return [int(s) for s in re.findall(r"set provisioner-sleep (\d+)", script)]


def test_copies_back_off_to_a_bound_and_differ_by_their_jitter():
    scripts = wait_scripts(cluster())
    assert list(scripts) == [f"wait/{n}.ipxe" for n in range(WAIT.variants)]
    ladders = [sleeps_of(text) for text in scripts.values()]
    for n, ladder in enumerate(ladders):
        # one step per retry, then the last step again (the fall-through)
        assert ladder == [*WAIT.sleeps(n), WAIT.sleeps(n)[-1]]
        assert ladder == sorted(ladder) and ladder[-1] <= 1.5 * WAIT.backoff[-1]
    assert len({tuple(ladder) for ladder in ladders}) == WAIT.variants
    assert ladders[0][:-1] == list(WAIT.backoff)
    assert max(ladder[-1] for ladder in ladders) > 1.4 * WAIT.backoff[-1]  # jitter spans up to half a step


def test_a_copy_asks_dhcp_again_and_holds_nothing_of_a_node():
    text = wait_scripts(cluster())["wait/0.ipxe"]
    assert text.startswith("#!ipxe\n")
    lines = text.splitlines()
    assert lines[-3:] == [
        "sleep ${provisioner-sleep}",
        "dhcp || goto wait",
        "chain --replace --autofree ${filename} || goto wait",
    ]
    # the retry counter moves one step per chain and stays on the last
    assert "iseq ${provisioner-wait} 0 && set provisioner-sleep 5 && set provisioner-wait 1 && goto wait ||" in lines
    last = len(WAIT.backoff) - 1
    assert (
        f"iseq ${{provisioner-wait}} {last} && set provisioner-sleep 60 && set provisioner-wait {last} && goto wait ||"
        in lines
    )
    for word in ("kernel", "initrd", "overlay", "provisioner.", "secret", "munge"):
        assert word not in text


def test_a_site_template_replaces_the_stock_one(tmp_path):
    site = Site(tmp_path / "site")
    (site.root / "pxe").mkdir(parents=True)
    (site.root / "pxe" / WAIT.template).write_text("#!ipxe\nsleep {{ sleeps[0] }}\nchain ${filename}\n")
    assert wait_scripts(cluster(), site)["wait/0.ipxe"] == "#!ipxe\nsleep 5\nchain ${filename}\n"


def test_overlay_build_writes_the_copies_into_the_boot_tree(cli):
    cli.site.mkdir(parents=True, exist_ok=True)
    (cli.site / "cluster.yaml").write_text(SITE)
    cli("overlay", "build")
    state = State(cli.state)
    want = wait_scripts(cluster())
    for n in range(WAIT.variants):
        path = layout.wait_script(state, n)
        assert path.read_text() == want[f"wait/{n}.ipxe"] and path.stat().st_mode & 0o777 == 0o644
    before = layout.wait_script(state, 0).stat().st_mtime_ns
    cli("overlay", "build")  # unchanged: not rewritten
    assert layout.wait_script(state, 0).stat().st_mtime_ns == before
