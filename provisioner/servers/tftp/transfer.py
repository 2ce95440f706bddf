"""One read transfer: a socket of its own (the server's TID) and the RFC 1350/7440 sender.

Block numbers are tracked as absolute integers and put on the wire modulo 65536, so files
past 32 MB at 512-byte blocks roll over to block 0 and keep going. A window of blocks is
sent, and the ACK that comes back says where the next window starts (a short ACK after a
gap restarts from the gap). A duplicate ACK is answered only once the retransmission timeout
has passed since the last send: never straight away, which is what breeds the sorcerer's
apprentice storm.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from dataclasses import dataclass

from .packets import ACK, ERR_TID, ERROR, error_packet
from .payload import Payload

_SEG = struct.Struct("=H")
_SOL_UDP = getattr(socket, "SOL_UDP", 17)
_UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)  # Linux value; Python 3.11 lacks it
_GSO_MAX_SEGMENTS, _GSO_MAX_BYTES = 64, 65000
# Retransmission timer: TCP-style, from the measured round trip (never above the timeout,
# which would make each lost packet on a LAN cost whole seconds: curl asks for 6), doubling
# on each silent retry up to past the client's own timer. The backoff matters: atftp answers
# only the first repeat of a block it has and then waits for its timer (5 s) to run out with
# no packet from us, so resends every second would keep it silent until we gave up.
MIN_RTO, _FIRST_RTO = 0.2, 0.5
_CLIENT_TIMER = 6.0  # past the 5 s of atftp and tftp-hpa when the client negotiated none


class _Gso:
    """Whether UDP GSO works here; cleared on the first refusal (old kernel, no offload)."""

    ok = True


_gso = _Gso()
_ERR_TID = error_packet(ERR_TID, "unknown transfer ID")

DONE = "ok"
PROBED = "size probe"  # the client ended the transfer at the OACK
LAST_ACK_MISSING = "sent, last ACK missing"


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
    """`sock` is connected to the peer (the kernel filters and routes once); `strays` is an
    unconnected socket on the same port that only ever sees other senders."""

    __slots__ = (
        "sock",
        "strays",
        "peer",
        "path",
        "node",
        "payload",
        "packets",
        "blocks",
        "window",
        "timeout",
        "rto",
        "max_rto",
        "srtt",
        "patience",
        "oack",
        "acked",
        "sent_to",
        "last_send",
        "last_heard",
        "retries",
        "retransmits",
        "started",
        "outcome",
    )

    def __init__(
        self,
        sock: socket.socket,
        strays: socket.socket,
        peer: tuple[str, int],
        path: str,
        node: str | None,
        payload: Payload,
        window: int,
        timeout: float,
        patience: float,
        oack: bytes | None,
        negotiated_timeout: bool = False,
    ):
        self.sock = sock
        self.strays = strays
        self.peer = peer
        self.path = path
        self.node = node
        self.payload = payload
        self.packets = payload.packets
        self.blocks = payload.blocks
        self.window = window
        self.timeout = timeout
        self.max_rto = 2 * timeout if negotiated_timeout else max(timeout, _CLIENT_TIMER)
        # The OACK is left to the client's timer: a lost OACK brings the request again
        # (answered at once), a lost ACK 0 brings ACK 0 again. An early second OACK of ours
        # would abort atftp.
        self.rto = self.max_rto if oack is not None else min(timeout, _FIRST_RTO)
        self.srtt = 0.0
        # Silence from the client we wait out before giving up: a few of its own timers.
        self.patience = max(patience, 4 * self.max_rto)
        self.oack = oack
        # Block 0 is the OACK: it is "unacknowledged" (acked = -1) until the client's ACK 0.
        self.acked = -1 if oack is not None else 0
        self.sent_to = self.acked
        self.last_send = 0.0
        self.retries = 0
        self.retransmits = 0
        self.started = self.last_heard = time.monotonic()
        self.outcome: str | None = None

    def send_window(self, now: float) -> None:
        first = self.acked + 1
        try:
            if first == 0:
                self.sock.send(self.oack)  # type: ignore[arg-type]
                self.sent_to = 0
            else:
                last = min(self.acked + self.window, self.blocks)
                if last > first and _gso.ok:
                    self._send_segmented(first, last)
                else:
                    packet, send = self.payload.packet, self.sock.send
                    for n in range(first, last + 1):
                        send(packet(n))
                        self.sent_to = n
        except OSError:
            pass  # a full buffer or an unreachable peer: the timeout resends
        self.last_send = now

    def _send_segmented(self, first: int, last: int) -> None:
        """A window in as few syscalls as UDP GSO allows: the kernel cuts the concatenated
        packets back into one datagram each (every packet but the file's last is full size)."""
        payload = self.payload
        seg = payload.blksize + 4
        per_call = min(_GSO_MAX_SEGMENTS, _GSO_MAX_BYTES // seg)
        if per_call < 2:
            per_call = 1
        cmsg = [(_SOL_UDP, _UDP_SEGMENT, _SEG.pack(seg))]
        n = first
        while n <= last:
            end = min(n + per_call - 1, last)
            batch = [payload.packet(i) for i in range(n, end + 1)]
            if len(batch) == 1:
                self.sock.send(batch[0])
            else:
                try:
                    self.sock.sendmsg(batch, cmsg)
                except OSError as e:
                    if e.errno not in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                        raise
                    _gso.ok = False  # no GSO on this path: one datagram per packet from now on
                    for p in batch:
                        self.sock.send(p)
            self.sent_to = end
            n = end + 1

    def readable(self, now: float, buf: bytearray) -> bool:
        """Handle one datagram from the peer, read into the loop's `buf` (no allocation per
        block); True when the transfer has ended (.outcome)."""
        try:
            size = self.sock.recv_into(buf)
        except OSError:
            return False
        self.last_heard = now
        if size < 4 or buf[0]:
            return False
        op, blk = buf[1], buf[2] << 8 | buf[3]
        if op == ACK:
            acked = self.acked
            n = acked + ((blk - acked) & 0xFFFF)
            if n == acked:
                if now - self.last_send >= self.rto:
                    self.retransmits += 1
                    self.send_window(now)
                return False
            if n > self.sent_to:
                return False  # an ACK for something never sent: stale or bogus
            self.acked = n
            if self.retries == 0:  # Karn: only a window sent once gives a clean RTT sample
                sample = now - self.last_send
                self.srtt = sample if self.srtt == 0.0 else 0.875 * self.srtt + 0.125 * sample
            else:
                self.retries = 0
            self.rto = min(self.timeout, max(MIN_RTO, 4 * self.srtt))
            if n >= self.blocks:
                self.outcome = DONE
                return True
            if self.window == 1:  # the lock-step common case, without send_window's loop
                n += 1
                packets = self.packets  # the prebuilt packet when there is one, without a call
                p = packets[n] if packets is not None else None
                try:
                    self.sock.send(p if p is not None else self.payload.packet(n))
                except OSError:
                    pass  # the timeout resends
                self.sent_to = n
                self.last_send = now
                return False
            self.send_window(now)
            return False
        if op == ERROR:
            if self.acked < 0:
                # PXE ROMs ask for tsize, read the OACK and abort: a probe, not a failure.
                self.outcome = PROBED
                return True
            msg = bytes(buf[4:size]).split(b"\0", 1)[0].decode("ascii", "replace")
            self.outcome = f"client error {blk}: {msg}" if msg else f"client error {blk}"
            return True
        return False

    def stray(self) -> None:
        """A datagram from anyone but the peer reached our port: ERROR 5 back, carry on."""
        try:
            _data, addr = self.strays.recvfrom(2048)
            self.strays.sendto(_ERR_TID, addr)
        except OSError:
            pass

    def tick(self, now: float) -> bool:
        """Retransmit once the RTO passes in silence; True when the client is given up on
        (nothing heard from it for `patience` seconds)."""
        if now - self.last_send < self.rto:
            return False
        if now - self.last_heard >= self.patience:
            # Every block went out and all but the last were ACKed: most likely the client has
            # the file and its final ACK was lost (it does not resend that one).
            last_unconfirmed = 0 < self.acked == self.blocks - 1 and self.sent_to == self.blocks
            self.outcome = LAST_ACK_MISSING if last_unconfirmed else "timeout"
            return True
        self.retries += 1
        self.retransmits += 1
        self.rto = min(self.max_rto, self.rto * 2)
        self.send_window(now)
        return False

    def asked_again(self, now: float) -> None:
        """The client repeated its request: our first answer was lost (a client that had it
        would ACK instead), so it goes again at once."""
        self.last_heard = now
        if self.acked <= 0 and now - self.last_send >= MIN_RTO:
            self.retransmits += 1
            self.send_window(now)

    def sent_bytes(self) -> int:
        return max(0, min(self.acked * self.payload.blksize, len(self.payload.data)))
