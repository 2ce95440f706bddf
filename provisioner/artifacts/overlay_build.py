"""Build each node's overlay archive (gzip newc cpio) and boot configs into the state directory.

Content-addressed: a node is rebuilt only when the digest of its inputs (overlay sources,
cluster and node data, reported facts, its secrets' stamps, the image's user tables) differs
from the manifest. Atomic across the whole build: workers write into a staging folder, and
only when every node rendered without error are the files synced and renamed into place, so
a broken template, an exception or `kill -9` leaves every previous archive as it was.
Parallel: workers are forked after the shared inputs are loaded and compiled once. Members
that every node shares (the cluster-wide /etc/hosts) are compressed once per worker and
reused, since a gzip file may be a series of members.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import difflib
import gzip
import hashlib
import json
import multiprocessing
import os
import shutil
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..atomic import atomic_write, locked
from ..errors import UserError
from ..inventory.model import Inventory, Node
from ..paths import Site, State
from ..render.context import RenderError, SecretHandles, shared_context
from ..render.overlays import FileEntry, IdMap, NodeRenderer, OverlayLibrary
from ..render.pxe import BootConfigs, BootTemplates
from . import cpio, layout, secrets

FORMAT = "1"  # bump when the archive layout changes, so every node rebuilds
GZIP_LEVEL = 6
SHARED_MEMBER_MIN = 1024  # shared bodies at least this big get a gzip member of their own
SERIAL_MAX = 32  # fewer dirty nodes than this: build in-process, forking costs more


@dataclass
class BuildReport:
    built: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    no_image: list[str] = field(default_factory=list)
    seconds: float = 0.0


class BuildFailed(UserError):
    pass


# -- inputs ----------------------------------------------------------------------------------------

def _node_key(node: Node) -> str:
    data = {f.name: getattr(node, f.name) for f in dataclasses.fields(node) if f.compare}
    return json.dumps(data, sort_keys=True, default=str)


def _facts(state: State) -> dict[str, dict[str, Any]]:
    if not state.db.exists():
        return {}
    from ..nodestate.db import NodeStateDB
    db = NodeStateDB(state.db)
    try:
        return db.all_facts()
    finally:
        db.close()


class Build:
    """One build's inputs, loaded and compiled once; renders any node of the inventory."""

    def __init__(self, state: State, site: Site | None, inventory: Inventory,
                 facts: dict[str, dict[str, Any]] | None = None):
        self.state, self.site, self.inventory = state, site, inventory
        self.facts = _facts(state) if facts is None else facts
        self.library = OverlayLibrary(site)
        self.boot = BootTemplates(site)
        reader = self.read_secret
        self.renderer = NodeRenderer(self.library, shared_context(inventory, SecretHandles(reader)),
                                     reader, self.idmap)
        self._idmaps: dict[str | None, IdMap] = {}
        self._node_keys = {n.name: _node_key(n) for n in inventory.nodes}
        self._global = self._global_digest()

    def read_secret(self, relpath: str) -> bytes:
        return secrets.read_secret(self.state, relpath)

    def idmap(self, image: str | None) -> IdMap:
        if image not in self._idmaps:
            self._idmaps[image] = IdMap.load(layout.image_rootfs(self.state, image) if image else None)
        return self._idmaps[image]

    def _global_digest(self) -> bytes:
        h = hashlib.sha256(FORMAT.encode())
        for name in sorted({o for n in self.inventory.nodes for o in n.overlays}):
            h.update(f"overlay\0{name}\0{self.library.tree(name).digest}\0".encode())
        h.update(self.boot.digest.encode())
        h.update(repr(self.inventory.cluster).encode())
        for n in self.inventory.nodes:
            h.update(self._node_keys[n.name].encode())
        h.update(repr(secrets.shared_stamp(self.state)).encode())
        for image in sorted({n.image or "" for n in self.inventory.nodes}):
            h.update(f"ids\0{image}\0{self.idmap(image or None).digest}".encode())
        return h.digest()

    def digest(self, node: Node) -> str:
        h = hashlib.sha256(self._global)
        h.update(self._node_keys[node.name].encode())
        h.update(json.dumps(self.facts.get(node.name) or {}, sort_keys=True).encode())
        own = self.library.override_tree(node.name)
        h.update((own.digest if own else "").encode())
        h.update(repr(secrets.stamp(self.state, node.name)).encode())
        return h.hexdigest()

    def render(self, node: Node) -> tuple[list[FileEntry], BootConfigs | None]:
        facts = self.facts.get(node.name)
        return self.renderer.render(node, facts), self.boot.render(self.renderer.shared, node, facts)


