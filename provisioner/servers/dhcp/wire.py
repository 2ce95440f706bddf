"""Reading DHCP requests off the wire.

scapy parses a DHCP packet in about 80 µs here, a third of the budget at the rate we aim for
(Kea's ~3,000 leases/s on two shared cores), so requests are read by this small struct-based
parser; scapy builds the replies (see reply.py) and is what the tests' PXE clients use. The
parser is strict: anything malformed raises Malformed and the server drops and logs it.
"""

from __future__ import annotations

import struct

# RFC 2131 fixed header: op htype hlen hops xid secs flags ciaddr yiaddr siaddr giaddr chaddr
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s4s")
COOKIE = b"\x63\x82\x53\x63"
MAX_PACKET = 4096  # bigger than any sane client message; larger datagrams are refused

BOOTREQUEST, BOOTREPLY = 1, 2
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8
MESSAGE_NAMES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK", 7: "RELEASE", 8: "INFORM"}

OPT_PAD, OPT_END, OPT_OVERLOAD, OPT_MSGTYPE = 0, 255, 52, 53
OPT_REQUESTED_IP, OPT_SERVER_ID = 50, 54
OPT_VENDOR_CLASS, OPT_USER_CLASS, OPT_ARCH, OPT_UUID = 60, 77, 93, 97
OPT_RELAY_AGENT, OPT_IPXE = 82, 175

ZERO_IP = b"\x00\x00\x00\x00"


class Malformed(ValueError):
    """A datagram that is not a well-formed DHCP request."""


class Request:
    """The fields of a client request the server looks at (raw bytes, as on the wire)."""

    __slots__ = (
        "raw",
        "hops",
        "xid",
        "secs",
        "flags",
        "ciaddr",
        "yiaddr",
        "giaddr",
        "chaddr",
        "mac",
        "options",
        "msgtype",
    )

    def __init__(
        self,
        raw: bytes,
        hops: int,
        xid: int,
        secs: int,
        flags: int,
        ciaddr: bytes,
        yiaddr: bytes,
        giaddr: bytes,
        chaddr: bytes,
        options: dict[int, bytes],
        msgtype: int,
    ):
        self.raw = raw
        self.hops = hops
        self.xid = xid
        self.secs = secs
        self.flags = flags
        self.ciaddr = ciaddr
        self.yiaddr = yiaddr
        self.giaddr = giaddr
        self.chaddr = chaddr
        self.mac = chaddr[:6].hex(":")
        self.options = options
        self.msgtype = msgtype

    @property
    def relayed(self) -> bool:
        return self.giaddr != ZERO_IP


def _options(data: bytes, into: dict[int, bytes]) -> int:
    """Read options from `data` into `into` (repeated options concatenate, RFC 3396);
    return the overload value (option 52) if present, else 0."""
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == OPT_PAD:
            i += 1
            continue
        if code == OPT_END:
            break
        if i + 1 >= n:
            raise Malformed(f"option {code} cut off before its length")
        length = data[i + 1]
        end = i + 2 + length
        if end > n:
            raise Malformed(f"option {code} claims {length} bytes, {n - i - 2} left")
        value = data[i + 2 : end]
        into[code] = into[code] + value if code in into else value
        i = end
    else:
        if n:
            raise Malformed("options do not end with an END option")
    overload = into.get(OPT_OVERLOAD)
    if overload is not None:
        if len(overload) != 1 or overload[0] not in (1, 2, 3):
            raise Malformed(f"bad option-overload value {overload.hex()}")
        return overload[0]
    return 0


def peek_mac(raw: bytes) -> bytes:
    """The client hardware address of a datagram, unparsed: enough to put the inventory's
    nodes first in the queue before anything is checked."""
    return raw[28:34]


def parse(raw: bytes) -> Request:
    """A BOOTREQUEST with a DHCP message type; Malformed otherwise."""
    if len(raw) < HEADER.size:
        raise Malformed(f"{len(raw)} bytes is shorter than a BOOTP header ({HEADER.size})")
    if len(raw) > MAX_PACKET:
        raise Malformed(f"{len(raw)} bytes is longer than {MAX_PACKET}")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, _siaddr, giaddr, chaddr, sname, file, cookie) = (
        HEADER.unpack_from(raw)
    )
    if op != BOOTREQUEST:
        raise Malformed(f"op code {op} is not BOOTREQUEST")
    if htype != 1 or hlen != 6:
        raise Malformed(f"hardware type {htype}/length {hlen} is not Ethernet")
    if cookie != COOKIE:
        raise Malformed("no DHCP magic cookie (plain BOOTP is not served)")
    if hops > 16:
        raise Malformed(f"{hops} relay hops")
    options: dict[int, bytes] = {}
    overload = _options(raw[HEADER.size :], options)
    if overload & 1:
        _options(file, options)
    if overload & 2:
        _options(sname, options)
    mt = options.get(OPT_MSGTYPE)
    if mt is None or len(mt) != 1:
        raise Malformed("no DHCP message type")
    if mt[0] not in (DISCOVER, REQUEST, DECLINE, RELEASE, INFORM):
        raise Malformed(f"message type {mt[0]} is not one a client sends")
    return Request(raw, hops, xid, secs, flags, ciaddr, yiaddr, giaddr, chaddr, options, mt[0])
