"""Only a node that proves who it is changes its record. Against a real `provisioner serve`:
a stranger fetching node01's boot script and kernel is served but records nothing for node01;
stage and facts reports without node01's credential (or with a wrong one, or node02's) are
refused with 401/403 and change nothing, even from node01's own address and a privileged
port; with it they are recorded. `overlay build` delivers each node its own credential,
root-only on both ends. The admin API answers root on the master, not another local user."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest

from labs.serve import (
    CREDENTIALS,
    IMAGE,
    NODES,
    Serve,
    auth,
    curl,
    write_site,
    write_state,
)
from provisioner.artifacts import layout, overlay_build, secrets
from provisioner.inventory import load_inventory
from provisioner.nodestate import NodeStateDB
from provisioner.paths import Site, State

PRIV = ("--local-port", "700-900")
STAGE = json.dumps({"stage": "switch_root", "detail": "forged"})
FACTS = json.dumps({"cpus": 2, "memory_mb": 900})
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


def code(ns, *args: str) -> str:
    return curl(ns, "-o", "/dev/null", "-w", "%{http_code}", *args).stdout


def post(ns, url: str, what: str, body: str, *args: str) -> str:
    return code(ns, *PRIV, "-H", "Content-Type: application/json", *args, "--data-binary", body, f"{url}/api/v1/{what}")


@pytest.mark.netns
def test_nothing_without_the_credential_changes_a_record(lab, cli):
    write_site(cli.site)
    write_state(cli.state)
    db = NodeStateDB(cli.state / "nodes.sqlite")
    ip, mac = NODES["node01"]
    with Serve(lab, cli) as srv:
        stranger = lab.host(ip="10.99.0.79")
        for path in (f"/boot/{mac}.ipxe", f"/images/{IMAGE}/vmlinuz", f"/images/{IMAGE}/initramfs.img"):
            assert code(stranger, srv.url + path) == "200"  # served: nothing secret in them
        assert code(stranger, *PRIV, f"{srv.url}/overlays/node01.cpio.gz") == "403"
        assert post(stranger, srv.url, "stage", STAGE, *auth("node01")) == "404"  # not a node's address

        n1 = lab.host(ip=ip, mac=mac)
        head = curl(
            n1,
            *PRIV,
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            STAGE,
            f"{srv.url}/api/v1/stage",
        ).stdout
        assert head.startswith("HTTP/1.1 401") and 'WWW-Authenticate: Bearer realm="provisioner node"' in head
        assert post(n1, srv.url, "facts", FACTS) == "401"
        assert post(n1, srv.url, "stage", STAGE, "-H", "Authorization: Bearer " + "0" * 64) == "403"
        assert post(n1, srv.url, "facts", FACTS, *auth("node02")) == "403"  # another node's credential
        assert post(n1, srv.url, "stage", STAGE, "-H", "Authorization: Basic bm9kZTAxOng=") == "401"
        srv.wait_log("node API refused: wrong credential")
        time.sleep(0.3)  # transfers are written off the request path
        assert db.timeline("node01") == [] and db.facts("node01") is None
        assert {r["node"] for r in db.transfers()} == {None}  # the stranger's fetches are its own
        assert post(n1, srv.url, "stage", STAGE, *auth("node01")) == "200"
        assert post(n1, srv.url, "facts", FACTS, *auth("node01")) == "200"
        # node02's credential and address agree: its own fetch of its script is its boot stage
        n2 = lab.host(ip=NODES["node02"][0], mac=NODES["node02"][1])
        assert code(n2, f"{srv.url}/boot/{NODES['node02'][1]}.ipxe") == "200"
        time.sleep(0.3)
    assert [(r["stage"], r["detail"]) for r in db.timeline("node01")] == [
        ("switch_root", "forged"),
        ("registered", None),
    ]
    assert db.facts("node01") == json.loads(FACTS)
    assert [r["stage"] for r in db.timeline("node02")] == ["ipxe"]


@pytest.mark.netns
def test_admin_api_answers_root_alone_on_the_master(lab, cli):
    write_site(cli.site)
    write_state(cli.state)
    token = cli.state / "secrets" / "api.token"
    token.write_text("admin-token\n")
    token.chmod(0o600)
    with Serve(lab, cli) as srv:
        nodes = f"{srv.url}/api/v1/nodes"
        assert code(lab.server, nodes) == "200"
        assert lab.server.run([*NOBODY, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", nodes]).stdout == "403"
        assert (
            lab.server.run(
                [
                    *NOBODY,
                    "curl",
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-X",
                    "POST",
                    f"{srv.url}/api/v1/reload",
                ]
            ).stdout
            == "403"
        )
        srv.wait_log("admin endpoint refused")
        # the token would let it in, but only root reads it
        assert lab.server.run([*NOBODY, "cat", str(token)], check=False).returncode != 0
        assert (
            lab.server.run(
                [
                    *NOBODY,
                    "curl",
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-H",
                    "Authorization: Bearer admin-token",
                    nodes,
                ]
            ).stdout
            == "200"
        )


def test_overlay_build_gives_each_node_its_own_root_only_credential(tmp_path):
    site, state = Site(tmp_path / "site"), State(tmp_path / "state")
    write_site(site.root)
    inv = load_inventory(site.root / "cluster.yaml")
    overlay_build.build(state, site, inv)
    got = {}
    for name in NODES:
        cred = layout.secrets_dir(state) / secrets.node_credential(name)
        assert stat.S_IMODE(cred.stat().st_mode) == 0o600 and stat.S_IMODE(cred.parent.stat().st_mode) == 0o700
        entry = {e.path: e for e in overlay_build.read_archive(layout.overlay_archive(state, name))}
        e = entry["etc/provisioner/credential"]
        assert stat.S_IMODE(e.mode) == 0o600 and (e.uid, e.gid) == (0, 0)
        assert e.data == cred.read_bytes() and len(e.data) == 64
        got[name] = e.data
    assert got["node01"] != got["node02"] and set(got.values()).isdisjoint(c.encode() for c in CREDENTIALS.values())
    again = overlay_build.build(state, site, inv)
    assert again.built == [] and sorted(os.listdir(layout.secrets_dir(state) / "credentials")) == sorted(NODES)