# -- archives ----------------------------------------------------------------------------------------

def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


class ArchiveWriter:
    """Entries -> gzip'd newc bytes; big shared members are compressed once and reused."""

    def __init__(self) -> None:
        self._cache: dict[tuple, tuple[bytes, bytes]] = {}

    def archive(self, entries: Iterable[FileEntry]) -> bytes:
        parts: list[bytes] = []
        run: list[bytes] = []
        ino = 0
        for e in entries:
            ino += 1
            if e.shared and len(e.data) >= SHARED_MEMBER_MIN:
                if run:
                    parts.append(_gzip(b"".join(run)))
                    run = []
                parts.append(self._shared_member(e, ino))
            else:
                run.append(cpio.encode(_cpio_entry(e), ino))
        run.append(cpio.trailer())
        parts.append(_gzip(b"".join(run)))
        return b"".join(parts)

    def _shared_member(self, e: FileEntry, ino: int) -> bytes:
        # id(e.data) is stable: the renderer keeps each shared body alive for the whole build,
        # and the cache pins it too.
        key = (ino, e.path, e.mode, e.uid, e.gid, id(e.data), len(e.data))
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = (e.data, _gzip(cpio.encode(_cpio_entry(e), ino)))
        return hit[1]


def _cpio_entry(e: FileEntry) -> cpio.Entry:
    return cpio.Entry(e.path, e.mode, e.data, e.uid, e.gid)


def read_archive(path: Path) -> list[cpio.Entry]:
    """A built archive's members (for plan, show and tests)."""
    return cpio.read(gzip.decompress(path.read_bytes()))


# -- the build -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Output:
    node: str
    digest: str
    moves: tuple[tuple[str, str], ...]  # (staged file, final path)
    has_boot: bool


_JOB: "_Job | None" = None  # set in the parent before forking; workers inherit it


@dataclass
class _Job:
    build: Build
    staging: Path
    digests: dict[str, str]
    writer: ArchiveWriter = field(default_factory=ArchiveWriter)


def _build_node(job: _Job, node: Node) -> _Output:
    entries, boot = job.build.render(node)
    state = job.build.state
    moves = []
    staged = job.staging / f"{node.name}.cpio.gz"
    staged.write_bytes(job.writer.archive(entries))
    moves.append((str(staged), str(layout.overlay_archive(state, node.name))))
    if boot is not None:
        layout.node_dir(state, node.name).mkdir(parents=True, exist_ok=True)
        for kind, text in boot.items():
            staged = job.staging / f"{node.name}.{kind}"
            staged.write_text(text)
            moves.append((str(staged), str(_boot_path(state, node.name, kind))))
    return _Output(node.name, job.digests[node.name], tuple(moves), boot is not None)


def _boot_path(state: State, node: str, kind: str) -> Path:
    return {"ipxe": layout.ipxe_script, "pxelinux": layout.pxelinux_config, "grub": layout.grub_config}[kind](state, node)


def _work(names: list[str]) -> list[_Output] | RenderError | Exception:
    assert _JOB is not None
    inv = _JOB.build.inventory
    try:
        return [_build_node(_JOB, inv.node(n)) for n in names]  # type: ignore[arg-type]
    except (RenderError, UserError, OSError) as e:
        return e


