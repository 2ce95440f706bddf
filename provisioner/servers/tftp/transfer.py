"""One read transfer: a socket of its own (the server's TID) and the RFC 1350/7440 sender.

Block numbers are tracked as absolute integers and put on the wire modulo 65536, so files
past 32 MB at 512-byte blocks roll over to block 0 and keep going. A window of blocks is
sent, and the ACK that comes back says where the next window starts (a short ACK after a
gap restarts from the gap). A duplicate ACK is answered only if the window has gone
unanswered for a while: never twice in a row, which is what breeds the sorcerer's
apprentice storm.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

from .packets import ACK, ERR_TID, ERROR, error_packet
from .payload import Payload

_UNPACK = struct.Struct("!HH").unpack_from
_ERR_TID = error_packet(ERR_TID, "unknown transfer ID")

DONE = "ok"


@dataclass(frozen=True)
class TransferStats:
    """What happened to one request; logged and written to the node-state store."""

    client: str
    port: int
    path: str
    node: str | None
    bytes: int
    duration: float
    retransmits: int
    outcome: str  # "ok", "timeout", "client error: ...", "not found", "refused: ...", ...


class Transfer:
    __slots__ = ("sock", "peer", "path", "node", "payload", "packets", "blocks", "window",
                 "timeout", "dup_gap", "max_retries", "oack", "acked", "sent_to", "last_send",
                 "retries", "retransmits", "started", "outcome")

    def __init__(self, sock: socket.socket, peer: tuple[str, int], path: str, node: str | None,
                 payload: Payload, window: int, timeout: float, max_retries: int,
                 oack: bytes | None):
        self.sock = sock
        self.peer = peer
        self.path = path
        self.node = node
        self.payload = payload
        self.packets = payload.packets
        self.blocks = payload.blocks
        self.window = window
        self.timeout = timeout
        self.dup_gap = timeout / 4
        self.max_retries = max_retries
        self.oack = oack
        # Block 0 is the OACK: it is "unacknowledged" (acked = -1) until the client's ACK 0.
        self.acked = -1 if oack is not None else 0
        self.sent_to = self.acked
        self.last_send = 0.0
        self.retries = 0
        self.retransmits = 0
        self.started = time.monotonic()
        self.outcome: str | None = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def send_window(self, now: float) -> None:
        first = self.acked + 1
        try:
            if first == 0:
                self.sock.sendto(self.oack, self.peer)  # type: ignore[arg-type]
                self.sent_to = 0
            else:
                last = min(self.acked + self.window, self.blocks)
                packets, payload, sendto, peer = self.packets, self.payload, self.sock.sendto, self.peer
                for n in range(first, last + 1):
                    p = packets[n]
                    sendto(p if p is not None else payload.packet(n), peer)
                    self.sent_to = n
        except OSError:
            pass  # a full buffer or an unreachable peer: the timeout resends
        self.last_send = now

    def readable(self, now: float) -> bool:
        """Handle one datagram; True when the transfer has ended (see .outcome)."""
        try:
            data, addr = self.sock.recvfrom(2048)
        except OSError:
            return False
        if addr != self.peer:
            try:
                self.sock.sendto(_ERR_TID, addr)
            except OSError:
                pass
            return False
        if len(data) < 4:
            return False
        op, blk = _UNPACK(data)
        if op == ACK:
            acked = self.acked
            n = acked + ((blk - acked) & 0xFFFF)
            if n == acked:
                if now - self.last_send >= self.dup_gap:
                    self.retransmits += 1
                    self.send_window(now)
                return False
            if n > self.sent_to:
                return False  # an ACK for something never sent: stale or bogus
            self.acked = n
            self.retries = 0
            if n >= self.blocks:
                self.outcome = DONE
                return True
            self.send_window(now)
            return False
        if op == ERROR:
            msg = data[4:].split(b"\0", 1)[0].decode("ascii", "replace")
            self.outcome = f"client error {blk}: {msg}" if msg else f"client error {blk}"
            return True
        return False

    def tick(self, now: float) -> bool:
        """Retransmit after a silent timeout; True when the client is given up on."""
        if now - self.last_send < self.timeout:
            return False
        self.retries += 1
        if self.retries > self.max_retries:
            self.outcome = "timeout"
            return True
        self.retransmits += 1
        self.send_window(now)
        return False

    def sent_bytes(self) -> int:
        return max(0, min(self.acked * self.payload.blksize, len(self.payload.data)))
