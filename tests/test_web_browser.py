"""The web console in a real browser: Debian's headless chromium, driven through its
chromedriver (selenium), in an admin's namespace on the provisioning network, against a real
`provisioner serve`. It logs in, watches node01 go through its boot stages live as the node
fetches its files and reports (with its credential, from its own namespace), and approves a
discovered node. Screenshots go to the test's tmp directory; each is taken when the page's
DOM shows the node names it is about."""

from __future__ import annotations

import ctypes
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from labs.serve import IMAGE, NODES, Serve, curl, write_state
from labs.site import node, write_site
from provisioner.artifacts import layout, secrets
from provisioner.nodestate import NodeStateDB
from provisioner.paths import State

pytestmark = pytest.mark.netns

TOKEN = "browser-admin-token-42"
STRANGER = "52:54:00:ee:00:07"
PRIV = ("--local-port", "700-900")  # the node's root binds a privileged port (secure mode)
CLONE_NEWNET = 0x40000000
WAIT = 60.0  # generous: two shared cores, a browser and serve


@contextmanager
def entered(netns_path: str) -> Iterator[None]:
    """This thread in the namespace (chromedriver and chromium, started from it, too): the
    browser is an admin's on the provisioning network. setns(2) changes the calling thread
    only; the thread goes back to its own namespace after."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns_path, os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns into the browser's namespace")
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(target)
        os.close(home)


def until(what: str, check, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            got = check()
            if got:
                return got
        except (StaleElementReferenceException, WebDriverException) as e:  # the page moved on
            last = e
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} ({last})")


@pytest.fixture
def browser(lab, tmp_path) -> Iterator[webdriver.Chrome]:
    admin = lab.host(ip="10.99.0.50")
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1600",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--no-proxy-server",
    ):
        opts.add_argument(arg)
    with entered(admin.path):
        driver = webdriver.Chrome(
            service=Service("/usr/bin/chromedriver", log_output=str(tmp_path / "chromedriver.log")), options=opts
        )
        try:
            driver.set_page_load_timeout(WAIT)
            yield driver
        finally:
            driver.quit()


def shot(driver: webdriver.Chrome, path: Path, names: list[str]) -> None:
    """A screenshot, taken once the page shows every one of `names`."""
    until(f"{names} on the page", lambda: all(n in driver.find_element(By.TAG_NAME, "body").text for n in names))
    assert driver.save_screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def report(ns, state: Path, url: str, stage: str, detail: str) -> None:
    """A stage node01 reports with the credential its overlay carries, as its initramfs does."""
    credential = (state / "secrets" / secrets.node_credential("node01")).read_text().strip()
    body = f'{{"stage": "{stage}", "detail": "{detail}"}}'
    curl(
        ns,
        "--fail",
        *PRIV,
        "-H",
        f"Authorization: Bearer {credential}",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        body,
        f"{url}/api/v1/stage",
    )


def timeline(driver: webdriver.Chrome) -> list[str]:
    return [td.text for td in driver.find_elements(By.CSS_SELECTOR, "#timeline tr.step td.stage")]


def test_log_in_watch_a_boot_live_and_approve_a_node(lab, cli, browser, tmp_path):
    write_site(
        cli.site,
        nodes=[node(n, ip, mac) for n, (ip, mac) in NODES.items()],
        profiles={"default": {"image": IMAGE}},
        domain="lab.cluster",
        discovery={"names": "new[01-09]", "addresses": "10.99.0.100-10.99.0.120"},
    )
    write_state(cli.state)
    # Real overlays for node01 and node02 (the approval builds one more beside them), in
    # place of the stand-ins write_state plants.
    shutil.rmtree(State(cli.state).overlays)
    cli("overlay", "build")
    layout.api_token(State(cli.state)).write_text(TOKEN + "\n")
    db = NodeStateDB(State(cli.state).db)
    db.record_discoveries([(STRANGER, 7, None, "10.99.0.200", time.time())], [])
    db.close()
    node01 = lab.host(ip=NODES["node01"][0], mac=NODES["node01"][1])
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with Serve(lab, cli) as srv:
        driver = browser
        # Log in: the console sends a browser without a session to the login form first.
        driver.get(srv.url + "/node/node01")
        until("the login form", lambda: "/login" in driver.current_url)
        driver.find_element(By.ID, "token").send_keys("wrong")
        driver.find_element(By.ID, "submit").click()
        until("the refusal", lambda: "wrong credential" in driver.find_element(By.ID, "error").text)
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "submit").click()
        until("node01's page", lambda: driver.current_url.endswith("/node/node01"))
        assert driver.get_cookie("provisioner_session")["httpOnly"]
        until("the live feed", lambda: driver.find_element(By.ID, "live").text == "live")
        driver.execute_script("window.notReloaded = true")

        # node01 boots: each fetch and report shows up in its timeline without a reload.
        mac = NODES["node01"][1]
        steps = [
            ("ipxe", f"/boot/{mac}.ipxe"),
            ("kernel", f"/images/{IMAGE}/vmlinuz"),
            ("initramfs", f"/images/{IMAGE}/initramfs.img"),
            ("overlay", None),
            ("registered", None),
        ]
        for stage, path in steps:
            if path:
                curl(node01, "-o", "/dev/null", "--fail", srv.url + path)
            else:
                report(node01, cli.state, srv.url, stage, f"{stage} from the node")
            until(f"{stage} in the timeline", lambda stage=stage: timeline(driver)[-1:] == [stage])
            if stage == "kernel":
                shot(driver, shots / "node01-booting.png", ["node01", "kernel"])
        assert timeline(driver) == [s for s, _ in steps]
        took = [td.text for td in driver.find_elements(By.CSS_SELECTOR, "#timeline tr.step td.took")]
        assert all(t.endswith("s") for t in took[:-1]) and took[-1] == "", took  # as status --timeline
        assert driver.execute_script("return window.notReloaded") is True
        shot(driver, shots / "node01-registered.png", ["node01", "registered", "registered from the node"])

        # The cluster view follows too.
        driver.get(srv.url + "/")
        until("the live feed", lambda: driver.find_element(By.ID, "live").text == "live")
        driver.execute_script("window.notReloaded = true")
        row = driver.find_element(By.CSS_SELECTOR, 'tr[data-node="node01"] td.stage')
        assert row.text == "registered"
        report(node01, cli.state, srv.url, "switch-root", "nfs root mounted")
        until("node01's new stage in the table", lambda: row.text == "switch-root")
        # The counts and the problems cover every node: they follow too, shortly after.
        count = 'b[data-count="switch-root"]'
        until("the new count", lambda: [b.text for b in driver.find_elements(By.CSS_SELECTOR, count)] == ["1"])
        report(node01, cli.state, srv.url, "initramfs-failed", "root mount timed out")
        until(
            "node01's failure among the problems",
            lambda: (
                "node01 boot failed initramfs-failed: root mount timed out"
                in driver.find_element(By.ID, "problems").text
            ),
        )
        assert driver.execute_script("return window.notReloaded") is True
        shot(driver, shots / "cluster-live.png", ["node01", "node02", "initramfs-failed", STRANGER])

        # Approve the discovered MAC: it becomes new01, which serve then knows.
        form = driver.find_element(By.CSS_SELECTOR, f'tr[data-mac="{STRANGER}"] form.approve')
        form.find_element(By.NAME, "name").send_keys("new05")
        form.find_element(By.TAG_NAME, "button").click()
        try:
            until("the approval", lambda: f"{STRANGER} is now node new05" in driver.find_element(By.ID, "message").text)
        except AssertionError:  # what the browser and serve said, for the failure report
            print(driver.current_url, driver.find_element(By.TAG_NAME, "body").text[:3000], *srv.lines[-40:], sep="\n")
            raise
        srv.wait_log("msg=reloaded", timeout=WAIT)

        def listed() -> bool:
            driver.get(srv.url + "/?q=new05")
            return bool(driver.find_elements(By.CSS_SELECTOR, 'tr[data-node="new05"]'))

        until("new05 in the node table", listed)
        assert STRANGER not in driver.find_element(By.ID, "discovered").text
        shot(driver, shots / "approved.png", ["new05"])
        assert "new05" in (cli.site / "cluster.yaml").read_text()
    assert sorted(p.name for p in shots.iterdir()) == [
        "approved.png",
        "cluster-live.png",
        "node01-booting.png",
        "node01-registered.png",
    ]
