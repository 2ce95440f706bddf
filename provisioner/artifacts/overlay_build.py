"""Build each node's overlay archive (gzip newc cpio) and boot configs into the state directory.

Content-addressed: a node is rebuilt only when the digest of its inputs (overlay sources,
cluster and node data, reported facts, its secrets' stamps, its image's current version and
user tables) differs from the manifest, so an image switch rebuilds that image's nodes alone.
Atomic across the whole build: workers write each file beside its final path, and only when
every node rendered without error are the files synced and renamed into place, so a broken
template, an exception or `kill -9` leaves every previous archive as it was.
Parallel: workers are forked after the shared inputs are loaded and compiled once. Members
that every node shares (the cluster-wide /etc/hosts) are compressed once per worker and
reused, since a gzip file may be a series of members.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import difflib
import gzip
import hashlib
import json
import multiprocessing
import os
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
from ..render.overlays import FileEntry, IdMap, NodeRenderer, OverlayLibrary, node_overlays
from ..render.pxe import BootConfigs, BootTemplates
from . import cpio, images, layout, secrets

FORMAT = "1"  # bump when the archive layout changes, so every node rebuilds
GZIP_LEVEL = 6
SERIAL_MAX = 32  # fewer dirty nodes than this: build in-process, forking costs more
FSYNC_MAX = 64  # more staged files than this: one syncfs beats an fsync each


@dataclass
class BuildReport:
    built: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    no_image: list[str] = field(default_factory=list)
    seconds: float = 0.0


class BuildFailed(UserError):
    pass


# -- inputs ----------------------------------------------------------------------------------------

_KEY_FIELDS = tuple(f.name for f in dataclasses.fields(Node) if f.compare)  # not sources/line


def _node_key(node: Node) -> str:
    """Everything about the node that can reach its files (its YAML line number cannot)."""
    return repr([getattr(node, f) for f in _KEY_FIELDS])


class Build:
    """One build's inputs, loaded and compiled once; renders any node of the inventory.
    `facts` are what nodes reported (by node name); the caller reads them from the node-state
    database, so artifacts never reach into it. Each image's current version is read once
    here: boot configs pin it, and the image's user tables come from it."""

    def __init__(self, state: State, site: Site | None, inventory: Inventory,
                 facts: dict[str, dict[str, Any]] | None = None):
        self.state, self.site, self.inventory = state, site, inventory
        self.facts = facts or {}
        used = {n.image for n in inventory.nodes}
        self.versions = {i: images.current_version(state, i) for i in sorted(i for i in used if i)}
        self.library = OverlayLibrary(site)
        self.boot = BootTemplates(site)
        reader = secrets.reader(state)
        self.renderer = NodeRenderer(self.library, shared_context(inventory, SecretHandles(reader)),
                                     reader, self.idmap)
        self._idmaps: dict[str | None, IdMap] = {}
        self._node_keys = {n.name: _node_key(n) for n in inventory.nodes}
        self._image_keys = {i: f"image\0{i or ''}\0{self.versions.get(i) or ''}\0{self.idmap(i).digest}".encode()
                            for i in used}
        self._all: bytes | None = None
        self._global = self._global_digest()

    def idmap(self, image: str | None) -> IdMap:
        if image not in self._idmaps:
            self._idmaps[image] = IdMap.load(layout.image_rootfs(self.state, image, self.versions.get(image))
                                             if image else None)
        return self._idmaps[image]

    def _global_digest(self) -> bytes:
        h = hashlib.sha256(FORMAT.encode())
        used = {o for n in self.inventory.nodes for o in node_overlays(n)}
        trees = [self.library.tree(name) for name in sorted(used)]
        for tree in trees:
            h.update(f"overlay\0{tree.name}\0{tree.digest}\0".encode())
        h.update(self.boot.digest.encode())
        h.update(repr(self.inventory.cluster).encode())
        sources = [sf for t in trees for sf in t.files.values()]
        if self.boot.reads_nodes or any(sf.per_node_reads_all for sf in sources):
            h.update(self._all_nodes())
        else:
            # What the shared files say stands for the rest of the inventory: a change to one
            # node that no shared file shows (its vars, kernel_args) rebuilds that node alone.
            for sf in sources:
                if sf.kind in ("template", "secret") and not sf.per_node:
                    h.update(hashlib.sha256(self.renderer.shared_body(sf)).digest())
        h.update(repr(secrets.shared_stamp(self.state)).encode())
        return h.digest()

    def _all_nodes(self) -> bytes:
        if self._all is None:
            h = hashlib.sha256()
            for n in self.inventory.nodes:
                h.update(self._node_keys[n.name].encode())
            self._all = h.digest()
        return self._all

    def digest(self, node: Node) -> str:
        h = hashlib.sha256(self._global)
        h.update(self._node_keys[node.name].encode())
        h.update(self._image_keys[node.image])  # the version its boot configs pin, its user tables
        h.update(json.dumps(self.facts.get(node.name) or {}, sort_keys=True).encode())
        own = self.library.override_tree(node.name)
        if own is not None:
            h.update(own.digest.encode())
            if any("nodes" in sf.reads for sf in own.files.values()):
                h.update(self._all_nodes())
        h.update(repr(secrets.stamp(self.state, node.name)).encode())
        return h.hexdigest()

    def render(self, node: Node) -> tuple[list[FileEntry], BootConfigs | None]:
        facts = self.facts.get(node.name)
        return (self.renderer.render(node, facts),
                self.boot.render(self.renderer.shared, node, facts, self.versions.get(node.image)))


