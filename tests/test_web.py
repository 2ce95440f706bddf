"""The web console over real HTTP on loopback: serve's HTTP service in this process, a
requests client. Login and its cookie, CSRF on every change, hostile text escaped, the node
table paginated and filtered, anonymous reading only where the site allows it, the live feed.
The browser drives it end to end in test_web_browser.py."""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from labs.site import node, write_site
from provisioner.actions.context import Context
from provisioner.actions.webconsole import console_actions
from provisioner.artifacts import layout
from provisioner.inventory import load_inventory
from provisioner.nodestate import NodeStateDB
from provisioner.nodestate.summary import NodeStatus
from provisioner.paths import Site, State
from provisioner.servers.http import Hooks, HttpServer
from provisioner.servers.http.web import Problem, problems_of

TOKEN = "web-admin-token-0123456789"
NODES = 260
HOSTILE = '<script>alert("x")</script>'
STRANGER = "52:54:00:ee:00:01"
SUBNET = "127.0.0.0/16"  # the loopback addresses stand in for the provisioning network


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def site_text(anonymous: bool = False) -> dict:
    nodes = [
        node(f"n{i:04d}", f"127.0.{i // 250}.{i % 250 + 2}", f"52:54:00:bb:{i // 256:02x}:{i % 256:02x}")
        for i in range(NODES)
    ]
    return dict(
        nodes=nodes,
        profiles={"default": {"image": "img1"}},
        interface=None,
        subnet=SUBNET,
        discovery={"names": "new[01-09]", "addresses": "127.0.9.1-127.0.9.9"},
        web={"anonymous_read": anonymous},
    )


@dataclass
class Console:
    url: str
    server: HttpServer
    site: Site
    state: State
    db: NodeStateDB

    def login(self) -> requests.Session:
        s = requests.Session()
        r = s.post(f"{self.url}/login", data={"token": TOKEN, "next": "/"}, allow_redirects=False)
        assert r.status_code == 303, r.text
        return s

    def reload(self, anonymous: bool) -> None:
        write_site(self.site.root, **site_text(anonymous))
        self.server.reload(load_inventory(self.site.cluster_yaml))


