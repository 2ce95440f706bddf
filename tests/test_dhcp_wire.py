"""The request parser and reply patching, without a network: option overload, RFC 3396
concatenation, PXE classification, and fuzzing (nothing but Malformed ever escapes)."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP

from provisioner.servers.dhcp import pxe, reply, wire

MAC = bytes.fromhex("525400aa0001")
SERVER = IPv4Address("10.0.0.1")


def request(options: list, **bootp) -> bytes:
    return bytes(BOOTP(chaddr=MAC, xid=0x1234, **bootp) / DHCP(options=[*options, "end"]))


def test_parse_reads_header_and_options():
    req = wire.parse(
        request(
            [("message-type", "request"), ("requested_addr", "10.0.0.5")],
            ciaddr="10.0.0.9",
            giaddr="10.0.0.1",
            flags=0x8000,
        )
    )
    assert (req.msgtype, req.xid, req.mac, req.flags, req.relayed) == (
        wire.REQUEST,
        0x1234,
        "52:54:00:aa:00:01",
        0x8000,
        True,
    )
    assert req.options[wire.OPT_REQUESTED_IP] == bytes([10, 0, 0, 5]) and req.ciaddr == bytes([10, 0, 0, 9])


def test_overloaded_file_field_and_split_options_are_read():
    file_opts = bytes([60, 4]) + b"PXEC" + bytes([60, 5]) + b"lient" + b"\xff"  # RFC 3396: concatenated
    raw = request([("message-type", "discover"), (52, b"\x01")], file=file_opts)
    req = wire.parse(raw)
    assert req.options[wire.OPT_VENDOR_CLASS] == b"PXEClient"


@pytest.mark.parametrize(
    "options,kind,arch",
    [
        ([], "plain", None),
        ([("vendor_class_id", b"PXEClient:Arch:00007:UNDI:003016")], "pxe", 7),  # arch from option 60
        ([("vendor_class_id", b"PXEClient"), (93, b"\x00\x0b")], "pxe", 11),
        ([("vendor_class_id", b"HTTPClient:Arch:00016"), (93, b"\x00\x10")], "http", 16),
        ([("vendor_class_id", b"PXEClient"), (93, b"\x00\x00"), (77, b"iPXE")], "ipxe", 0),
        ([(175, b"\xb1\x05\x01\x10\xec\x80\x00")], "ipxe", None),
    ],
)
def test_classify(options, kind, arch):
    client = pxe.classify(wire.parse(request([("message-type", "discover"), *options])))
    assert (client.kind, client.arch) == (kind, arch)


def test_long_boot_url_goes_to_option_67():
    req = wire.parse(request([("message-type", "discover")]))
    tmpl = reply.template(wire.OFFER, SERVER)
    url = "http://10.0.0.1/" + "x" * 200
    out = BOOTP(reply.finish(tmpl, req, file=url))
    assert out.file.rstrip(b"\0") == b""
    assert {o[0]: o[1] for o in out[DHCP].options if isinstance(o, tuple)}["boot-file-name"] == url.encode()
    assert out.xid == 0x1234 and out.chaddr[:6] == MAC and len(bytes(out)) >= reply.MIN_REPLY


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 599), st.binary(max_size=8))
def test_fuzzed_packets_only_ever_raise_malformed(noise, at, patch):
    base = request(
        [
            ("message-type", "request"),
            ("vendor_class_id", b"PXEClient:Arch:00007"),
            (93, b"\x00\x07"),
            (97, b"\x00" + bytes(16)),
            ("requested_addr", "10.0.0.5"),
        ]
    )
    for raw in (noise, base[:at] + patch + base[at + len(patch) :], base[:at]):
        try:
            req = wire.parse(raw)
        except wire.Malformed:
            continue
        pxe.classify(req)
        reply.finish(reply.template(wire.ACK, SERVER), req, extra=reply.echoes(req, True))