# -- archives ----------------------------------------------------------------------------------------

def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


class ArchiveWriter:
    """Entries -> gzip'd newc bytes. A run of entries every node shares becomes a gzip member
    of its own, compressed once and reused (a gzip file may be a series of members)."""

    def __init__(self) -> None:
        self._cache: dict[tuple, tuple[list[FileEntry], bytes]] = {}

    def archive(self, entries: list[FileEntry]) -> bytes:
        parts: list[bytes] = []
        i, ino = 0, 1
        while i < len(entries):
            j = i
            shared = entries[i].shared
            while j < len(entries) and entries[j].shared == shared:
                j += 1
            run = entries[i:j]
            parts.append(self._shared_run(run, ino) if shared else _gzip(_encode(run, ino)))
            ino += len(run)
            i = j
        parts.append(_gzip(cpio.trailer()))
        return b"".join(parts)

    def _shared_run(self, run: list[FileEntry], ino: int) -> bytes:
        # Shared entries are the same objects for every node of a build; the cache pins them,
        # so their ids cannot be reused by other objects while the key lives.
        key = (ino, *map(id, run))
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = (run, _gzip(_encode(run, ino)))
        return hit[1]


def _encode(run: list[FileEntry], ino: int) -> bytes:
    return b"".join(cpio.encode(_cpio_entry(e), k) for k, e in enumerate(run, ino))


def _cpio_entry(e: FileEntry) -> cpio.Entry:
    return cpio.Entry(e.path, e.mode, e.data, e.uid, e.gid)


def read_archive(path: Path) -> list[cpio.Entry]:
    """A built archive's members (for plan, show and tests)."""
    return cpio.read(gzip.decompress(path.read_bytes()))


# -- the build -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Output:
    node: str
    moves: tuple[tuple[str, str], ...]  # (staged file, final path)
    has_boot: bool


_JOB: "Build | None" = None  # set in the parent before forking; workers inherit it
_WRITER = ArchiveWriter()


def _staged(final: Path) -> Path:
    """The temp file beside `final`: a rename within one folder avoids the filesystem-wide
    lock a cross-folder rename takes, so workers commit in parallel. The name is fixed, so a
    killed build's leftovers are simply overwritten by the next one."""
    return final.with_name(f".{final.name}.building")


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _build_node(b: Build, node: Node, moves: list[tuple[str, str]]) -> _Output:
    entries, boot = b.render(node)
    state = b.state
    first = len(moves)
    final = layout.overlay_archive(state, node.name)
    _write(_staged(final), _WRITER.archive(entries))
    moves.append((str(_staged(final)), str(final)))
    if boot is not None:
        layout.node_dir(state, node.name).mkdir(parents=True, exist_ok=True)
        for kind, text in boot.items():
            final = _boot_path(state, node.name, kind)
            data = text.encode()
            if _read_or_none(final) != data:  # most rebuilds leave boot configs as they were
                _write(_staged(final), data)
                moves.append((str(_staged(final)), str(final)))
    return _Output(node.name, tuple(moves[first:]), boot is not None)


