"""The DHCP / ProxyDHCP server: one thread, non-blocking sockets bound to the provisioning
interface, answers per RFC 2131 with PXE boot information.

Hot path for an inventory node: parse (wire.py), look the MAC up, copy the cached reply
template and patch it (reply.py). Nothing is written to disk for it; its "dhcp" boot stage
goes to the state database in batches from a writer thread, and so do sightings of unknown
MACs. Strangers cannot crowd the nodes out: each round reads what is queued, answers the
inventory's MACs first and at most STRANGER_BUDGET others (the rest are shed), so a flood of
random MACs is read off the socket faster than it arrives instead of filling its buffer.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

from ...inventory import Inventory, Node
from ...logs import kv, repeated
from ...nodestate import NodeStateDB
from ...nodestate.writer import BatchWriter
from ...paths import State, image_root
from ..service import Service
from ..stages import StageWriter
from . import netif, pxe, reply, wire
from .bootanswer import BootAnswers
from .leases import DynamicPool
from .ra import RouterAdvertiser

log = logging.getLogger("provisioner.dhcp")

PROXY_PORT = 4011
# Every lease notes a "dhcp" stage; in a boot storm (or under perfdhcp) that is thousands a
# second, so they are gathered for this long and written in one transaction.
STAGE_GATHER = 0.2
# Packets read per round, and of those, from MACs outside the inventory, answered at most.
READ_BATCH = 256
STRANGER_BUDGET = 64
# A sighting of an unknown MAC is queued once per this many seconds per MAC; sightings
# beyond DISCOVERY_QUEUE waiting for the disk are dropped.
SEEN_REPEAT = 10.0
DISCOVERY_QUEUE = 10000
CLIENT_PORT = 68
BROADCAST = "255.255.255.255"

Answer = tuple[bytes, tuple[str, int]]
# A sighting of an unknown MAC: (mac, arch, uuid, ip, at)
Sighting = tuple[str, int | None, str | None, str | None, float]
# Takes a PXE-booting unknown MAC on for adoption under `cluster.discovery.mode: auto`, given
# the policy's rate (adoptions a minute): True when it will be a node (its next DISCOVER is
# answered after serve reloads the edited inventory), False when it waits as discovered.
# actions.discovery.AutoAdopter, handed in by whoever starts the server, since servers never
# import the actions above them; it returns at once, the adoption runs off the packet loop.
Adopter = Callable[[str, int], bool]


@dataclass(frozen=True)
class Static:
    """An inventory node as the DHCP server sees it."""

    node: Node
    ip: IPv4Address
    packed: bytes


class DhcpServer(Service):
    """DHCP (or, with proxy=True or cluster.dhcp.mode "proxy", ProxyDHCP) for the cluster.

    `listen` is the server's own address (server identifier, default next-server); with
    "0.0.0.0" the interface's address in the provisioning subnet is used.
    """

    name = "dhcp"

    def __init__(
        self,
        inventory: Inventory,
        state: State,
        interface: str | None,
        listen: str,
        port: int = 67,
        db: NodeStateDB | None = None,
        proxy: bool | None = None,
        adopt: Adopter | None = None,
    ):
        super().__init__()
        net = inventory.cluster.network
        self.link = netif.find(interface or net.interface, listen, net.subnet)
        self.server_ip = IPv4Address(listen) if listen not in ("", "0.0.0.0") else self.link.address.ip
        self.server_id = self.server_ip.packed
        self.proxy = inventory.cluster.dhcp.mode == "proxy" if proxy is None else proxy
        self.adopt = adopt
        self.db = db if db is not None else NodeStateDB(state.db)
        self.pool = DynamicPool(inventory, self.db)
        self.stages = StageWriter(self.db, gather=STAGE_GATHER)
        self.seen: dict[str, float] = {}  # unknown MAC -> when its sighting was last queued
        self.discoveries: BatchWriter[Sighting] = BatchWriter(
            lambda rows: self.db.record_discoveries(rows, [], keep=self.discovered_keep),
            "discovery-writer",
            STAGE_GATHER,
            DISCOVERY_QUEUE,
        )
        self.boot = BootAnswers(state, inventory)
        self.port = port
        self.sockets = [netif.udp_socket(self.link.name, port)]
        if self.proxy:
            self.sockets.append(netif.udp_socket(self.link.name, PROXY_PORT))
        self.ra = None if self.proxy else self._advertiser()
        self._wake_r, self._wake_w = os.pipe()
        self._lock = threading.Lock()
        self._stopping = False
        self._closed = False
        self._stopped = threading.Event()
        self._stopped.set()
        self.packets = {"received": 0, "answered": 0, "dropped": 0, "errors": 0, "shed": 0}
        self.reload(inventory)
        log.info(
            "listening",
            extra=kv(
                mode="proxy" if self.proxy else "full",
                interface=self.link.name,
                address=self.link.address,
                server_id=self.server_ip,
            ),
        )

    def _advertiser(self) -> RouterAdvertiser | None:
        try:
            return RouterAdvertiser(self.link)
        except OSError as e:  # IPv6 off on this link: iPXE will not wait for an RA either
            log.info("no IPv6 router advertisements", extra=kv(interface=self.link.name, error=e))
            return None

    def counters(self) -> dict[str, int]:
        """Packets by outcome and by message type."""
        return dict(self.packets)

    # -- configuration ---------------------------------------------------------------------------
    def reload(self, inventory: Inventory) -> None:
        """Take a new inventory; cached reply templates are dropped (rebuilt on demand)."""
        self.inventory = inventory
        self.static = {
            i.mac: Static(n, i.ip, i.ip.packed) for n in inventory.nodes for i in n.interfaces if i.mac and i.ip
        }
        self.known = {bytes.fromhex(mac.replace(":", "")) for mac in self.static}
        subnet = inventory.cluster.network.subnet
        self.subnet_bits = (int(subnet.network_address), int(subnet.netmask))
        self.templates: dict[tuple, bytes] = {}
        self.pool.set_inventory(inventory)
        c = inventory.cluster
        self.master = str(c.network.master)
        self.lease_time = c.dhcp.lease_time
        self.discovered_keep = c.retention.discovered
        self.boot.reload(inventory)

    # -- the loop --------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        with self._lock:
            if self._stopping:
                return
            self._stopped.clear()
        sel = selectors.DefaultSelector()
        for s in self.sockets:
            sel.register(s, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        if self.ra is not None:
            sel.register(self.ra.sock, selectors.EVENT_READ)
        self.ready.set()
        try:
            while not self._stopping:
                for key, _ in sel.select():
                    if key.fileobj == self._wake_r:
                        continue
                    if self.ra is not None and key.fileobj is self.ra.sock:
                        self.ra.answer()
                        continue
                    self._drain(key.fileobj)  # type: ignore[arg-type]
        finally:
            sel.close()
            self._close()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serve_forever (from another thread) and return once it has stopped; release
        the sockets even if it never ran."""
        with self._lock:
            self._stopping = True
            running = not self._stopped.is_set()
        if running:
            os.write(self._wake_w, b"x")
            self._stopped.wait()
        else:
            self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for s in self.sockets:
            s.close()
        if self.ra is not None:
            self.ra.close()
        self.stages.close()
        self.discoveries.close()
        log.info(
            "stopped", extra=kv(**self.packets, **{f"discovered_{k}": v for k, v in self.discoveries.counts.items()})
        )
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _drain(self, sock: socket.socket) -> None:
        """One round: read what is queued (bounded, so the other socket and shutdown get their
        turn), answer the inventory's MACs, then at most STRANGER_BUDGET others."""
        got: list[tuple[bytes, tuple[str, int]]] = []
        for _ in range(READ_BATCH):
            try:
                got.append(sock.recvfrom(wire.MAX_PACKET + 1))
            except (BlockingIOError, InterruptedError):
                break
        self.packets["received"] += len(got)
        known = [p for p in got if wire.peek_mac(p[0]) in self.known]
        strangers = [p for p in got if wire.peek_mac(p[0]) not in self.known]
        self.packets["shed"] += max(0, len(strangers) - STRANGER_BUDGET)
        port = sock.getsockname()[1]
        for data, peer in known + strangers[:STRANGER_BUDGET]:
            self._answer_one(sock, data, peer, port)

    def _answer_one(self, sock: socket.socket, data: bytes, peer: tuple[str, int], port: int) -> None:
        try:
            answer = self.handle(data, peer, port)
        except wire.Malformed as e:
            self.packets["dropped"] += 1
            log.warning(
                "dropped a malformed packet", extra=repeated("dhcp malformed", peer=f"{peer[0]}:{peer[1]}", error=e)
            )
            return
        except Exception:
            self.packets["errors"] += 1
            log.exception("error answering; packet dropped", extra=repeated("dhcp error", peer=f"{peer[0]}:{peer[1]}"))
            return
        if answer is not None:
            try:
                sock.sendto(*answer)
                self.packets["answered"] += 1
            except OSError as e:
                log.warning("could not send", extra=repeated("dhcp send", to=f"{answer[1][0]}:{answer[1][1]}", error=e))

    # -- discovered MACs -------------------------------------------------------------------------
    def _saw(self, req: wire.Request, client: pxe.Client, ip: str | None) -> None:
        """Queue a sighting of an unknown booting MAC: once per SEEN_REPEAT per MAC unless it
        brings its address; the writer thread records a batch in one transaction."""
        now = time.monotonic()
        if ip is None and now - self.seen.get(req.mac, -SEEN_REPEAT) < SEEN_REPEAT:
            return
        if len(self.seen) >= DISCOVERY_QUEUE:  # a random-MAC flood: forget, at worst a row again
            self.seen.clear()
        self.seen[req.mac] = now
        self.discoveries.put((req.mac, client.arch, client.uuid, ip, time.time()))

    # -- answering -------------------------------------------------------------------------------
    def handle(self, data: bytes, peer: tuple[str, int], port: int) -> Answer | None:
        req = wire.parse(data)
        kind = wire.MESSAGE_NAMES.get(req.msgtype, "other").lower()
        self.packets[kind] = self.packets.get(kind, 0) + 1
        network, mask = self.subnet_bits
        if req.relayed and int.from_bytes(req.giaddr, "big") & mask != network:
            log.info("ignored: no subnet for the relay", extra=kv(mac=req.mac, relay=IPv4Address(req.giaddr)))
            return None
        client = pxe.classify(req)
        if self.proxy:
            return self._proxy(req, client, peer, port)
        handler: Callable = {
            wire.DISCOVER: self._discover,
            wire.REQUEST: self._request,
            wire.INFORM: self._inform,
            wire.RELEASE: self._release,
            wire.DECLINE: self._decline,
        }[req.msgtype]
        return handler(req, client)

    def _destination(self, req: wire.Request, msgtype: int) -> tuple[str, int]:
        if req.relayed:
            return socket.inet_ntoa(req.giaddr), self.port
        if req.ciaddr != wire.ZERO_IP and msgtype != wire.NAK:
            return socket.inet_ntoa(req.ciaddr), CLIENT_PORT
        return BROADCAST, CLIENT_PORT

    def _common_options(self, image: str | None, kind: str) -> list[tuple[int, bytes]]:
        """Options shared by every node of an image: network, names, NTP, root path, and for
        a lease ("lease", not "inform") its times."""
        c = self.inventory.cluster
        net = c.network
        opts = [(1, net.subnet.netmask.packed), (28, net.subnet.broadcast_address.packed)]
        if net.gateway:
            opts.append((3, net.gateway.packed))
        if net.dns:
            opts.append((6, b"".join(d.packed for d in net.dns)))
        opts.append((15, c.domain.encode()))
        ntp = [t for t in c.time_servers if _is_ipv4(t)]
        if ntp:
            opts.append((42, b"".join(IPv4Address(t).packed for t in ntp)))
        if image:  # a fallback: boot configs name the root of the version they pin
            opts.append((17, f"{c.nfs.server}:{image_root(image, None)}".encode()))
        if kind == "lease":
            lt = self.lease_time
            opts += [
                (51, lt.to_bytes(4, "big")),
                (58, (lt // 2).to_bytes(4, "big")),
                (59, (lt * 7 // 8).to_bytes(4, "big")),
            ]
        return opts

    def _answer(
        self,
        req: wire.Request,
        client: pxe.Client,
        msgtype: int,
        kind: str,
        ip: IPv4Address | None = None,
        node: Node | None = None,
        boot: pxe.Boot | None = None,
    ) -> bytes:
        """A reply of `kind` "lease" (OFFER/ACK with an address), "inform" (no address, no
        lease times) or "proxy" (boot information only, `boot` given) from a shared template.
        A booting client refused its boot file gets a lease without boot information."""
        if kind != "proxy":
            boot = self.boot(client, req.mac, node)
        vendor = boot.vendor_class if boot else None
        if kind == "proxy" and boot is not None:
            vendor = b"HTTPClient" if vendor == b"HTTPClient" else b"PXEClient"  # a proxy always says which
        # the NFS root path is for the booted system's DHCP client; iPXE would try to SAN-boot it
        image = node.image if node is not None and kind != "proxy" and not client.boots else None
        key = (msgtype, kind, boot is not None, vendor, image)
        tmpl = self.templates.get(key)
        if tmpl is None:
            opts = [] if kind == "proxy" else self._common_options(image, kind)
            if vendor is not None:
                opts.append((60, vendor))
                if vendor == b"PXEClient":
                    opts.append((43, pxe.PXE_VENDOR_OPTIONS))
            tmpl = self.templates[key] = reply.template(
                msgtype, self.server_ip, siaddr=IPv4Address(self.master) if boot else None, options=opts
            )
        extra = reply.tlv(12, node.name.encode()) if node is not None and kind != "proxy" else b""
        return reply.finish(
            tmpl,
            req,
            yiaddr=ip.packed if ip is not None else wire.ZERO_IP,
            file=boot.file if boot else "",
            extra=extra + reply.echoes(req, client.boots),
        )

    def _lease(self, req: wire.Request, client: pxe.Client, msgtype: int, ip: IPv4Address, node: Node | None) -> Answer:
        return self._answer(req, client, msgtype, "lease", ip, node), self._destination(req, msgtype)

    def _nak(self, req: wire.Request, why: str) -> Answer:
        log.info("NAK", extra=kv(mac=req.mac, reason=why))
        tmpl = self.templates.get(("nak",))
        if tmpl is None:
            tmpl = self.templates[("nak",)] = reply.template(wire.NAK, self.server_ip)
        flags = req.flags | 0x8000 if req.relayed else req.flags
        return reply.finish(
            tmpl, req, extra=reply.echoes(req, False), ciaddr=wire.ZERO_IP, flags=flags
        ), self._destination(req, wire.NAK)

    def _unknown(self, req: wire.Request, client: pxe.Client) -> bool:
        """Record an unknown booting MAC; True when it is being adopted (the policy says auto
        and the server was given an adopter), so this DISCOVER goes unanswered."""
        if not client.boots:
            return False
        self._saw(req, client, None)
        policy = self.inventory.cluster.discovery
        return policy.mode == "auto" and self.adopt is not None and self.adopt(req.mac, policy.rate)

    def _discover(self, req: wire.Request, client: pxe.Client) -> Answer | None:
        st = self.static.get(req.mac)
        if st is not None:
            return self._lease(req, client, wire.OFFER, st.ip, st.node)
        if self._unknown(req, client):
            return None
        if not client.boots and self.pool.lease_of(req.mac) is None:
            log.debug("ignored DISCOVER: not in the inventory and not PXE booting", extra=kv(mac=req.mac))
            return None
        requested = req.options.get(wire.OPT_REQUESTED_IP)
        ip = self.pool.offer(req.mac, IPv4Address(requested) if requested and len(requested) == 4 else None)
        if ip is None:
            return None
        return self._lease(req, client, wire.OFFER, ip, None)

    def _request(self, req: wire.Request, client: pxe.Client) -> Answer | None:
        sid = req.options.get(wire.OPT_SERVER_ID)
        if sid is not None and sid != self.server_id:
            self.pool.forget_offer(req.mac)  # the client chose another server
            return None
        requested = req.options.get(wire.OPT_REQUESTED_IP)
        if requested is not None and len(requested) != 4:
            raise wire.Malformed("requested-address option is not 4 bytes")
        want = requested or (req.ciaddr if req.ciaddr != wire.ZERO_IP else None)
        if want is None:
            raise wire.Malformed("REQUEST names no address (no option 50, no ciaddr)")
        st = self.static.get(req.mac)
        if st is not None:
            if want != st.packed:
                return self._nak(req, f"asked for {IPv4Address(want)}, its address is {st.ip}")
            self.stages.note(
                st.node.name,
                "dhcp",
                f"{st.ip} {client.kind}" + (f" arch {client.arch}" if client.arch is not None else ""),
            )
            return self._lease(req, client, wire.ACK, st.ip, st.node)
        want_ip = IPv4Address(want)
        expected = self.pool.expected(req.mac)
        if want_ip == expected:
            self.pool.commit(req.mac, want_ip, None, self.lease_time)
        elif expected is not None:
            return self._nak(req, f"asked for {want_ip}, its lease is {expected}")
        elif sid is None:
            return None  # INIT-REBOOT/RENEW of a client we do not know: stay silent (RFC 2131 4.3.2)
        elif not (client.boots and self.pool.take(req.mac, want_ip, self.lease_time)):
            return self._nak(req, f"no offer or lease for {want_ip}")
        if client.boots:
            self._saw(req, client, str(want_ip))
        return self._lease(req, client, wire.ACK, want_ip, None)

    def _inform(self, req: wire.Request, client: pxe.Client) -> Answer | None:
        if req.ciaddr == wire.ZERO_IP:
            raise wire.Malformed("INFORM without ciaddr")
        st = self.static.get(req.mac)
        return self._answer(req, client, wire.ACK, "inform", node=st.node if st else None), self._destination(
            req, wire.ACK
        )

    def _release(self, req: wire.Request, client: pxe.Client) -> None:
        if req.ciaddr != wire.ZERO_IP and not self.pool.release(req.mac, IPv4Address(req.ciaddr)):
            log.debug("ignored RELEASE: not the lease holder", extra=kv(mac=req.mac, ip=IPv4Address(req.ciaddr)))

    def _decline(self, req: wire.Request, client: pxe.Client) -> None:
        requested = req.options.get(wire.OPT_REQUESTED_IP)
        if requested is None or len(requested) != 4:
            raise wire.Malformed("DECLINE without a requested address")
        ip = IPv4Address(requested)
        st = self.static.get(req.mac)
        if st is not None and st.ip == ip:
            log.warning("declined: another host uses its address", extra=kv(node=st.node.name, mac=req.mac, ip=ip))
        elif self.pool.decline(req.mac, ip):
            log.warning("declined: another host uses it; skipping it for a while", extra=kv(mac=req.mac, ip=ip))
        else:
            log.debug("ignored DECLINE: not the lease holder", extra=kv(mac=req.mac, ip=ip))

    # -- ProxyDHCP -------------------------------------------------------------------------------
    def _proxy(self, req: wire.Request, client: pxe.Client, peer: tuple[str, int], port: int) -> Answer | None:
        """Boot information only, no address: an OFFER to a DISCOVER on port 67, an ACK to a
        REQUEST on port 4011 (or on 67 when it names us as server)."""
        if not client.boots:
            return None
        st = self.static.get(req.mac)
        if st is None:
            self._saw(req, client, None)
        if req.msgtype == wire.DISCOVER and port != PROXY_PORT:
            msgtype = wire.OFFER
        elif req.msgtype in (wire.REQUEST, wire.INFORM) and (
            port == PROXY_PORT or req.options.get(wire.OPT_SERVER_ID) == self.server_id
        ):
            msgtype = wire.ACK
        else:
            return None
        node = st.node if st else None
        boot = self.boot(client, req.mac, node)
        if boot is None:  # refused (and logged): nothing else to say
            return None
        if node is not None and msgtype == wire.ACK:
            self.stages.note(node.name, "dhcp", f"proxy {client.kind}")
        out = self._answer(req, client, msgtype, "proxy", node=node, boot=boot)
        if port == PROXY_PORT:
            return out, peer
        return out, self._destination(req, msgtype)


def _is_ipv4(text: str) -> bool:
    try:
        IPv4Address(text)
        return True
    except ValueError:
        return False
