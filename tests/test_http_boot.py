"""The HTTP boot server against real curl clients in lab namespaces: iPXE scripts, kernel
and initramfs (Range, HEAD, ETag/If-None-Match, Content-Length), wait scripts for unknown clients,
and overlay secrets refused to the wrong address or an unprivileged source port."""

import json

import pytest

from labs.serve import (
    IMAGE,
    NODES,
    Serve,
    auth,
    curl,
    http_code,
    plant,
    sha256,
    write_site,
    write_state,
)
from provisioner.artifacts import layout
from provisioner.bootfiles import WAIT
from provisioner.paths import State

pytestmark = pytest.mark.netns

PRIV = ("--local-port", "700-900")  # root in the node's namespace may bind these


@pytest.fixture
def served(lab, cli):
    write_site(cli.site)
    files = write_state(cli.state)
    with Serve(lab, cli) as srv:
        yield srv, files


def node_ns(lab, name):
    ip, mac = NODES[name]
    return lab.host(ip=ip, mac=mac)


def headers_of(text):
    lines = text.replace("\r", "").split("\n")
    return lines[0], {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ":" in ln)}


def test_ipxe_script_by_mac_and_by_address(lab, served):
    srv, files = served
    n1 = node_ns(lab, "node01")
    mac = NODES["node01"][1]
    assert curl(n1, f"{srv.url}/boot/{mac}.ipxe").stdout.encode() == files[f"/boot/{mac}.ipxe"]
    assert curl(n1, f"{srv.url}/boot/ipxe").stdout.encode() == files[f"/boot/{mac}.ipxe"]
    upper = mac.upper().replace(":", "-")
    assert curl(n1, f"{srv.url}/boot/{upper}.ipxe").stdout.encode() == files[f"/boot/{mac}.ipxe"]


def test_kernel_and_initramfs_range_head_etag(lab, served):
    srv, files = served
    n1 = node_ns(lab, "node01")
    url = f"{srv.url}/images/{IMAGE}/initramfs.img"
    body = files[f"/images/{IMAGE}/initramfs.img"]

    status, h = headers_of(curl(n1, "-I", url).stdout)
    assert "200" in status and int(h["content-length"]) == len(body) and h["accept-ranges"] == "bytes"
    etag = h["etag"]

    out = n1.run(["sh", "-c", f"curl -sS --noproxy '*' {url} | sha256sum"]).stdout.split()[0]
    assert out == sha256(body)
    size = curl(n1, "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{header_json}", url).stdout
    code, n, hdrs = size.split(" ", 2)
    assert (code, int(n)) == ("200", len(body)) and json.loads(hdrs)["content-length"] == [str(len(body))]

    part = n1.run(["sh", "-c", f"curl -sS --noproxy '*' -r 1000-1999 -D /dev/stderr {url} | sha256sum"])
    assert part.stdout.split()[0] == sha256(body[1000:2000])
    assert "206" in part.stderr and f"bytes 1000-1999/{len(body)}" in part.stderr
    tail = curl(n1, "-r", "-100", url, "-o", f"/tmp/tail-{lab.tag}", "-w", "%{http_code}").stdout
    assert tail == "206"
    assert n1.run(["sha256sum", f"/tmp/tail-{lab.tag}"]).stdout.split()[0] == sha256(body[-100:])
    n1.run(["rm", "-f", f"/tmp/tail-{lab.tag}"])

    assert curl(n1, "-o", "/dev/null", "-w", "%{http_code}", "-H", "Range: bytes=zz", url).stdout == "416"
    assert curl(n1, "-o", "/dev/null", "-w", "%{http_code}", "-r", f"{len(body)}-", url).stdout == "416"
    assert curl(n1, "-o", "/dev/null", "-w", "%{http_code}", "-H", f"If-None-Match: {etag}", url).stdout == "304"
    assert curl(n1, "-o", "/dev/null", "-w", "%{http_code}", "-H", 'If-None-Match: "other"', url).stdout == "200"
    kernel = curl(n1, f"{srv.url}/images/{IMAGE}/vmlinuz", "-o", "/dev/null", "-w", "%{size_download}").stdout
    assert int(kernel) == len(files[f"/images/{IMAGE}/vmlinuz"])
    # what boot configs name: the version they pin
    pinned = n1.run(
        ["sh", "-c", f"curl -sS --noproxy '*' --fail {srv.url}/images/{IMAGE}/versions/v1/initramfs.img | sha256sum"]
    )
    assert pinned.stdout.split()[0] == sha256(body)