def _read_or_none(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _boot_path(state: State, node: str, kind: str) -> Path:
    return {"ipxe": layout.ipxe_script, "pxelinux": layout.pxelinux_config, "grub": layout.grub_config}[kind](state, node)


def _work(names: list[str]) -> list[_Output] | Exception:
    """Render and stage a chunk; on any error remove what this chunk staged and say why."""
    assert _JOB is not None
    moves: list[tuple[str, str]] = []
    try:
        return [_build_node(_JOB, _JOB.inventory.node(n), moves) for n in names]  # type: ignore[arg-type]
    except (RenderError, UserError, OSError) as e:
        _discard(moves)
        return e


def _commit(moves: list[tuple[str, str]]) -> None:
    for src, dst in moves:
        os.replace(src, dst)


def _discard(moves: Iterable[tuple[str, str]]) -> None:
    for src, _ in moves:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(src)


def _syncfs(path: Path) -> None:
    """Flush the filesystem holding `path` once, instead of an fsync per file."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _fsync(paths: Iterable[str], flags: int = os.O_RDONLY) -> None:
    for p in paths:
        fd = os.open(p, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _durable(moves: list[tuple[str, str]], root: Path) -> None:
    """Staged data on disk before any rename: one syncfs for a big build, fsyncs for a small."""
    if len(moves) > FSYNC_MAX:
        _syncfs(root)
    else:
        _fsync(src for src, _ in moves)


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
        secrets.ensure_secrets(state, inventory, [])  # the cluster-wide ones shared files read
        manifest = load_manifest(state)
        b, digests, dirty = _dirty(state, site, inventory, nodes, facts, manifest, force)
        # Secrets are checked only for nodes about to be built (checking 10,000 nodes' keys
        # costs more than a one-node rebuild may take); making any changes the digests.
        if secrets.ensure_secrets(state, inventory, [n for n in dirty if secrets.needs_host_keys(n)], jobs=jobs) \
                + secrets.ensure_credentials(state, dirty):
            b, digests, dirty = _dirty(state, site, inventory, nodes, facts, manifest, force)
        dirty_names = {n.name for n in dirty}
        report.unchanged = [n.name for n in nodes if n.name not in dirty_names]
        _JOB = b
        try:
            outputs = _run(state, [n.name for n in dirty], jobs, progress)
        finally:
            _JOB = None
        for out in outputs:
            manifest[out.node] = digests[out.node]
            report.built.append(out.node)
            if not out.has_boot:
                report.no_image.append(out.node)
        if outputs:
            atomic_write(layout.overlay_manifest(state), json.dumps({"format": FORMAT, "nodes": manifest}))
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
    built = set(os.listdir(state.overlays)) if state.overlays.is_dir() else set()
    dirty = [n for n in nodes if force or manifest.get(n.name) != digests[n.name]
             or f"{n.name}.cpio.gz" not in built]
    return b, digests, dirty


def _run(state: State, names: list[str], jobs: int | None, progress: Callable[[int], None] | None) -> list[_Output]:
    """Stage every node (in parallel), then, only if all succeeded, make the staged files
    durable and rename them into place (in parallel too)."""
    workers = max(1, jobs or os.cpu_count() or 1)
    if len(names) < SERIAL_MAX or workers == 1:
        outputs = _collect(map(_work, [names[i:i + 8] for i in range(0, len(names), 8)]), progress)
        moves = [m for o in outputs for m in o.moves]
        _durable(moves, state.overlays)
        _commit(moves)
    else:
        size = max(1, min(256, len(names) // (workers * 8)))
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            outputs = _collect(pool.imap_unordered(_work, [names[i:i + size] for i in range(0, len(names), size)]),
                               progress)
            _syncfs(state.overlays)
            pool.map(_commit, [[m for o in outputs[i:i + size] for m in o.moves]
                               for i in range(0, len(outputs), size)])
    if len(outputs) > FSYNC_MAX:
        _syncfs(state.overlays)
    else:  # the renames themselves
        _fsync({os.path.dirname(dst) for o in outputs for _, dst in o.moves}, os.O_RDONLY | os.O_DIRECTORY)
    return outputs


def _collect(results: Iterable[Any], progress: Callable[[int], None] | None) -> list[_Output]:
    """Gather every chunk; if any failed, discard all staged files and report the first error."""
    outputs: list[_Output] = []
    errors: list[Exception] = []
    for r in results:
        if isinstance(r, Exception):
            errors.append(r)
            continue
        outputs.extend(r)
        if progress:
            progress(len(r))
    if errors:
        _discard(m for o in outputs for m in o.moves)
        raise BuildFailed(f"nothing built: {errors[0]}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
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
