"""The HTTP routes: boot scripts, kernels and initramfs, overlay archives, the node API,
admin endpoints and /metrics (URLs fixed in the cross-team contract)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import sqlite3
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    generate_latest,
)

from ...artifacts import layout, secrets
from ...bootfiles import WAIT
from ...facts import FactsInvalid, check
from ...inventory import Inventory, Node, normalize_mac
from ...logs import kv
from ...nodestate import NodeStateDB
from ...nodestate.summary import NodeStatus, latest_boot, node_statuses, runtime_states, timeline
from ...paths import State
from ..boottree import BootTree, PathRefused
from ..stages import STAGE_REPEAT, stage_of
from .access import (
    NOT_ITS_ADDRESS,
    Peer,
    bearer,
    is_admin,
    matches,
    node_addresses,
    node_at,
    secret_refusal,
)
from .files import TrackedFile
from .metrics import StateCollector
from .peeruid import local_uid
from .runtime import RuntimeWatch
from .web import ConsoleActions, WebConsole

log = logging.getLogger("provisioner.http")

T = TypeVar("T")
_STAGE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
FACTS_REJECTED = "facts-rejected"  # the stage a refused facts report leaves, its reason as detail
LEASE_CACHE_SECONDS = 2.0
LEASE_MISS_SECONDS = 0.25  # an address not in the cache: a lease this young may just be missing
MAX_BODY = 256 * 1024
RUNTIME_STAGES = "runtime"  # the node agent's: runtime, runtime-refused, runtime-action-failed...
OCTETS = "application/octet-stream"


@dataclass
class Hooks:
    """What the daemon around the server may plug in."""

    reload: Callable[[], None] | None = None
    dhcp_packets: Callable[[], Mapping[str, int]] | None = None
    slurm_states: Callable[[], Mapping[str, str] | None] | None = None
    console: ConsoleActions | None = None  # what the web console may change (web.py)


class BootApp:
    """Request handlers over a swappable inventory: `reload` replaces it between requests,
    and a transfer in flight keeps the file it opened, so nothing in progress is dropped."""

    def __init__(
        self,
        inventory: Inventory,
        state: State,
        db: NodeStateDB | None = None,
        token: str | None = None,
        hooks: Hooks | None = None,
    ):
        self.inventory = inventory
        self.tree = BootTree(state, inventory)
        self.state = state
        self.db = db
        self.token = token
        self.hooks = hooks or Hooks()
        self.in_flight = 0
        # SQLite calls block: they run on one thread of their own, off the event loop.
        self._dbx = ThreadPoolExecutor(1, thread_name_prefix="http-db")
        self._leases: tuple[float, dict[str, str]] = (0.0, {})
        self.registry = CollectorRegistry()
        self.refused = Counter(
            "provisioner_http_refused",
            "HTTP requests refused (unknown node, not allowed)",
            ["status"],
            registry=self.registry,
        )
        self.registry.register(
            StateCollector(
                db, lambda: self.inventory, self.hooks.dhcp_packets, lambda: self.in_flight, self.hooks.slurm_states
            )
        )
        # Long-polls may hold at most half the connections: the rest stay for boots.
        self.runtime = RuntimeWatch(state, inventory.cluster.limits.http_connections // 2)
        self.web = WebConsole(self, self.hooks.console)

    def reload(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self.tree.inventory = inventory

    def close(self) -> None:
        self._dbx.shutdown(wait=True)

    def make(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.add_routes(
            [
                web.get("/boot/ipxe", self.ipxe_by_address),
                web.get("/boot/{mac}.ipxe", self.ipxe_by_mac),
                web.get("/boot/{path:.+}", self.boot_file),
                web.get("/images/{path:.+}", self.image_file),
                web.get("/overlays/{node}.cpio.gz", self.overlay),
                web.post("/api/v1/stage", self.node_stage),
                web.post("/api/v1/facts", self.node_facts),
                web.get("/api/v1/runtime", self.runtime_poll),
                web.get("/api/v1/runtime/archive", self.runtime_archive),
                web.post("/api/v1/runtime/live", self.runtime_live),
                web.post("/api/v1/runtime/push", self.admin_push),
                web.get("/api/v1/nodes", self.admin_nodes),
                web.get("/api/v1/nodes/{node}/timeline", self.admin_timeline),
                web.post("/api/v1/nodes/{node}/stage", self.admin_stage),
                web.post("/api/v1/reload", self.admin_reload),
                web.get("/metrics", self.metrics),
                *self.web.routes(),
            ]
        )
        app.on_startup.append(self._start_runtime)
        app.on_shutdown.append(self._stop_runtime)
        app.on_startup.append(self.web.start)
        app.on_shutdown.append(self.web.stop)
        return app

    async def _start_runtime(self, _app: web.Application) -> None:
        self.runtime.start()

    async def _stop_runtime(self, _app: web.Application) -> None:
        await self.runtime.stop()

    # -- helpers ---------------------------------------------------------------------------------
    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._dbx, fn, *args)
        except sqlite3.Error as e:
            log.error("node-state DB unavailable", extra=kv(error=e))
            raise web.HTTPServiceUnavailable(text="node-state database unavailable\n") from None

    async def _lease_map(self, ip: IPv4Address | IPv6Address | None = None) -> dict[str, str]:
        """ip -> mac of current DHCP leases, cached briefly (nodes without a static address);
        read again sooner when `ip` is not in it (a node that has just got its lease)."""
        at, leases = self._leases
        max_age = LEASE_CACHE_SECONDS if ip is None or str(ip) in leases else LEASE_MISS_SECONDS
        db = self.db
        if db is None or time.monotonic() - at < max_age:
            return leases
        rows = await self._db(lambda: [(r["ip"], r["mac"]) for r in db.leases()])
        leases = dict(rows)
        self._leases = (time.monotonic(), leases)
        return leases

    async def _node_of(self, peer: Peer) -> Node | None:
        node = node_at(self.inventory, {}, peer)
        return node or node_at(self.inventory, await self._lease_map(peer.ip), peer)

    async def _stage(self, node: str, stage: str, detail: str | None) -> None:
        """A stage a node reports; dropped when a server noted the same stage of the node within
        STAGE_REPEAT (a retried report, a stage both a server and the node saw). The agent's
        runtime stages are all kept: two refreshes a second apart are two events."""
        within = 0.0 if stage.startswith(RUNTIME_STAGES) else STAGE_REPEAT
        if self.db is not None:
            await self._db(self.db.record_stages, [(node, stage, time.time(), detail)], within)

    def _later(self, fn: Callable[..., Any], *args: Any) -> None:
        """A DB write a file transfer does not wait for (queued in order on the DB thread);
        a locked or full database is logged, never in the way of a boot."""
        fut = asyncio.get_running_loop().run_in_executor(self._dbx, fn, *args)
        fut.add_done_callback(_log_db_failure)

    def _refuse(
        self,
        status: type[web.HTTPException],
        reason: str,
        request: web.Request,
        headers: Mapping[str, str] | None = None,
        **fields: Any,
    ) -> web.HTTPException:
        self.refused.labels(str(status.status_code)).inc()
        log.warning(
            reason, extra=kv(client=self._peer(request), path=request.path, status=status.status_code, **fields)
        )
        return status(text=f"{reason}\n", headers=headers)

    async def _send(
        self, request: web.Request, path: Path, node: Node | None, stage: str | None, content_type: str = OCTETS
    ) -> web.StreamResponse:
        """A file, the node's boot stage recorded when a fetch starts from byte 0 and the
        transfer when it ends (sent or aborted)."""
        peer = self._peer(request)
        if not path.is_file():
            if node is not None:  # the node's boot stops here: `doctor` and /metrics say so
                self._failed(peer, request.path, "not found", node.name)
            raise self._refuse(
                web.HTTPNotFound, "no such artifact", request, node=node.name if node else None, file=str(path)
            )
        try:
            first_byte = request.http_range.start
        except ValueError:  # a malformed Range: FileResponse answers 416
            first_byte = -1
        if (
            self.db is not None
            and node is not None
            and stage is not None
            and request.method == "GET"
            and first_byte in (None, 0)
        ):
            self._later(self.db.record_stage, node.name, stage, request.path)

        def begin() -> None:
            self.in_flight += 1

        async def done(resp: web.FileResponse, sent: int, seconds: float, outcome: str) -> None:
            self.in_flight -= 1
            if request.method != "GET":
                return
            name = node.name if node else None
            (log.info if outcome == "ok" else log.warning)(
                "transfer",
                extra=kv(
                    client=peer,
                    node=name,
                    path=request.path,
                    status=resp.status,
                    bytes=sent,
                    seconds=round(seconds, 3),
                    outcome=outcome,
                ),
            )
            if self.db is not None:
                self._later(self.db.record_transfer, "http", str(peer), request.path, sent, seconds, outcome, name)

        return TrackedFile(path, content_type, begin, done)

    def _failed(self, peer: Peer, path: str, outcome: str, node: str) -> None:
        """A node's fetch refused before any byte went out, recorded as a transfer."""
        if self.db is not None:
            self._later(self.db.record_transfer, "http", str(peer), path, 0, 0.0, outcome, node)

    @staticmethod
    def _peer(request: web.Request) -> Peer:
        return Peer.of(request.transport.get_extra_info("peername") if request.transport else None)

    # -- boot ----------------------------------------------------------------------------------------
    async def ipxe_by_mac(self, request: web.Request) -> web.StreamResponse:
        raw = request.match_info["mac"]
        mac = normalize_mac(raw)
        if mac is None:  # not a MAC: a file of that name in the boot tree
            return await self._boot_tree_file(request, f"{raw}.ipxe")
        node = self.inventory.by_mac(mac)
        if node is None:
            return await self._wait(request)
        # Served to anyone (it holds no secret), but only the node's own fetch is its boot.
        peer = self._peer(request)
        own = str(peer.ip) in node_addresses(node, await self._lease_map(peer.ip))
        return await self._send(
            request, layout.ipxe_script(self.state, node.name), node if own else None, "ipxe", "text/plain"
        )

    async def ipxe_by_address(self, request: web.Request) -> web.StreamResponse:
        peer = self._peer(request)
        node = await self._node_of(peer)
        if node is None:
            return await self._wait(request)
        return await self._send(request, layout.ipxe_script(self.state, node.name), node, "ipxe", "text/plain")

    async def _wait(self, request: web.Request) -> web.StreamResponse:
        """A client no inventory names (yet): a copy, picked at random for the jitter, of the
        script that waits, asks DHCP again and chains its own script once it is a node. It
        names no node and holds no secret."""
        return await self._send(
            request, layout.wait_script(self.state, random.randrange(WAIT.variants)), None, None, "text/plain"
        )

    async def boot_file(self, request: web.Request) -> web.StreamResponse:
        return await self._boot_tree_file(request, request.match_info["path"])

    async def _boot_tree_file(self, request: web.Request, rel: str) -> web.StreamResponse:
        """The boot tree over HTTP as over TFTP (bootloaders, per-node boot.ipxe/grub.cfg,
        PXELINUX configs), for UEFI HTTP boot and iPXE chains that prefer HTTP."""
        peer = self._peer(request)
        try:
            path = self.tree(str(peer.ip), rel)
        except PathRefused as e:
            raise self._refuse(web.HTTPNotFound, f"path refused: {e}", request) from None
        if path is None:
            raise self._refuse(web.HTTPNotFound, "no such boot file", request, file=rel)
        node = await self._node_of(peer)
        return await self._send(request, path, node, stage_of(rel) if node else None)

    async def image_file(self, request: web.Request) -> web.StreamResponse:
        # images/IMAGE/FILE (the current version) or images/IMAGE/versions/VERSION/FILE
        return await self._boot_tree_file(request, f"images/{request.match_info['path']}")

    async def overlay(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["node"]
        node = self.inventory.node(name)
        if node is None:
            raise self._refuse(web.HTTPNotFound, "unknown node", request, node=name)
        peer = self._peer(request)
        why = secret_refusal(node, peer, await self._lease_map(peer.ip), self.inventory.cluster.secure)
        if why is not None:
            if why != NOT_ITS_ADDRESS:  # the node's own fetch, refused: its boot record says why
                self._failed(peer, request.path, f"refused: {why}", name)
            raise self._refuse(web.HTTPForbidden, f"secret refused: {why}", request, node=name)
        # No stage here: the node reports "overlay" itself once applied, with the credential
        # this very archive carries (its first reports come right after this fetch).
        return await self._send(request, layout.overlay_archive(self.state, name), node, None)

    # -- node API ------------------------------------------------------------------------------------
    async def _calling_node(self, request: web.Request) -> Node:
        """The node behind a node-API call: at the node's address (from a privileged port in
        secure mode, as for secrets) and presenting the node's report credential, which only
        its secret overlay carries. Anything less changes no record."""
        peer = self._peer(request)
        node = await self._node_of(peer)
        if node is None:
            raise self._refuse(web.HTTPNotFound, "unknown node", request, address=str(peer.ip))
        why = secret_refusal(node, peer, await self._lease_map(peer.ip), self.inventory.cluster.secure)
        if why is not None:
            raise self._refuse(web.HTTPForbidden, f"node API refused: {why}", request, node=node.name)
        presented = bearer(request.headers.get("Authorization"))
        if presented is None:
            raise self._refuse(
                web.HTTPUnauthorized,
                "node API refused: no credential",
                request,
                {"WWW-Authenticate": 'Bearer realm="provisioner node"'},
                node=node.name,
            )
        if not matches(presented, self._credential(node.name)):
            raise self._refuse(web.HTTPForbidden, "node API refused: wrong credential", request, node=node.name)
        return node

    def _credential(self, node: str) -> str | None:
        """The node's report credential (a small local file), or None if it has none yet."""
        try:
            return secrets.read_secret(self.state, secrets.node_credential(node)).decode().strip()
        except (secrets.SecretMissing, UnicodeDecodeError):
            return None

    @staticmethod
    async def _json_object(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json(loads=json.loads)
        except (ValueError, UnicodeDecodeError):
            raise web.HTTPBadRequest(text="body is not JSON\n") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="body must be a JSON object\n")
        return body

    async def _record_posted_stage(self, request: web.Request, node: str) -> web.Response:
        body = await self._json_object(request)
        stage, detail = body.get("stage"), body.get("detail")
        if not isinstance(stage, str) or not _STAGE.match(stage):
            raise web.HTTPBadRequest(text="stage must be a short lowercase name\n")
        if detail is not None and not isinstance(detail, str):
            detail = json.dumps(detail, sort_keys=True)
        await self._stage(node, stage, detail[:1000] if detail else None)
        log.info("stage", extra=kv(node=node, stage=stage))
        return web.json_response({"node": node, "stage": stage})

    async def node_stage(self, request: web.Request) -> web.Response:
        node = await self._calling_node(request)
        return await self._record_posted_stage(request, node.name)

    async def node_facts(self, request: web.Request) -> web.Response:
        """A node's facts, stored only when they pass the rules slurm.conf needs; a bad report is
        refused to that node with the reason, which its timeline keeps (`facts-rejected`)."""
        node = await self._calling_node(request)
        facts = await self._json_object(request)
        try:
            check(node.name, facts)
        except FactsInvalid as e:
            await self._stage(node.name, FACTS_REJECTED, str(e)[:1000])
            raise self._refuse(web.HTTPBadRequest, f"facts refused: {e}", request, node=node.name) from None
        if self.db is not None:
            await self._db(self.db.set_facts, node.name, facts)
        await self._stage(node.name, "registered", None)
        log.info("facts", extra=kv(node=node.name, keys=len(facts)))
        return web.json_response({"node": node.name, "facts": len(facts)})

    # -- runtime overlays (runtime.py) ---------------------------------------------------------------
    async def runtime_poll(self, request: web.Request) -> web.Response:
        """What the node should run (`key value` lines, for the shell agent), as soon as it
        differs from `have` or after `wait` seconds."""
        node = await self._calling_node(request)
        try:
            wait = float(request.query.get("wait", "0"))
        except ValueError:
            raise web.HTTPBadRequest(text="wait must be a number of seconds\n") from None
        have = request.query.get("have", "")
        offer = await self.runtime.poll(node.name, have, wait)
        if offer is None:
            raise self._refuse(web.HTTPNotFound, "no runtime archive", request, node=node.name)
        if request.query.get("archive") == "1" and (offer.sha256 != have or offer.refresh):
            body = self.runtime.archive(node.name, offer)
            if body is not None:
                headers = {"X-Provisioner-Offer": offer.header()}
                return web.Response(body=body, content_type="application/gzip", headers=headers)
        return web.Response(text=offer.text())

    async def runtime_archive(self, request: web.Request) -> web.StreamResponse:
        node = await self._calling_node(request)
        return await self._send(request, layout.runtime_archive(self.state, node.name), node, None)

    async def runtime_live(self, request: web.Request) -> web.Response:
        """The agent's report: the archive it runs (first line `sha256 HASH`) and the hashes of
        its runtime files as they are on the node, for `overlay diff --live`."""
        node = await self._calling_node(request)
        try:
            text = (await request.read()).decode()
        except UnicodeDecodeError:
            raise web.HTTPBadRequest(text="body is not UTF-8 text\n") from None
        first, _, files = text.partition("\n")
        sha = first.removeprefix("sha256 ").strip()
        if not first.startswith("sha256 ") or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise web.HTTPBadRequest(text="first line must be: sha256 HASH\n")
        if self.db is not None:
            await self._db(self.db.set_runtime, node.name, sha, files)
        return web.json_response({"node": node.name, "sha256": sha})

    async def admin_push(self, request: web.Request) -> web.Response:
        """Ask nodes to refresh now (`{"nodes": [...]}`): their waiting polls answer at once."""
        self._admin(request)
        body = await self._json_object(request)
        names = body.get("nodes")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise web.HTTPBadRequest(text="nodes must be a list of node names\n")
        unknown = [n for n in names if self.inventory.node(n) is None]
        if unknown:
            raise web.HTTPNotFound(text=f"no such node: {', '.join(unknown[:10])}\n")
        self.runtime.push(names)
        return web.json_response({"pushed": len(names)})

    # -- admin -----------------------------------------------------------------------------------------
    def _admin(self, request: web.Request) -> None:
        local = Peer.of(request.transport.get_extra_info("sockname") if request.transport else None)
        uid = local_uid(self._peer(request), local)
        if not is_admin(uid, request.headers.get("Authorization"), self.token):
            raise self._refuse(web.HTTPForbidden, "admin endpoint refused", request, uid=uid)

    def _admin_node(self, request: web.Request) -> str:
        self._admin(request)
        name = request.match_info["node"]
        if self.inventory.node(name) is None:
            raise web.HTTPNotFound(text=f"no such node: {name}\n")
        return name

    async def admin_nodes(self, request: web.Request) -> web.Response:
        self._admin(request)
        if self.db is None:
            raise web.HTTPServiceUnavailable(text="no node-state database\n")
        slurm = self.hooks.slurm_states() if self.hooks.slurm_states else None
        db, nodes = self.db, self.inventory.nodes

        def statuses() -> list[NodeStatus]:
            runtime = runtime_states(nodes, db.runtime_shas(), self.runtime.published)
            return node_statuses(nodes, db, slurm, runtime)

        rows = await self._db(statuses)
        return web.json_response([r.as_dict() for r in rows])

    async def admin_timeline(self, request: web.Request) -> web.Response:
        name = self._admin_node(request)
        if self.db is None:
            raise web.HTTPServiceUnavailable(text="no node-state database\n")
        events = await self._db(self.db.timeline, name)
        steps = timeline(latest_boot([dict(e) for e in events]))
        return web.json_response([s.__dict__ for s in steps])

    async def admin_stage(self, request: web.Request) -> web.Response:
        return await self._record_posted_stage(request, self._admin_node(request))

    async def admin_reload(self, request: web.Request) -> web.Response:
        self._admin(request)
        if self.hooks.reload is None:
            raise web.HTTPServiceUnavailable(text="reload is not available\n")
        self.hooks.reload()
        return web.json_response({"reload": "requested"}, status=202)

    async def metrics(self, request: web.Request) -> web.Response:
        body = await self._db(generate_latest, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _log_db_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("node-state DB write failed", exc_info=fut.exception())