def test_unknown_clients_get_a_wait_script_and_nothing_else(lab, served, cli):
    srv, _ = served
    stranger = lab.host(ip="10.99.0.77", mac="52:54:00:ee:ee:ee")

    def code(path: str) -> str:
        return http_code(stranger, srv.url + path)

    # before any build there is no wait script to give: a 404, logged
    assert code("/boot/52:54:00:ee:ee:ee.ipxe") == "404"
    assert "no such artifact" in srv.wait_log("/boot/52:54:00:ee:ee:ee.ipxe")
    waits = {}
    for n in range(WAIT.variants):
        waits[n] = f"#!ipxe\necho wait copy {n}\n".encode()
        plant(layout.wait_script(State(cli.state), n), waits[n])
    got = {
        curl(stranger, srv.url + path).stdout.encode()
        for _ in range(12)
        for path in ("/boot/ipxe", "/boot/52:54:00:ee:ee:ee.ipxe")
    }
    assert got <= set(waits.values()) and len(got) > 1  # one copy at random each time: the jitter
    assert code("/boot/not-a-mac.ipxe") == "404"
    assert code("/images/nope/vmlinuz") == "404"
    assert code(f"/images/{IMAGE}/rootfs") == "404"
    assert code("/images/..%2F..%2Fetc/vmlinuz") == "404"
    assert code(f"/images/{IMAGE}/versions/v2/vmlinuz") == "404"
    assert code(f"/images/{IMAGE}/versions/x/vmlinuz") == "404"
    assert code(f"/images/{IMAGE}/versions/v1/..%2F..%2F..%2F..%2Fsecrets%2Fvmlinuz") == "404"
    assert code("/overlays/node09.cpio.gz") == "404"


def test_overlay_secrets_only_to_the_node_from_a_privileged_port(lab, served):
    srv, files = served
    n1, n2 = node_ns(lab, "node01"), node_ns(lab, "node02")
    url1 = f"{srv.url}/overlays/node01.cpio.gz"

    got = n1.run(["sh", "-c", f"curl -sS --noproxy '*' --local-port 700-900 {url1} | sha256sum"])
    assert got.stdout.split()[0] == sha256(files["/overlays/node01.cpio.gz"])
    assert http_code(n1, url1) == "403"  # right node, unprivileged port
    srv.wait_log("secret refused: unprivileged source port")
    assert http_code(n2, *PRIV, url1) == "403"  # another node, privileged port
    srv.wait_log("not the node's address")
    assert http_code(n2, *PRIV, f"{srv.url}/overlays/node02.cpio.gz") == "200"


def test_insecure_mode_allows_unprivileged_port_but_still_checks_address(lab, cli):
    write_site(cli.site, secure=False)
    write_state(cli.state)
    with Serve(lab, cli) as srv:
        n1, n2 = node_ns(lab, "node01"), node_ns(lab, "node02")
        url1 = f"{srv.url}/overlays/node01.cpio.gz"
        assert curl(n1, "-o", "/dev/null", "-w", "%{http_code}", url1).stdout == "200"
        assert curl(n2, "-o", "/dev/null", "-w", "%{http_code}", url1).stdout == "403"


