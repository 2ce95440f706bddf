"""The web console at `/` on serve's HTTP port: a cluster view (problems first, counts, a
paginated and filtered node table), a node view (its latest boot, transfers, facts, image
versions, overlay files, plan, logs), live stage updates over server-sent events, and the
few changes an admin makes from a browser (approve a discovered node).

Reading wants a login with the admin credential (the API token) unless cluster.web allows
browsers on the provisioning subnet to read anonymously; changing anything always wants the
login and the session's CSRF token in the form. Pages are rendered server side from shipped
templates (resources.WEB_CONSOLE); the one script only applies the live feed to the page.

What changes state lives in actions/, above the servers: serve's caller hands it in as
ConsoleActions callables, run off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web

from ...artifacts import images, layout
from ...artifacts.overlay_build import read_archive
from ...bmc.console import read_log
from ...errors import UserError
from ...inventory import Inventory, Node
from ...logs import kv, repeated
from ...nodestate import NodeStateDB
from ...nodestate.slurm import SlurmError, node_status
from ...nodestate.summary import NodeStatus, latest_boot, runtime_states, statuses_from, timeline
from ...resources import WEB_CONSOLE
from .access import Peer, matches

if TYPE_CHECKING:
    from .app import BootApp

log = logging.getLogger("provisioner.web")

COOKIE = "provisioner_session"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 256  # the oldest is dropped past this: logins cannot grow memory without bound
MAX_LIVE = 32  # event streams at once; more get 503 (each holds one of serve's connections)
LIVE_POLL = 0.5  # seconds between two looks at the events table while someone watches
LIVE_QUEUE = 256  # events one slow browser may lag behind before it is told to reload
STATUS_TTL = 1.0  # seconds the node table is reused between page views
SLURM_REASONS_TTL = 10.0
PAGE_SIZES = (50, 100, 500)
MAX_PROBLEMS = 200
LOG_LINES = 50
FAILED = re.compile(r"fail|refused|rejected|error")
CSP = "default-src 'self'; frame-ancestors 'none'; form-action 'self'"


@dataclass(frozen=True)
class PlanChange:
    what: str  # added, removed, changed, mode, owner
    path: str
    diff: str


@dataclass(frozen=True)
class ConsoleActions:
    """Changes and computations the console offers, handed in by serve's caller: servers do
    not import the actions above them. Each is blocking and runs on a worker thread; a
    UserError is shown on the page."""

    approve: Callable[[str, str | None], str] | None = None  # (mac, name or None) -> the node's name
    plan: Callable[[str], Sequence[PlanChange] | None] | None = None  # node -> changes (None: never built)
    log_tail: Callable[[str, int], list[str]] | None = None  # node, lines -> its syslog's last lines
    rebuild: Callable[[str], str] | None = None  # node -> what its overlay build did


@dataclass
class Session:
    sid: str
    csrf: str
    expires: float
    flash: str | None = None  # the outcome of the last change, shown once on the next page


class Sessions:
    """Logged-in browsers, in memory (a restart of serve logs everyone out), at most
    MAX_SESSIONS of them."""

    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}

    def new(self) -> Session:
        now = time.time()
        self._by_id = {k: s for k, s in self._by_id.items() if s.expires > now}
        while len(self._by_id) >= MAX_SESSIONS:
            del self._by_id[next(iter(self._by_id))]
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now + SESSION_SECONDS)
        self._by_id[s.sid] = s
        return s

    def get(self, sid: str | None) -> Session | None:
        s = self._by_id.get(sid or "")
        return s if s is not None and s.expires > time.time() else None

    def drop(self, sid: str | None) -> None:
        self._by_id.pop(sid or "", None)


@dataclass(frozen=True)
class Problem:
    node: str
    kind: str  # "boot failed", "down", "drained", "not responding"
    detail: str | None


@dataclass
class ClusterState:
    """What the cluster view needs, computed once per STATUS_TTL for all browsers."""

    rows: list[NodeStatus]
    problems: list[Problem]
    by_stage: list[tuple[str, int]]
    by_slurm: list[tuple[str, int]]
    discovered: list[dict[str, Any]]
    at: float = field(default_factory=time.monotonic)
    key: tuple[Any, ...] = ()  # what it was made from, besides the NodeTable


def problems_of(rows: Sequence[NodeStatus], reasons: Mapping[str, str | None]) -> list[Problem]:
    """Failed boots first, then nodes Slurm has down, drained or not responding."""
    failed = [
        Problem(r.node, "boot failed", f"{r.stage}: {r.detail}" if r.detail else r.stage)
        for r in rows
        if r.stage and FAILED.search(r.stage)
    ]
    slurm: list[Problem] = []
    for r in rows:
        s = r.slurm or ""
        kind = (
            "down"
            if s.startswith("down")
            else "drained"
            if s.startswith("drain")
            else "not responding"
            if s.endswith("*")
            else None
        )
        if kind:
            slurm.append(Problem(r.node, kind, reasons.get(r.node) or s))
    return failed + slurm


def _counts(values: Sequence[str | None], none: str) -> list[tuple[str, int]]:
    out: dict[str, int] = {}
    for v in values:
        out[v or none] = out.get(v or none, 0) + 1
    return sorted(out.items(), key=lambda kv_: (-kv_[1], kv_[0]))


class NodeTable:
    """Each node's latest event and when it was last heard from, read whole from the
    database once (when serve starts), then kept up to date from the events and transfers
    written since: a page view over 10,000 nodes reads the few new rows, not the history.
    (A node whose history retention has trimmed keeps its last stage here.) Runs on the DB
    thread."""

    def __init__(self) -> None:
        self.last: dict[str, dict[str, Any]] = {}
        self.seen: dict[str, float] = {}
        self.event_id = self.transfer_id = 0
        self.loaded = False
        self._rows: dict[str, NodeStatus] = {}
        self._touched: set[str] = set()  # nodes heard from since rows() last ran
        self._inventory: Inventory | None = None
        self._context: tuple[Mapping[str, str], Mapping[str, str] | None, Mapping[str, str | None]] = ({}, None, {})

    def refresh(self, db: NodeStateDB) -> bool:
        """Brought up to date; True if anything changed."""
        if not self.loaded:
            # The ids first: a row written during the reads is applied again below, harmlessly.
            self.event_id, self.transfer_id = db.last_event_id(), db.last_transfer_id()
            self.last = {
                n: {"stage": r["stage"], "at": r["at"], "detail": r["detail"]} for n, r in db.last_stages().items()
            }
            self.seen = db.last_seen()
            self.loaded = True
            return True
        changed = False
        for r in db.events_after(self.event_id, 5000):
            self.event_id = r["id"]
            self._heard(r["node"], r["at"])
            now = self.last.get(r["node"])
            if now is None or r["at"] >= now["at"]:  # the latest by time, as last_stages says
                self.last[r["node"]] = {"stage": r["stage"], "at": r["at"], "detail": r["detail"]}
            changed = True
        for r in db.node_transfers_after(self.transfer_id):
            self.transfer_id = r["id"]
            self._heard(r["node"], r["at"])
            changed = True
        return changed

    def _heard(self, node: str, at: float) -> None:
        self._touched.add(node)
        if at > self.seen.get(node, 0.0):
            self.seen[node] = at

    def rows(
        self,
        inventory: Inventory,
        leases: Mapping[str, str],
        slurm: Mapping[str, str] | None,
        runtime: Mapping[str, str | None],
    ) -> list[NodeStatus]:
        """Every node's row, in inventory order, made again only where something it shows
        changed: every row for a new inventory; the rows whose lease, Slurm or runtime state
        changed when those did; else the rows of the nodes heard from since the last call."""
        context = (leases, slurm, runtime)
        if inventory is not self._inventory:
            stale: Sequence[Node] = inventory.nodes
        elif context != self._context:
            stale = [n for n in inventory.nodes if self._inputs(n, *self._context) != self._inputs(n, *context)]
            stale += [n for n in map(inventory.node, self._touched) if n is not None]
        else:
            stale = [n for n in map(inventory.node, self._touched) if n is not None]
        for row in statuses_from(stale, self.last, self.seen, leases, slurm, runtime):
            self._rows[row.node] = row
        self._inventory, self._context, self._touched = inventory, context, set()
        return [self._rows[n.name] for n in inventory.nodes]

    @staticmethod
    def _inputs(
        n: Node, leases: Mapping[str, str], slurm: Mapping[str, str] | None, runtime: Mapping[str, str | None]
    ) -> tuple[str | None, ...]:
        lease = None if n.interfaces[0].ip else next((leases.get(i.mac) for i in n.interfaces if i.mac), None)
        return (lease, slurm.get(n.name) if slurm else None, runtime.get(n.name))


def cluster_state(
    rows: list[NodeStatus],
    slurm: Mapping[str, str] | None,
    reasons: Mapping[str, str | None],
    discovered: list[dict[str, Any]],
) -> ClusterState:
    return ClusterState(
        rows,
        problems_of(rows, reasons),
        _counts([r.stage for r in rows], "never seen"),
        _counts([r.slurm for r in rows], "not in Slurm") if slurm else [],
        discovered,
    )


def select(rows: Sequence[NodeStatus], query: str, stage: str) -> list[NodeStatus]:
    """Rows whose name, address, stage, image or Slurm state contains `query`, at `stage`."""
    q = query.strip().lower()
    out = []
    for r in rows:
        if stage and (r.stage or "never seen") != stage:
            continue
        if q and not any(q in (v or "").lower() for v in (r.node, r.ip, r.stage, r.image, r.slurm)):
            continue
        out.append(r)
    return out


_VERSION = re.compile(r"/versions/([^/]+)/")


def booted_version(transfers: Sequence[Mapping[str, Any]]) -> str | None:
    """The image version the node's latest kernel or initramfs fetch named (None: unpinned)."""
    for t in reversed(transfers):
        m = _VERSION.search(t["path"])
        if m:
            return m.group(1)
    return None


