"""Every log line is logfmt: `key=value` pairs split by one space, a value bare when it is one
plain word and a JSON string otherwise. Checked on the formatter with awkward values, and on
everything a real `provisioner serve` (DHCP, TFTP with a worker process, HTTP) says while it
answers, refuses, reloads and stops."""

from __future__ import annotations

import json
import logging
import re
import signal
import sys

import pytest

from labs.serve import NODES, SERVER_IP, Serve, curl, write_site, write_state
from provisioner.logs import Logfmt, kv

_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_.-]*)=("(?:[^"\\]|\\.)*"|[^\s"=\\]+)(?: |$)')


def parse(line: str) -> dict[str, str]:
    """The fields of a logfmt line; fails on anything else (a stray word, a bad quote, a key
    given twice)."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(line):
        m = _PAIR.match(line, pos)
        assert m, f"not logfmt from column {pos}: {line!r}"
        key, raw = m.groups()
        assert key not in fields, f"{key} twice: {line!r}"
        fields[key] = json.loads(raw) if raw.startswith('"') else raw
        pos = m.end()
    assert not line.endswith(" "), line
    return fields


def test_awkward_values_come_back_whole():
    values = {
        "space": "a b",
        "quote": 'say "hi"',
        "newline": "one\ntwo",
        "backslash": "C:\\boot",
        "equals": "k=v",
        "empty": "",
        "unicode": "nœud",
        "tab": "a\tb",
        "plain": "52:54:00:aa:00:01",
    }
    rec = logging.LogRecord("provisioner.tftp", logging.WARNING, __file__, 1, "path refused", None, None)
    rec.__dict__.update(kv(**values, none=None))
    fields = parse(Logfmt({"worker": 42}).format(rec))
    assert fields == {
        "ts": fields["ts"],
        "level": "warning",
        "logger": "tftp",
        "msg": "path refused",
        **values,
        "worker": "42",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", fields["ts"])


def test_a_traceback_is_one_field_of_one_line():
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        rec = logging.LogRecord("provisioner.dhcp", logging.ERROR, __file__, 1, "error answering", None, sys.exc_info())
    line = Logfmt().format(rec)
    assert "\n" not in line
    assert parse(line)["error"].startswith("Traceback") and "ValueError: bad\nthing" in parse(line)["error"]


@pytest.mark.netns
def test_every_line_of_a_running_serve_parses(lab, cli):
    write_site(cli.site)
    files = write_state(cli.state)
    with Serve(
        lab, cli, services="dhcp,tftp,http", extra=("--tftp-port", "6969", "--tftp-workers", "2", "--interface", "br0")
    ) as srv:
        ip, mac = NODES["node01"]
        n1 = lab.host(mac=mac)
        n1.run(["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-T", "1", "-s", "/bin/true"])
        n1.run(["ip", "addr", "add", f"{ip}/24", "dev", "eth0"])
        garbage = (
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.sendto(b'\\x01 not a \"packet\"', ('{SERVER_IP}', 67))"
        )
        n1.run([sys.executable, "-c", garbage])
        for _ in range(16):  # from fresh source ports: the kernel spreads them over both processes
            assert curl(n1, f"tftp://{SERVER_IP}:6969/boot.ipxe").stdout.encode() == files[f"/boot/{mac}.ipxe"]
        for path in ("no%20such%20file", "..%2Fsecret"):
            curl(n1, f"tftp://{SERVER_IP}:6969/{path}", check=False)
        assert curl(n1, f"{srv.url}/boot/ipxe").stdout.encode() == files[f"/boot/{mac}.ipxe"]
        curl(n1, f"{srv.url}/boot/a%20%22quoted%22%20name", check=False)
        mark = len(srv.lines)
        srv.signal(signal.SIGHUP)
        srv.wait_log("msg=reloaded", after=mark)
        srv.wait_log('outcome="not found"')
        srv.wait_log('msg="dropped a malformed packet"')
        assert srv.stop() == 0

    lines = [parse(line) for line in srv.lines]
    assert all(list(f)[:4] == ["ts", "level", "logger", "msg"] for f in lines)
    said = {(f["logger"], f["msg"]) for f in lines}
    assert {
        ("dhcp", "listening"),
        ("dhcp", "dropped a malformed packet"),
        ("tftp", "listening"),
        ("tftp", "workers"),
        ("tftp", "transfer"),
        ("tftp", "path refused"),
        ("http", "listening"),
        ("http", "transfer"),
        ("http", "no such boot file"),
        ("serve", "ready"),
        ("serve", "reloaded"),
        ("serve", "stopped"),
    } <= said, sorted(said)
    tftp = [f for f in lines if f["logger"] == "tftp" and f["msg"] == "transfer"]
    assert any("worker" in f for f in tftp) and any("worker" not in f for f in tftp), tftp
    assert {"path": "no such file", "outcome": "not found"}.items() <= next(
        f for f in tftp if f["outcome"] != "ok"
    ).items()
    assert any(f.get("file") == 'a "quoted" name' for f in lines if f["logger"] == "http")