def test_node_api_authenticated_like_secrets(lab, served, cli):
    srv, _ = served
    n1 = node_ns(lab, "node01")
    stranger = lab.host(ip="10.99.0.78")

    def post(ns, path: str, body: str, *a: str) -> str:
        return http_code(
            ns, *a, "-H", "Content-Type: application/json", "--data-binary", body, f"{srv.url}/api/v1/{path}"
        )

    me = (*PRIV, *auth("node01"))  # the node's credential: test_node_credentials.py refuses the rest
    assert post(n1, "stage", '{"stage": "nfs", "detail": "mounted"}', *me) == "200"
    assert post(n1, "stage", '{"stage": "nfs"}', *auth("node01")) == "403"
    assert post(stranger, "stage", '{"stage": "nfs"}', *me) == "404"
    assert post(n1, "stage", "not json", *me) == "400"
    assert post(n1, "stage", '{"stage": "BAD STAGE"}', *me) == "400"
    assert post(n1, "facts", "[1, 2]", *me) == "400"
    facts = {
        "slurmd": "NodeName=node01 CPUs=2 RealMemory=1000",
        "cpus": 2,
        "memory_mb": 1000,
        "gpus": [],
        "disks": ["vda"],
        "macs": [NODES["node01"][1]],
    }
    assert post(n1, "facts", json.dumps(facts), *me) == "200"
    db_facts = json.loads(cli("status", "node01", "--json").stdout)[0]
    assert db_facts["stage"] == "registered"
    from provisioner.nodestate import NodeStateDB

    assert NodeStateDB(cli.state / "nodes.sqlite").facts("node01") == facts


def test_garbage_requests_get_400_and_the_server_carries_on(lab, served):
    srv, files = served
    n1 = node_ns(lab, "node01")
    for junk in (
        r"\x00\xff\xfe junk\r\n\r\n",
        r"GET /boot/ipxe HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        "GET /" + "a" * 70000 + r" HTTP/1.1\r\n\r\n",
    ):
        out = n1.run(
            ["bash", "-c", f"exec 3<>/dev/tcp/10.99.0.1/{srv.port}; printf '{junk}' >&3; timeout 5 head -c 12 <&3"],
            check=False,
        ).stdout
        # A 4xx status line; for the oversized line the server may reset the connection
        # before the client reads the answer (unread request bytes make the close a RST).
        assert (out.startswith("HTTP/1.") and out[9] == "4") or (len(junk) > 65536 and out == ""), (junk[:20], out)
    mac = NODES["node01"][1]
    assert curl(n1, f"{srv.url}/boot/{mac}.ipxe").stdout.encode() == files[f"/boot/{mac}.ipxe"]


def test_boot_tree_over_http(lab, served, cli):
    srv, files = served
    (cli.state / "boot").mkdir(exist_ok=True)
    (cli.state / "boot" / "ipxe.efi").write_bytes(b"MZ" + b"\0" * 5000)
    plant(layout.grub_config(State(cli.state), "node01"), b"menuentry node01 {}\n")
    n1, n2 = node_ns(lab, "node01"), node_ns(lab, "node02")

    def code(ns, *a: str) -> str:
        return curl(ns, "-o", "/dev/null", "-w", "%{http_code} %{size_download}", *a[:-1], srv.url + a[-1]).stdout

    assert code(n2, "/boot/ipxe.efi") == "200 5002"
    assert curl(n1, f"{srv.url}/boot/grub.cfg").stdout == "menuentry node01 {}\n"
    assert code(n2, "/boot/grub.cfg").startswith("404")  # node02 has none rendered
    mac = NODES["node01"][1]
    assert curl(n1, f"{srv.url}/boot/boot.ipxe").stdout.encode() == files[f"/boot/{mac}.ipxe"]
    (cli.state / "secrets").mkdir(exist_ok=True)
    (cli.state / "secrets" / "munge.key").write_bytes(b"k" * 1024)
    for path in (
        "/boot/../secrets/munge.key",
        "/boot/%2e%2e/secrets/munge.key",
        "/boot/..%2fsecrets/munge.key",
        "/images/..%2f..%2fsecrets/munge.key",
        "/boot//%2e%2e/%2e%2e/state/secrets/munge.key",
    ):
        assert code(n1, "--path-as-is", path).startswith("404"), path
    assert code(n1, "/boot/nothing.bin").startswith("404")