def _ago(at: float | None) -> str:
    if at is None:
        return "never"
    s = max(0, int(time.time() - at))
    return (
        f"{s}s ago"
        if s < 120
        else f"{s // 60}m ago"
        if s < 7200
        else f"{s // 3600}h ago"
        if s < 172800
        else f"{s // 86400}d ago"
    )


def _clock(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at is not None else ""


def _seconds(took: float | None) -> str:
    return "" if took is None else f"{took:.1f}s" if took < 120 else f"{took / 60:.1f}m"


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(WEB_CONSOLE / "templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ago=_ago, clock=_clock, seconds=_seconds, q=lambda v: quote(str(v), safe=""))
    return env


class LiveFeed:
    """One poller of the events table for every watching browser: each gets the new events
    through a bounded queue; one that falls behind is dropped (its page reconnects)."""

    def __init__(self, app: BootApp):
        self.app = app
        self.queues: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._task: asyncio.Task[None] | None = None
        self.positioned = asyncio.Event()  # the poller knows the newest event: later ones are sent

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(LIVE_QUEUE)
        self.queues.add(q)
        if self._task is None or self._task.done():
            self.positioned.clear()
            self._task = asyncio.get_running_loop().create_task(self._poll())
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any] | None]) -> None:
        self.queues.discard(q)

    async def stop(self) -> None:
        """Ends every stream (serve is stopping: an open stream would hold the shutdown)."""
        for q in self.queues:
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)
        self.queues.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _poll(self) -> None:
        db = self.app.db
        if db is None:
            return
        last = await self.app._db(db.last_event_id)
        self.positioned.set()
        while self.queues:
            await asyncio.sleep(LIVE_POLL)
            try:
                rows = await self.app._db(db.events_after, last)
            except web.HTTPServiceUnavailable:
                continue
            for r in rows:
                last = r["id"]
                event = {"node": r["node"], "stage": r["stage"], "at": r["at"], "detail": r["detail"]}
                for q in list(self.queues):
                    try:
                        q.put_nowait(event)
                    except asyncio.QueueFull:
                        self.queues.discard(q)
                        q.get_nowait()
                        q.put_nowait(None)  # tells its stream to end