def _syncfs(path: Path) -> None:
    """Flush the filesystem holding `path` once, instead of an fsync per file."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def load_manifest(state: State) -> dict[str, str]:
    try:
        return json.loads(layout.overlay_manifest(state).read_text())["nodes"]
    except (FileNotFoundError, ValueError, KeyError):
        return {}


def build(state: State, site: Site | None, inventory: Inventory, nodes: list[Node] | None = None, *,
          force: bool = False, jobs: int | None = None, facts: dict[str, dict[str, Any]] | None = None,
          progress: Callable[[int], None] | None = None) -> BuildReport:
    """Build the given nodes (default all) whose inputs changed; all or nothing."""
    global _JOB
    started = time.monotonic()
    nodes = list(inventory.nodes if nodes is None else nodes)
    state.overlays.mkdir(parents=True, exist_ok=True)
    report = BuildReport()
    with locked(layout.overlay_manifest(state)):
        manifest = load_manifest(state)
        b, digests, dirty = _dirty(state, site, inventory, nodes, facts, manifest, force)
        # Secrets are checked only for nodes about to be built (checking 10,000 nodes' keys
        # costs more than a one-node rebuild may take); making any changes the digests.
        if secrets.ensure_secrets(state, inventory, [n for n in dirty if _needs_ssh(n)], jobs=jobs):
            b, digests, dirty = _dirty(state, site, inventory, nodes, facts, manifest, force)
        report.unchanged = [n.name for n in nodes if n not in dirty]
        staging = layout.overlay_staging(state)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        _JOB = _Job(b, staging, digests)
        try:
            outputs = _run(_JOB, dirty, jobs, progress)
            _syncfs(state.overlays)
            for out in outputs:
                for src, dst in out.moves:
                    os.replace(src, dst)
                manifest[out.node] = out.digest
                report.built.append(out.node)
                if not out.has_boot:
                    report.no_image.append(out.node)
            _syncfs(state.overlays)
            if outputs:
                atomic_write(layout.overlay_manifest(state), json.dumps({"format": FORMAT, "nodes": manifest}))
        finally:
            _JOB = None
            shutil.rmtree(staging, ignore_errors=True)
    report.seconds = time.monotonic() - started
    return report


def _dirty(state: State, site: Site | None, inventory: Inventory, nodes: list[Node],
           facts: dict[str, dict[str, Any]] | None, manifest: dict[str, str], force: bool,
           ) -> tuple[Build, dict[str, str], list[Node]]:
    try:
        b = Build(state, site, inventory, facts)
    except RenderError as e:
        raise BuildFailed(f"nothing built: {e}") from None
    digests = {n.name: b.digest(n) for n in nodes}
    dirty = [n for n in nodes if force or manifest.get(n.name) != digests[n.name]
             or not layout.overlay_archive(state, n.name).exists()]
    return b, digests, dirty


def _needs_ssh(node: Node) -> bool:
    return "ssh" in node.overlays


def _run(job: _Job, dirty: list[Node], jobs: int | None, progress: Callable[[int], None] | None) -> list[_Output]:
    names = [n.name for n in dirty]
    workers = max(1, jobs or os.cpu_count() or 1)
    if len(names) < SERIAL_MAX or workers == 1:
        chunks = [names[i:i + 8] for i in range(0, len(names), 8)]
        results: Iterable[Any] = map(_work, chunks)
        return _collect(results, progress)
    size = max(1, min(256, len(names) // (workers * 8)))
    chunks = [names[i:i + size] for i in range(0, len(names), size)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return _collect(pool.imap_unordered(_work, chunks), progress)


def _collect(results: Iterable[Any], progress: Callable[[int], None] | None) -> list[_Output]:
    outputs: list[_Output] = []
    for r in results:
        if isinstance(r, Exception):
            raise BuildFailed(f"nothing built: {r}")
        outputs.extend(r)
        if progress:
            progress(len(r))
    return outputs


# -- plan ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Change:
    path: str
    what: str  # "added", "removed", "changed", "mode", "owner"
    diff: str = ""


def plan_node(b: Build, node: Node, with_diff: bool = False) -> list[Change] | None:
    """What a build would change for this node (None: never built). Writes nothing."""
    archive = layout.overlay_archive(b.state, node.name)
    if not archive.exists():
        return None
    old = {e.path: e for e in read_archive(archive)}
    entries, boot = b.render(node)
    new = {e.path: e for e in entries}
    changes: list[Change] = []
    for path in sorted(set(old) | set(new)):
        o, n = old.get(path), new.get(path)
        if o is None:
            changes.append(Change(path, "added"))
        elif n is None:
            changes.append(Change(path, "removed"))
        elif o.data != n.data or (o.mode & 0o170000) != (n.mode & 0o170000):
            diff = _diff(path, o.data, n.data) if with_diff and not n.secret else ""
            changes.append(Change(path, "changed", diff))
        elif o.mode != n.mode:
            changes.append(Change(path, "mode", f"{o.mode & 0o7777:04o} -> {n.perm:04o}"))
        elif (o.uid, o.gid) != (n.uid, n.gid):
            changes.append(Change(path, "owner", f"{o.uid}:{o.gid} -> {n.uid}:{n.gid}"))
    for kind, text in (boot.items() if boot else []):
        path = _boot_path(b.state, node.name, kind)
        before = path.read_bytes() if path.exists() else None
        label = f"(boot) {path.name}"
        if before is None:
            changes.append(Change(label, "added"))
        elif before != text.encode():
            changes.append(Change(label, "changed", _diff(label, before, text.encode()) if with_diff else ""))
    return changes


def _diff(path: str, old: bytes, new: bytes) -> str:
    try:
        a, b = old.decode(), new.decode()
    except UnicodeDecodeError:
        return "binary content differs\n"
    return "".join(difflib.unified_diff(a.splitlines(True), b.splitlines(True), f"a/{path}", f"b/{path}"))
