"""TFTP request parsing and option negotiation on top of tftpy's packet classes.

tftpy decodes RRQ/WRQ and encodes OACK and ERROR; what it lacks is added here: windowsize
(RFC 7440), the real blksize ceiling (65464, where tftpy accepts up to 65536 and then dies
sending), timeout (RFC 2349), and answering only the options the client asked for.
DATA packets are not built through tftpy: the hot path sends prebuilt bytes (see payload.py).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from tftpy.TftpPacketFactory import TftpPacketFactory
from tftpy.TftpPacketTypes import (
    TftpPacketERR,
    TftpPacketOACK,
    TftpPacketRRQ,
    TftpPacketWRQ,
)

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6

MIN_BLKSIZE, MAX_BLKSIZE = 8, 65464  # RFC 2348; 65464 + headers fills one IPv4 datagram
MAX_WINDOW = 64  # RFC 7440 lets the server answer a smaller window; bounds bursts
MIN_TIMEOUT, MAX_TIMEOUT = 1, 255  # RFC 2349, seconds
MAX_REQUEST = 1024  # a request is a name, a mode and a few options; more is garbage

ERR_UNDEFINED, ERR_NOT_FOUND, ERR_ACCESS, ERR_DISK, ERR_ILLEGAL, ERR_TID = 0, 1, 2, 3, 4, 5

_factory = TftpPacketFactory()


class BadPacket(ValueError):
    """A datagram that is not a well-formed TFTP request."""


@dataclass(frozen=True)
class Request:
    write: bool
    filename: str
    mode: str  # "octet" or "netascii"
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Negotiated:
    """Transfer parameters, and the OACK to send (None when the client asked for no option
    we accept: then DATA 1 comes first, as plain RFC 1350 clients expect)."""

    blksize: int = 512
    windowsize: int = 1
    timeout: float | None = None
    oack: bytes | None = None


def parse_request(data: bytes) -> Request:
    """An RRQ/WRQ decoded by tftpy; anything tftpy cannot decode is a BadPacket."""
    if len(data) < 4 or len(data) > MAX_REQUEST:
        raise BadPacket(f"request of {len(data)} bytes")
    if data[1] not in (RRQ, WRQ) or data[0] != 0:
        raise BadPacket("not a request")
    if data[-1] != 0:
        raise BadPacket("request not NUL-terminated")
    try:
        pkt = _factory.parse(data)
    except Exception as e:  # tftpy raises TftpException, struct.error, UnicodeDecodeError...
        raise BadPacket(f"malformed request: {e}") from None
    assert isinstance(pkt, (TftpPacketRRQ, TftpPacketWRQ))
    if pkt.mode not in ("octet", "netascii"):
        raise BadPacket(f"unsupported mode {pkt.mode!r}")
    options = {str(k).lower(): str(v) for k, v in pkt.options.items()}
    return Request(write=pkt.opcode == WRQ, filename=pkt.filename, mode=pkt.mode, options=options)


def _int(value: str) -> int | None:
    try:
        return int(value, 10)
    except ValueError:
        return None


def negotiate(options: dict[str, str], size: int) -> Negotiated:
    """Accept what we can of the client's options; an option out of range or not a number is
    dropped from the answer, except blksize and windowsize above our limits, which are
    lowered (both RFCs allow the server to answer a smaller value)."""
    accepted: dict[str, str] = {}
    blksize, window, timeout = 512, 1, None
    v = _int(options.get("blksize", ""))
    if v is not None and v >= MIN_BLKSIZE:
        blksize = min(v, MAX_BLKSIZE)
        accepted["blksize"] = str(blksize)
    v = _int(options.get("windowsize", ""))
    if v is not None and v >= 1:
        window = min(v, MAX_WINDOW)
        accepted["windowsize"] = str(window)
    v = _int(options.get("timeout", ""))
    if v is not None and MIN_TIMEOUT <= v <= MAX_TIMEOUT:
        timeout = float(v)
        accepted["timeout"] = str(v)
    if "tsize" in options and _int(options["tsize"]) is not None:
        accepted["tsize"] = str(size)
    oack = None
    if accepted:
        pkt = TftpPacketOACK()
        pkt.options = accepted
        oack = pkt.encode().buffer
    return Negotiated(blksize, window, timeout, oack)


class _ErrorPacket(TftpPacketERR):
    """tftpy's ERROR with our own message (tftpy only sends its fixed texts)."""

    def __init__(self, code: int, message: str):
        super().__init__()
        self.errorcode = code
        self.errmsgs = {code: message.encode("ascii", "replace")[:200]}


def error_packet(code: int, message: str) -> bytes:
    return _ErrorPacket(code, message).encode().buffer


def data_header(block: int) -> bytes:
    return struct.pack("!HH", DATA, block & 0xFFFF)