@pytest.fixture(scope="module")
def console(tmp_path_factory) -> Iterator[Console]:
    root: Path = tmp_path_factory.mktemp("web")
    site, state = Site(root / "site"), State(root / "state")
    write_site(site.root, **site_text())
    token = layout.api_token(state)
    token.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    token.write_text(TOKEN + "\n")
    db = NodeStateDB(state.db)
    now = time.time()
    for stage in ("dhcp", "bootloader", "kernel", "initramfs"):
        db.record_stage("n0001", stage, None, now - 30)
    db.record_stage("n0002", "initramfs-failed", HOSTILE, now - 20)
    db.set_facts("n0003", {"cpus": 4, "cpu_model": '<img src=x onerror="alert(1)">'})
    db.record_transfer("http", "127.0.0.3:999", "/images/img1/versions/v7/vmlinuz", 100, 0.1, "ok", "n0001")
    (state.root / "images" / "img1" / "versions" / "v8").mkdir(parents=True)
    (state.root / "images" / "img1" / "current").symlink_to("versions/v8")
    db.record_discoveries([(STRANGER, 7, None, "127.0.8.1", now)], [])
    inventory = load_inventory(site.cluster_yaml)
    port = free_port()
    server = HttpServer(
        inventory, state, "127.0.0.1", port, db, hooks=Hooks(console=console_actions(Context(site, state)))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert server.ready.wait(30)
        yield Console(f"http://127.0.0.1:{port}", server, site, state, db)
    finally:
        server.shutdown()
        thread.join(30)
        db.close()


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


def test_reading_wants_a_login(console):
    for path in ("/", "/node/n0001", "/events", "/?page=2"):
        r = requests.get(console.url + path, allow_redirects=False)
        assert r.status_code == 303 and r.headers["Location"].startswith("/login?next="), (path, r.status_code)
    r = requests.post(f"{console.url}/login", data={"token": "wrong", "next": "/"}, allow_redirects=False)
    assert r.status_code == 403 and "wrong credential" in r.text and "Set-Cookie" not in r.headers
    r = requests.post(f"{console.url}/login", data={"token": TOKEN, "next": "/node/n0001"}, allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"] == "/node/n0001"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie  # plain HTTP here
    # No redirect off this server after login.
    for evil in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        r = requests.post(f"{console.url}/login", data={"token": TOKEN, "next": evil}, allow_redirects=False)
        assert r.headers["Location"] == "/", evil


def test_cluster_view_problems_first_and_security_headers(console):
    s = console.login()
    r = s.get(console.url + "/")
    assert r.status_code == 200
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    html = r.text
    assert html.index('id="problems"') < html.index('id="discovered"') < html.index('id="nodes"')
    problems = html[html.index('id="problems"') : html.index('id="discovered"')]
    assert "n0002" in problems and "boot failed" in problems
    assert STRANGER in html[html.index('id="discovered"') : html.index('id="nodes"')]
    assert f"{NODES} nodes" in html and 'data-count="initramfs">1<' in html


def test_node_view_says_which_image_version_it_booted_and_would_boot(console):
    html = console.login().get(console.url + "/node/n0001").text
    assert '<b id="booted">v7</b>' in html and '<b id="next-version">v8</b>' in html
    assert "a reboot brings v8" in html
    steps = re.findall(r'<tr class="step" data-at="[0-9.]+"><td class="stage">([^<]+)<', html)
    assert steps == ["dhcp", "bootloader", "kernel", "initramfs"]
    assert "/images/img1/versions/v7/vmlinuz" in html


def test_hostile_text_is_escaped(console):
    s = console.login()
    pages = [
        s.get(console.url + "/").text,
        s.get(console.url + "/node/n0002").text,
        s.get(console.url + "/node/n0003").text,
        s.get(console.url + "/", params={"q": HOSTILE}).text,
        s.get(console.url + "/node/" + requests.utils.quote(HOSTILE, safe="")).text,
        requests.get(console.url + "/login", params={"next": '"><script>alert(1)</script>'}).text,
    ]
    for html in pages:
        assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in pages[1]
    assert "&lt;img src=x onerror=" in pages[2]


def test_pagination_and_filter(console):
    s = console.login()

    def rows(**params) -> list[str]:
        return re.findall(r'<tr data-node="([^"]+)"', s.get(console.url + "/", params=params).text)

    assert rows() == [f"n{i:04d}" for i in range(100)]
    assert rows(size=50, page=3) == [f"n{i:04d}" for i in range(100, 150)]
    assert rows(size=500) == [f"n{i:04d}" for i in range(NODES)]
    assert rows(page=99) == [f"n{i:04d}" for i in range(200, NODES)]  # past the end: the last page
    assert rows(page="x", size="7") == [f"n{i:04d}" for i in range(100)]  # nonsense: the defaults
    assert rows(q="n012") == [f"n{i:04d}" for i in range(120, 130)]
    assert rows(stage="initramfs-failed") == ["n0002"]
    assert rows(q="127.0.1.2") == ["n0250"]


def test_changes_want_the_sessions_csrf_token(console):
    s = console.login()
    html = s.get(console.url + "/").text
    token = csrf_of(html)
    url = f"{console.url}/discovered/approve"
    assert requests.post(url, data={"csrf": token, "mac": STRANGER}, allow_redirects=False).status_code == 403
    assert s.post(url, data={"mac": STRANGER}, allow_redirects=False).status_code == 403
    assert s.post(url, data={"csrf": "forged", "mac": STRANGER}, allow_redirects=False).status_code == 403
    other = console.login()  # another session's token is no good either
    assert other.post(url, data={"csrf": token, "mac": STRANGER}, allow_redirects=False).status_code == 403
    assert [r["mac"] for r in console.db.discovered() if not r["adopted_as"]] == [STRANGER]
    r = s.post(url, data={"csrf": token, "mac": STRANGER, "name": ""}, allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"] == "/"
    html = s.get(console.url + "/").text
    assert f"{STRANGER} is now node new01" in html
    adopted = load_inventory(console.site.cluster_yaml).by_mac(STRANGER)
    assert adopted is not None and adopted.name == "new01"
    assert layout.overlay_archive(console.state, "new01").exists()
    # Its page lists the overlay it gets, and a plan finds nothing to change after the build.
    console.server.reload(load_inventory(console.site.cluster_yaml))  # serve's file watch does this
    page = s.get(f"{console.url}/node/new01").text
    assert "/etc/provisioner/credential</td><td>0600" in page and 'id="plan-link"' in page
    assert "/etc/provisioner<" not in page  # files, not the folders they are in
    assert '<p id="plan">nothing would change</p>' in s.get(f"{console.url}/node/new01", params={"plan": 1}).text
    assert "never built" in s.get(f"{console.url}/node/n0005", params={"plan": 1}).text
    # Rebuilding a node's overlay from its page: the form's token again.
    rebuild = f"{console.url}/node/n0005/rebuild"
    assert s.post(rebuild, data={"csrf": "forged"}, allow_redirects=False).status_code == 403
    assert not layout.overlay_archive(console.state, "n0005").exists()
    r = s.post(rebuild, data={"csrf": token}, allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"] == "/node/n0005"
    assert "overlay of n0005: rebuilt" in s.get(console.url + "/node/n0005").text
    assert layout.overlay_archive(console.state, "n0005").exists()
    assert s.post(f"{console.url}/node/nosuch/rebuild", data={"csrf": token}).status_code == 404
    # A refused approval says why, and changes nothing.
    r = s.post(url, data={"csrf": token, "mac": "not-a-mac"})
    assert "not done: &#39;not-a-mac&#39; is not a MAC address" in r.text
    # Logging out needs the token too, and ends the session.
    assert s.post(f"{console.url}/logout", allow_redirects=False).status_code == 403
    assert s.post(f"{console.url}/logout", data={"csrf": token}, allow_redirects=False).status_code == 303
    assert s.get(console.url + "/", allow_redirects=False).status_code == 303
    console.reload(False)  # the fixture's site again, for the tests after this one


def test_problems_name_failed_boots_then_slurm_trouble_with_its_reason():
    rows = [
        NodeStatus("a", "idle", 1.0, None, None, "idle", None),
        NodeStatus("b", "overlay-refused", 1.0, None, None, None, None, detail="wrong address"),
        NodeStatus("c", "idle", 1.0, None, None, "drained", None),
        NodeStatus("d", "idle", 1.0, None, None, "down*", None),
        NodeStatus("e", "idle", 1.0, None, None, "idle*", None),
    ]
    assert problems_of(rows, {"c": "bad DIMM"}) == [
        Problem("b", "boot failed", "overlay-refused: wrong address"),
        Problem("c", "drained", "bad DIMM"),
        Problem("d", "down", "down*"),
        Problem("e", "not responding", "idle*"),
    ]


def get_from(source: str, url: str) -> int:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30, source_address=(source, 0))
    try:
        conn.request("GET", "/")
        return conn.getresponse().status
    finally:
        conn.close()


def test_anonymous_reading_only_from_the_provisioning_network_when_allowed(console):
    assert get_from("127.0.5.5", console.url) == 303
    console.reload(True)
    try:
        assert get_from("127.0.5.5", console.url) == 200  # in the subnet
        assert get_from("127.1.0.1", console.url) == 303  # outside it
        html = requests.get(console.url + "/").text
        assert "/discovered/approve" not in html  # no forms for an anonymous reader
        assert requests.post(f"{console.url}/discovered/approve", data={"mac": STRANGER}).status_code == 403
    finally:
        console.reload(False)


def test_live_feed_sends_new_stages(console):
    s = console.login()
    with s.get(console.url + "/events", stream=True, timeout=60) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        lines = r.iter_lines(decode_unicode=True)
        assert next(lines).startswith("retry:")
        console.db.record_stage("n0100", "kernel", "live")
        deadline = time.time() + 30
        for line in lines:
            if line.startswith("data:") and '"n0100"' in line:
                assert '"stage": "kernel"' in line
                break
            assert time.time() < deadline, "no live event"


def test_served_pages_name_their_script_and_style(console):
    r = requests.get(console.url + "/static/console.js")
    assert r.status_code == 200 and "EventSource" in r.text
    assert requests.get(console.url + "/static/console.css").status_code == 200
    assert requests.get(console.url + "/static/..%2Fweb.py").status_code == 404
    assert yaml.safe_load(console.site.cluster_yaml.read_text())["cluster"]["web"] == {"anonymous_read": False}