class WebConsole:
    def __init__(self, app: BootApp, actions: ConsoleActions | None = None):
        self.app = app
        self.actions = actions or ConsoleActions()
        self.sessions = Sessions()
        self.env = templates()
        self.live = LiveFeed(app)
        self._state: ClusterState | None = None
        self.table = NodeTable()
        self._warming: asyncio.Task[None] | None = None
        self._state_lock = asyncio.Lock()
        self._reasons: tuple[float, dict[str, str | None]] = (0.0, {})

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.cluster),
            web.get("/node/{node}", self.node),
            web.get("/events", self.events),
            web.get("/login", self.login_form),
            web.post("/login", self.login),
            web.post("/logout", self.logout),
            web.post("/discovered/approve", self.approve),
            web.post("/node/{node}/rebuild", self.rebuild),
            web.get("/static/{name}", self.static),
        ]

    async def start(self, _app: web.Application) -> None:
        """Read the node table now, so the first page view finds it."""
        if self.app.db is not None:
            self._warming = asyncio.get_running_loop().create_task(self._warm())

    async def _warm(self) -> None:
        with contextlib.suppress(web.HTTPException):  # no database yet: the first view says so
            await self._cluster_state()

    async def stop(self, _app: web.Application) -> None:
        await self.live.stop()

    # -- who may read, who may change --------------------------------------------------------------
    def _session(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE))

    def _reader(self, request: web.Request) -> Session | None:
        """The session, or None for an anonymous reader the site allows; else off to login."""
        session = self._session(request)
        if session is not None:
            return session
        inv = self.app.inventory
        peer = Peer.of(request.transport.get_extra_info("peername") if request.transport else None)
        if (
            inv.cluster.web.anonymous_read
            and isinstance(peer.ip, IPv4Address)
            and peer.ip in inv.cluster.network.subnet
        ):
            return None
        raise web.HTTPSeeOther(f"/login?{urlencode({'next': request.path_qs})}")

    async def _changer(self, request: web.Request) -> tuple[Session, Mapping[str, str]]:
        """The logged-in session behind a form that changes something, its CSRF token checked."""
        form = await request.post()
        session = self._session(request)
        if session is None:
            raise self.app._refuse(web.HTTPForbidden, "web console: not logged in", request)
        if not matches(str(form.get("csrf", "")), session.csrf):
            raise self.app._refuse(web.HTTPForbidden, "web console: bad CSRF token", request)
        return session, {k: str(v) for k, v in form.items()}

    def _page(self, template: str, session: Session | None, status: int = 200, **ctx: Any) -> web.Response:
        text = self.env.get_template(template).render(
            session=session, csrf=session.csrf if session else "", cluster=self.app.inventory.cluster.name, **ctx
        )
        return web.Response(text=text, status=status, content_type="text/html", headers=_headers())

    # -- login ---------------------------------------------------------------------------------------
    async def login_form(self, request: web.Request) -> web.Response:
        return self._page("login.html", None, next=_local(request.query.get("next", "/")), error=None)

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        nxt = _local(str(form.get("next", "/")))
        if not matches(str(form.get("token", "")).strip(), self.app.token):
            self.app.refused.labels("403").inc()
            peer = self.app._peer(request)  # a guessing flood is one line a while per address
            log.warning("web console: login refused", extra=repeated(f"web login {peer.ip}", client=str(peer.ip)))
            await asyncio.sleep(1.0)  # slows down guessing; the token is long anyway
            error = (
                "wrong credential"
                if self.app.token
                else "no admin credential is set on this server (state/secrets/api.token)"
            )
            return self._page("login.html", None, status=403, next=nxt, error=error)
        session = self.sessions.new()
        log.info("web console login", extra=kv(client=self.app._peer(request)))
        resp = web.HTTPSeeOther(nxt, headers=_headers())
        resp.set_cookie(
            COOKIE,
            session.sid,
            max_age=SESSION_SECONDS,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        raise resp

    async def logout(self, request: web.Request) -> web.Response:
        session, _ = await self._changer(request)
        self.sessions.drop(session.sid)
        resp = web.HTTPSeeOther("/login")
        resp.del_cookie(COOKIE, path="/")
        raise resp

    # -- cluster view ----------------------------------------------------------------------------------
    async def _cluster_state(self) -> ClusterState:
        """The cluster view's rows for every browser: the NodeTable brought up to date at most
        once per STATUS_TTL, the rows made again only when something they show changed."""
        db = self.app.db
        if db is None:
            raise web.HTTPServiceUnavailable(text="no node-state database\n")
        async with self._state_lock:
            old = self._state
            if old is not None and time.monotonic() - old.at < STATUS_TTL:
                return old
            hooks, inv, published, table = self.app.hooks, self.app.inventory, self.app.runtime.published, self.table
            slurm = hooks.slurm_states() if hooks.slurm_states else None
            reasons = await self._slurm_reasons(slurm)

            def compute() -> ClusterState:
                changed = table.refresh(db)
                leases = {r["mac"]: r["ip"] for r in db.leases()}
                runtime = runtime_states(inv.nodes, db.runtime_shas(), published)
                discovered = [dict(r) for r in db.discovered() if not r["adopted_as"]]
                key = (id(inv), slurm, reasons, leases, runtime, discovered)
                if old is not None and not changed and old.key == key:
                    old.at = time.monotonic()
                    return old
                state = cluster_state(table.rows(inv, leases, slurm, runtime), slurm, reasons, discovered)
                state.key = key
                return state

            self._state = await self.app._db(compute)
            return self._state

    async def _slurm_reasons(self, slurm: Mapping[str, str] | None) -> dict[str, str | None]:
        """Why nodes are drained or down (sinfo), only when some are, kept SLURM_REASONS_TTL."""
        if not slurm or not any(s.startswith(("down", "drain")) for s in slurm.values()):
            return {}
        at, reasons = self._reasons
        if time.monotonic() - at < SLURM_REASONS_TTL:
            return reasons
        try:
            got = await asyncio.get_running_loop().run_in_executor(None, node_status)
            reasons = {n: s.reason for n, s in got.items()}
        except SlurmError as e:
            log.warning("no Slurm reasons for the console", extra=kv(error=e))
        self._reasons = (time.monotonic(), reasons)
        return reasons

    async def cluster(self, request: web.Request) -> web.Response:
        session = self._reader(request)
        state = await self._cluster_state()
        return self._page("cluster.html", session, **cluster_page(state, request.query), message=_flash(session))

    # -- node view ---------------------------------------------------------------------------------------
    async def node(self, request: web.Request) -> web.Response:
        session = self._reader(request)
        name = request.match_info["node"]
        node = self.app.inventory.node(name)
        db = self.app.db
        if node is None or db is None:
            return self._page("missing.html", session, status=404, name=name)
        state = self.app.state

        def gather() -> dict[str, Any]:
            transfers = [dict(t) for t in db.transfers(name)][-50:]
            archive = layout.overlay_archive(state, name)
            try:
                files = [
                    (e.path, f"{e.mode & 0o7777:04o}", len(e.data))
                    for e in read_archive(archive)
                    if not stat.S_ISDIR(e.mode)
                ]
            except (OSError, ValueError, EOFError):
                files = []
            return {
                "steps": timeline(latest_boot([dict(e) for e in db.timeline(name)])),
                "transfers": transfers,
                "facts": db.facts(name),
                "booted": booted_version(transfers),
                "next_version": images.current_version(state, node.image) if node.image else None,
                "files": files,
                "console": read_log(state.consoles, name)[-8192:].decode(errors="replace").splitlines()[-LOG_LINES:],
            }

        info = await self.app._db(gather)
        logs: list[str] = []
        if self.actions.log_tail is not None:
            with contextlib.suppress(UserError, OSError):
                logs = await asyncio.get_running_loop().run_in_executor(None, self.actions.log_tail, name, LOG_LINES)
        plan: Sequence[PlanChange] | str | None = "unavailable" if self.actions.plan is None else "not asked"
        if self.actions.plan is not None and request.query.get("plan"):
            try:
                plan = await asyncio.get_running_loop().run_in_executor(None, self.actions.plan, name)
            except UserError as e:
                plan = f"plan failed: {e}"
        return self._page(
            "node.html",
            session,
            node=node,
            logs=logs,
            plan=plan,
            message=_flash(session),
            can_rebuild=bool(self.actions.rebuild),
            **info,
        )

    # -- live updates ---------------------------------------------------------------------------------
    async def events(self, request: web.Request) -> web.StreamResponse:
        self._reader(request)
        if len(self.live.queues) >= MAX_LIVE:
            raise web.HTTPServiceUnavailable(text="too many live views\n", headers={"Retry-After": "10"})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await resp.prepare(request)
        q = self.live.subscribe()
        try:
            await self.live.positioned.wait()
            await resp.write(b"retry: 2000\n\n")
            while True:
                try:
                    event = await asyncio.wait_for(q.get(), 15)
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")  # a dead browser shows up as a failed write
                    continue
                if event is None:
                    break
                await resp.write(f"event: stage\ndata: {json.dumps(event)}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.live.unsubscribe(q)
        return resp

    # -- changes ----------------------------------------------------------------------------------------
    async def approve(self, request: web.Request) -> web.Response:
        session, form = await self._changer(request)
        mac, name = form.get("mac", ""), form.get("name", "").strip() or None
        got = await self._change(session, request, self.actions.approve, mac, name, mac=mac)
        if got is not None:
            session.flash = f"{mac} is now node {got}"
            if self.app.hooks.reload is not None:
                self.app.hooks.reload()  # serve answers the new node without waiting for its file watch
        raise web.HTTPSeeOther("/")

    async def rebuild(self, request: web.Request) -> web.Response:
        session, _ = await self._changer(request)
        name = request.match_info["node"]
        if self.app.inventory.node(name) is None:
            raise web.HTTPNotFound(text="no such node\n")
        got = await self._change(session, request, self.actions.rebuild, name, node=name)
        if got is not None:
            session.flash = f"overlay of {name}: {got}"
        raise web.HTTPSeeOther(f"/node/{quote(name, safe='')}")

    async def _change(
        self, session: Session, request: web.Request, action: Callable[..., str] | None, *args: Any, **what: Any
    ) -> str | None:
        """An action's answer, run on a worker thread and logged; None when it refused (its
        reason becomes the session's next message) or failed."""
        if action is None:
            raise web.HTTPServiceUnavailable(text="not available in this server\n")
        try:
            got = await asyncio.get_running_loop().run_in_executor(None, action, *args)
        except UserError as e:
            session.flash = f"not done: {e}"
            return None
        except Exception:  # a bug below must not cost the admin the page
            log.exception("web console action failed", extra=kv(**what))
            session.flash = "not done: internal error (serve's log has it)"
            return None
        finally:
            self._state = None
        log.info("web console change", extra=kv(client=self.app._peer(request), result=got, **what))
        return got

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = WEB_CONSOLE / "static" / name
        if name not in STATIC or not path.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=path.read_bytes(), content_type=STATIC[name], headers=_headers())


STATIC = {"console.js": "text/javascript", "console.css": "text/css"}


def cluster_page(state: ClusterState, query: Mapping[str, str]) -> dict[str, Any]:
    """The template's view of one page of the node table, filtered as the query asks."""
    q, stage = query.get("q", "")[:100], query.get("stage", "")[:40]
    try:
        size = int(query.get("size", PAGE_SIZES[1]))
        page = max(1, int(query.get("page", 1)))
    except ValueError:
        size, page = PAGE_SIZES[1], 1
    size = size if size in PAGE_SIZES else PAGE_SIZES[1]
    matched = select(state.rows, q, stage)
    pages = max(1, -(-len(matched) // size))
    page = min(page, pages)

    def link(p: int) -> str:
        return "/?" + urlencode({k: v for k, v in (("q", q), ("stage", stage), ("size", size), ("page", p)) if v})

    return {
        "total": len(state.rows),
        "by_stage": state.by_stage,
        "by_slurm": state.by_slurm,
        "problems": state.problems[:MAX_PROBLEMS],
        "more_problems": max(0, len(state.problems) - MAX_PROBLEMS),
        "discovered": state.discovered,
        "rows": matched[(page - 1) * size : page * size],
        "matched": len(matched),
        "page": page,
        "pages": pages,
        "prev": link(page - 1) if page > 1 else None,
        "next": link(page + 1) if page < pages else None,
        "q": q,
        "stage": stage,
        "size": size,
        "sizes": PAGE_SIZES,
    }


def _flash(session: Session | None) -> str | None:
    """The outcome of the session's last change, once."""
    if session is None:
        return None
    message, session.flash = session.flash, None
    return message


def _local(target: str) -> str:
    """A redirect target on this server only (no open redirect to another site)."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }
