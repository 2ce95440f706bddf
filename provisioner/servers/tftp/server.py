"""The TFTP server: one epoll loop over the request socket and every transfer's socket.

tftpy's own server loops on select() (capped below 1,024 descriptors) and builds packet
objects per block; this loop keeps tftpy for request parsing and replaces the rest: epoll
scales to any number of transfers, DATA goes out as prebuilt bytes, and timers are a sweep
every 50 ms. Nothing a client sends can raise out of serve_forever().

Nothing a client sends can take more than its share either (cluster.limits): transfers at
once are capped in total and per address, refused beyond with an ERROR; a timeout option
is acknowledged only up to a few seconds; prebuilt packets have a byte budget (payload.py);
and repeated failures are one log line per interval.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

from ...inventory.model import Limits
from ...logs import kv, repeated
from ...nodestate import NodeStateDB
from ...nodestate.writer import BatchWriter
from ..boottree import PathRefused
from ..limits import raise_nofile_limit
from . import packets as P
from .payload import NotServable, PayloadCache
from .transfer import DONE, PROBED, Transfer, TransferStats

log = logging.getLogger("provisioner.tftp")

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; Python 3.11 lacks the constant
_PKTINFO = struct.Struct("=I4s4s")  # ifindex, spec_dst (local address), addr (header dst)
_SWEEP = 0.05
_MAX_EVENTS = 256  # per poll: Python's default sizes its buffer at 1,023 events every call
_RCVBUF = 4 << 20

Resolver = Callable[[str, str], "Path | bytes | None"]


class TftpServer:
    """A read-only TFTP server over a resolver `(client_ip, path) -> Path | bytes | None`.

    The resolver raises boottree.PathRefused for paths that must never be served; it may
    have a `node_for(client_ip)` method naming the node for the stats."""

    def __init__(
        self,
        listen: str,
        port: int,
        resolver: Resolver,
        db: NodeStateDB | None = None,
        *,
        timeout: float = 1.0,
        patience: float = 15.0,
        reuse_port: bool = False,
        limits: Limits | None = None,
    ):
        self.listen = listen
        self.resolver = resolver
        self.db = db
        self.timeout = timeout
        self.patience = patience
        self.limits = limits = limits or Limits()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        for opt in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, _RCVBUF)
                break
            except OSError:
                continue
        self.sock.bind((listen, port))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._lock = threading.Lock()
        self._stopping = False
        self._running = threading.Event()
        self._stopped = threading.Event()
        self.cache = PayloadCache(limits.tftp_cache_mb << 20)
        self.transfers: dict[int, Transfer] = {}  # by the fd of the socket connected to the peer
        self.strays: dict[int, Transfer] = {}  # by the fd of the unconnected same-port socket
        self.by_peer: dict[tuple[str, int], Transfer] = {}
        self.per_ip: dict[str, int] = {}  # transfers at once by client address
        self._stats: BatchWriter[tuple] | None = None
        self._node_for = getattr(resolver, "node_for", None)

    # -- lifecycle -----------------------------------------------------------------------------
    def serve_forever(self) -> None:
        with self._lock:
            if self._stopping:  # shut down before it ran: shutdown() has closed the sockets
                return
            self._running.set()
        ep: select.epoll | None = None
        try:
            raise_nofile_limit()
            self._stats = BatchWriter(self.db.record_transfers, "tftp-stats") if self.db is not None else None
            self._ep = ep = select.epoll()
            ep.register(self.sock.fileno(), select.EPOLLIN)
            ep.register(self._wake_r.fileno(), select.EPOLLIN)
            log.info("listening", extra=kv(address=self.listen, port=self.port))
            self._loop(ep)
        finally:
            for t in list(self.transfers.values()):
                t.outcome = "shutdown"
                self._end(t)
            if ep is not None:
                ep.close()
            self.sock.close()
            self._wake_r.close()
            self._wake_w.close()
            if self._stats is not None:
                self._stats.close()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serving, from any thread; returns once the loop has ended. Before it ever ran,
        the sockets are closed at once and serve_forever() will return straight away."""
        with self._lock:
            self._stopping = True
            running = self._running.is_set()
        if not running:
            for s in (self.sock, self._wake_r, self._wake_w):
                s.close()
            return
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._stopped.wait()

    # -- the loop ------------------------------------------------------------------------------
    def _loop(self, ep: select.epoll) -> None:
        listener = self.sock.fileno()
        wake = self._wake_r.fileno()
        transfers, strays = self.transfers, self.strays
        buf = bytearray(2048)  # every datagram from a peer is read into this one buffer
        next_sweep = time.monotonic() + _SWEEP
        while not self._stopping:
            events = ep.poll(_SWEEP, _MAX_EVENTS)
            now = time.monotonic()
            for fd, _ in events:
                t = transfers.get(fd)
                if t is not None:
                    try:
                        ended = t.readable(now, buf)
                    except Exception:
                        log.exception("transfer failed", extra=kv(client=t.peer[0], path=t.path))
                        t.outcome, ended = "server error", True
                    if ended:
                        self._end(t)
                elif fd in strays:
                    strays[fd].stray()
                elif fd == listener:
                    self._accept_all(now)
                elif fd == wake:
                    self._wake_r.recv(64)
            if now >= next_sweep:
                next_sweep = now + _SWEEP
                for t in [t for t in transfers.values() if now - t.last_send >= t.rto]:
                    if t.tick(now):
                        self._end(t)

    def _accept_all(self, now: float) -> None:
        for _ in range(64):  # bounded, so a request flood cannot starve running transfers
            try:
                data, anc, _flags, addr = self.sock.recvmsg(P.MAX_REQUEST + 1, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                log.exception("request socket error")
                return
            local = self.listen
            for level, kind, value in anc:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(value) >= _PKTINFO.size:
                    local = socket.inet_ntoa(_PKTINFO.unpack_from(value)[1])
            try:
                self._request(data, addr, local, now)
            except Exception:
                log.exception("request not handled", extra=kv(client=addr[0]))

    # -- requests -------------------------------------------------------------------------------
    def _reply(self, data: bytes, addr: tuple[str, int], local: str) -> None:
        """Answer from the address the request came to (the source is set per packet)."""
        anc = [(socket.IPPROTO_IP, IP_PKTINFO, _PKTINFO.pack(0, socket.inet_aton(local), bytes(4)))]
        try:
            self.sock.sendmsg([data], anc, 0, addr)
        except OSError:
            pass

    def _refuse(self, addr: tuple[str, int], local: str, path: str, code: int, message: str, outcome: str) -> None:
        self._reply(P.error_packet(code, message), addr, local)
        self._record(TransferStats(addr[0], addr[1], path, self._node(addr[0]), 0, 0.0, 0, outcome))

    def _busy(self, addr: tuple[str, int], local: str, path: str, cap: str) -> None:
        """A request over a cap: an ERROR at once (the client may retry later), one log line
        per interval, and no database row (a flood would write one per packet)."""
        self._reply(P.error_packet(P.ERR_DISK, "server busy, try again later"), addr, local)
        log.warning(
            "refused",
            extra=repeated(
                f"tftp busy {cap}", client=addr[0], path=path[:300] or None, cap=cap, transfers=len(self.transfers)
            ),
        )

    def _request(self, data: bytes, addr: tuple[str, int], local: str, now: float) -> None:
        if addr[1] == 0 or len(data) < 2 or data[:2] == b"\0\x05":
            return  # never answer an ERROR, and never port 0: no error ping-pong
        existing = self.by_peer.get(addr)
        if existing is not None:
            existing.asked_again(now)
            return
        if data[:2] == b"\0\x01" and self.per_ip.get(addr[0], 0) >= self.limits.tftp_per_client:
            self._busy(addr, local, "", "per client")  # before parsing: the cheapest answer to a flood
            return
        try:
            req = P.parse_request(data)
        except P.BadPacket as e:
            if data[:2] not in (b"\0\x01", b"\0\x02"):
                log.debug("ignored a non-request", extra=kv(client=f"{addr[0]}:{addr[1]}"))
                return  # no answer to noise: the port must not be a reflector
            log.warning("bad request", extra=repeated("tftp bad request", client=f"{addr[0]}:{addr[1]}", error=e))
            self._reply(P.error_packet(P.ERR_ILLEGAL, "illegal TFTP operation"), addr, local)
            return
        if req.write:
            self._refuse(addr, local, req.filename, P.ERR_ACCESS, "read-only server", "refused: write request")
            return
        if len(self.transfers) >= self.limits.tftp_transfers:
            self._busy(addr, local, req.filename, "transfers")
            return
        try:
            source = self.resolver(addr[0], req.filename)
        except PathRefused as e:
            log.warning(
                "path refused", extra=repeated("tftp path refused", client=addr[0], path=req.filename[:300], error=e)
            )
            self._refuse(addr, local, req.filename[:255], P.ERR_ACCESS, "access violation", f"refused: {e}")
            return
        except Exception:
            log.exception("resolver failed", extra=kv(client=addr[0], path=req.filename[:300]))
            self._refuse(addr, local, req.filename[:255], P.ERR_UNDEFINED, "server error", "server error")
            return
        if source is None:
            self._refuse(addr, local, req.filename, P.ERR_NOT_FOUND, "file not found", "not found")
            return
        neg: list[P.Negotiated] = []

        def blksize_for(size: int) -> int:
            neg.append(P.negotiate(req.options, size, self.limits.tftp_max_timeout))
            return neg[0].blksize

        try:
            payload = self.cache.get(source, req.mode, blksize_for)
        except (NotServable, FileNotFoundError, NotADirectoryError):
            self._refuse(addr, local, req.filename, P.ERR_NOT_FOUND, "file not found", "not found")
            return
        except OSError as e:
            self._refuse(addr, local, req.filename, P.ERR_ACCESS, "access violation", f"refused: {e.strerror}")
            return
        try:
            sock, strays = transfer_sockets(local, addr)
        except OSError as e:
            self.cache.release(payload)
            log.warning("cannot open a transfer socket", extra=repeated("tftp no socket", client=addr[0], error=e))
            self._refuse(addr, local, req.filename, P.ERR_DISK, "server busy, try again", "refused: busy")
            return
        n = neg[0]
        t = Transfer(
            sock,
            strays,
            addr,
            req.filename,
            self._node(addr[0]),
            payload,
            n.windowsize,
            n.timeout or self.timeout,
            self.patience,
            n.oack,
            n.timeout is not None,
        )
        self.transfers[sock.fileno()] = t
        self.strays[strays.fileno()] = t
        self.by_peer[addr] = t
        self.per_ip[addr[0]] = self.per_ip.get(addr[0], 0) + 1
        self._ep.register(sock.fileno(), select.EPOLLIN)
        self._ep.register(strays.fileno(), select.EPOLLIN)
        t.send_window(now)

    # -- the end of a transfer ------------------------------------------------------------------
    def _end(self, t: Transfer) -> None:
        self.transfers.pop(t.sock.fileno(), None)
        self.strays.pop(t.strays.fileno(), None)
        if self.by_peer.get(t.peer) is t:
            del self.by_peer[t.peer]
        left = self.per_ip.pop(t.peer[0], 1) - 1
        if left > 0:
            self.per_ip[t.peer[0]] = left
        for s in (t.sock, t.strays):
            try:
                self._ep.unregister(s.fileno())
            except (OSError, ValueError):
                pass
            s.close()
        self.cache.release(t.payload)
        nbytes = len(t.payload.data) if t.outcome == DONE else t.sent_bytes()
        self._record(
            TransferStats(
                t.peer[0],
                t.peer[1],
                t.path,
                t.node,
                nbytes,
                time.monotonic() - t.started,
                t.retransmits,
                t.outcome or "failed",
            )
        )

    def _node(self, ip: str) -> str | None:
        if self._node_for is None:
            return None
        try:
            return self._node_for(ip)
        except Exception:
            return None

    def _record(self, st: TransferStats) -> None:
        ok = st.outcome in (DONE, PROBED)
        level = logging.INFO if ok else logging.WARNING
        if log.isEnabledFor(level):
            # Every transfer served is a line (each costs its client the whole file); a failure
            # is one line per interval for each outcome whoever causes it, a size probe per
            # client and file (a probe costs its sender one packet).
            fields = {
                "client": f"{st.client}:{st.port}",
                "node": st.node,
                "path": st.path,
                "bytes": st.bytes,
                "seconds": round(st.duration, 3),
                "retransmits": st.retransmits,
                "outcome": st.outcome,
            }
            if st.outcome == DONE:
                log.info("transfer", extra=kv(**fields))
            else:
                key = f"tftp {st.outcome}" + (f" {st.client} {st.path[:300]}" if ok else "")
                log.log(level, "transfer", extra=repeated(key, **fields))
        if self._stats is not None:
            self._stats.put(
                ("tftp", st.client, st.node, st.path, st.bytes, st.duration, st.retransmits, st.outcome, time.time())
            )


def transfer_sockets(local: str, peer: tuple[str, int]) -> tuple[socket.socket, socket.socket]:
    """A socket connected to the peer on a fresh port of the request's local address, and an
    unconnected one bound to the same port: the kernel gives the peer's datagrams to the
    connected socket (more specific) and everyone else's to the other."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((local, 0))
        sock.connect(peer)
        sock.setblocking(False)
        strays = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        sock.close()
        raise
    try:
        strays.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        strays.bind(sock.getsockname())
        strays.setblocking(False)
    except OSError:
        strays.close()
        sock.close()
        raise
    return sock, strays


def check_port_free(listen: str, port: int) -> None:
    """Raise OSError (EADDRINUSE) if anything holds the UDP port. Sockets that will share a
    port with SO_REUSEPORT bind even beside another such group (another server left
    running), so the first of them checks with a plain bind."""
    if port == 0:
        return
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind((listen, port))
    finally:
        probe.close()


def listen_address(value: str) -> str:
    """A listen address as the socket layer wants it ("" and "*" mean all addresses)."""
    return "0.0.0.0" if value in ("", "*") else str(IPv4Address(value))
