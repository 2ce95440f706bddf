"""Build each node's overlay archive (gzip newc cpio) and boot configs into the state directory.

Content-addressed: a node is rebuilt only when the digest of its inputs (overlay sources,
cluster and node data, reported facts, its secrets' stamps, its image's current version and
user tables, the master's accounts it gets) differs from the manifest, so an image switch
rebuilds that image's nodes alone.
All or nothing across the whole build: workers write into fresh shard folders of a new
generation (layout.py), and only when every node rendered without error is it completed, made
durable and switched to with one rename, so a broken template, an exception or `kill -9` at any
point leaves every node on the previous generation; the next build removes the leftovers.
Everything lives in 0700 folders and archives are created 0600: they hold the node's secrets.
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
import io
import json
import multiprocessing
import os
import shutil
import tarfile
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import locked, private_dir, write_new
from ..errors import UserError
from ..inventory.model import Inventory, Node
from ..paths import Site, State
from ..render.context import RenderError, SecretHandles, shared_context
from ..render.overlays import (
    FileEntry,
    IdMap,
    NodeRenderer,
    OverlayLibrary,
    OverlayTree,
    node_overlays,
    runtime_entries,
)
from ..render.pxe import BootConfigs, BootTemplates, wait_scripts
from ..render.users import OVERLAY as USERS
from ..render.users import tree as users_tree
from . import bootloaders, cpio, images, layout, pins, secrets, users

FORMAT = "2"  # bump when the archive layout changes, so every node rebuilds
GZIP_LEVEL = 6
SERIAL_MAX = 32  # fewer dirty nodes than this: build in-process, forking costs more
FSYNC_MAX = 64  # more staged files than this: one syncfs beats an fsync each


@dataclass
class BuildReport:
    built: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    no_image: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # nodes gone from the inventory, now from here
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

    def __init__(
        self, state: State, site: Site | None, inventory: Inventory, facts: dict[str, dict[str, Any]] | None = None
    ):
        self.state, self.site, self.inventory = state, site, inventory
        self.facts = facts or {}
        used = {n.image for n in inventory.nodes}
        self.versions: dict[str | None, str | None] = {
            i: images.current_version(state, i) for i in sorted(i for i in used if i)
        }
        # Nodes pinned to another version than their image's current (a rollout in progress).
        self.pinned = {
            name: p
            for name, p in pins.load(state).items()
            if p.image in used and (layout.image_versions(state, p.image) / p.version).is_dir()
        }
        self.library = OverlayLibrary(site)
        self.boot = BootTemplates(site)
        self.accounts = users.load(inventory.cluster.users) if users.wanted(inventory) else None
        reader = secrets.reader(state)
        self.renderer = NodeRenderer(
            self.library, shared_context(inventory, SecretHandles(reader)), reader, self.idmap, self.generated
        )
        self._idmaps: dict[str | None, IdMap] = {}
        self._generated: dict[str | None, OverlayTree] = {}
        self._node_keys = {n.name: _node_key(n) for n in inventory.nodes}
        self._image_keys = {
            i: f"image\0{i or ''}\0{self.versions.get(i) or ''}\0{self.idmap(i).digest}".encode() for i in used
        }
        self._all: bytes | None = None
        self._global = self._global_digest()

    def idmap(self, image: str | None) -> IdMap:
        if image not in self._idmaps:
            self._idmaps[image] = users.image_ids(
                self.state, image, self.versions.get(image), self.inventory.cluster.users
            )
        return self._idmaps[image]

    def generated(self, overlay: str, image: str | None) -> OverlayTree | None:
        """The master's accounts merged into the image's, for nodes with the users overlay."""
        if overlay != USERS or self.accounts is None:
            return None
        if image not in self._generated:
            runtime = self.library.tree(USERS).runtime
            self._generated[image] = users_tree(self.idmap(image), self.accounts, runtime)
        return self._generated[image]

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
        h.update(f"pin\0{self.boot_version(node) or ''}".encode())
        if self.accounts is not None and USERS in node_overlays(node):
            h.update(self.accounts.digest.encode())  # the master's accounts it gets
        h.update(json.dumps(self.facts.get(node.name) or {}, sort_keys=True).encode())
        own = self.library.override_tree(node.name)
        if own is not None:
            h.update(own.digest.encode())
            if any("nodes" in sf.reads for sf in own.files.values()):
                h.update(self._all_nodes())
        h.update(repr(secrets.stamp(self.state, node.name)).encode())
        return h.hexdigest()

    def boot_version(self, node: Node) -> str | None:
        """The image version the node's boot configs name: its pin, else the current one."""
        pin = self.pinned.get(node.name)
        if pin is not None and pin.image == node.image:
            return pin.version
        return self.versions.get(node.image)

    def reload_actions(self, node: Node) -> dict[str, str]:
        return self.renderer.reload_actions(node)

    def render(self, node: Node) -> tuple[list[FileEntry], BootConfigs | None]:
        facts = self.facts.get(node.name)
        return (
            self.renderer.render(node, facts),
            self.boot.render(self.renderer.shared, node, facts, self.boot_version(node)),
        )


# -- archives ----------------------------------------------------------------------------------------


def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


class ArchiveWriter:
    """Entries -> gzip'd newc bytes. A run of entries every node shares becomes a gzip member
    of its own, compressed once and reused (a gzip file may be a series of members)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, ...], tuple[list[FileEntry], bytes]] = {}

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


def runtime_archive(entries: list[FileEntry], reload: dict[str, str]) -> bytes:
    """The node's runtime files as a gzip'd tar (what the node agent unpacks with the image's
    own tar), byte for byte the same for the same files: no times, numeric owners. Under
    RUNTIME_META it carries the reload actions and the boot-time paths, which the agent
    never removes."""
    buf = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=GZIP_LEVEL) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        for e in runtime_entries(entries):
            info = tarfile.TarInfo(e.path)
            info.mode, info.uid, info.gid, info.uname, info.gname = e.perm, e.uid, e.gid, "", ""
            if e.kind == "dir":
                info.type = tarfile.DIRTYPE
            elif e.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, e.data.decode()
            else:
                info.size = len(e.data)
            tar.addfile(info, io.BytesIO(e.data) if e.kind == "file" else None)
        boot = "".join(f"{e.path}\n" for e in entries if not e.runtime and e.kind != "dir")
        actions = "".join(f"{path}\t{cmd}\n" for path, cmd in sorted(reload.items()))
        for name, text in (("reload", actions), ("boot-paths", boot)):
            info = tarfile.TarInfo(f"{layout.RUNTIME_META}/{name}")
            info.mode, info.size = 0o600, len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return buf.getvalue()


def runtime_digest(state: State, node: str) -> str | None:
    """SHA-256 of the node's published runtime archive (what its agent should report), or None."""
    try:
        with open(layout.runtime_archive(state, node), "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def runtime_members(state: State, node: str) -> dict[str, tuple[str, str]] | None:
    """path -> (kind, sha256) of the node's published runtime files as its agent hashes them
    (a link: its target and a newline), or None when the node has no runtime archive."""
    out = {}
    try:
        with tarfile.open(layout.runtime_archive(state, node), "r:gz") as tar:
            for m in tar:
                if m.name.split("/")[0] == layout.RUNTIME_META or m.isdir():
                    continue
                if m.issym():
                    out[m.name] = ("link", hashlib.sha256(m.linkname.encode() + b"\n").hexdigest())
                else:
                    f = tar.extractfile(m)
                    out[m.name] = ("file", hashlib.sha256(f.read() if f else b"").hexdigest())
    except (OSError, tarfile.TarError):
        return None
    return out


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
    written: tuple[str, ...]  # files this node's render wrote (linked ones are durable already)
    has_boot: bool


@dataclass(frozen=True)
class _Gen:
    """The generation a build makes: its number, the shard folders of the published one (old)
    and the fresh folders this build fills (new: only the shards of nodes it rebuilds)."""

    number: int
    old: dict[str, Path]
    new: dict[str, Path]


_JOB: tuple[Build, _Gen] | None = None  # set in the parent before forking; workers inherit it
_WRITER = ArchiveWriter()


def _build_node(b: Build, gen: _Gen, node: Node) -> _Output:
    entries, boot = b.render(node)
    shard = layout.shard_of(node.name)
    d, old = gen.new[shard], gen.old.get(shard)
    path = d / (node.name + layout.ARCHIVE)
    write_new(path, _WRITER.archive(entries))
    rt = d / (node.name + layout.RUNTIME_ARCHIVE)
    write_new(rt, runtime_archive(entries, b.reload_actions(node)))
    written = [str(path), str(rt)]
    for kind, text in boot.items() if boot is not None else ():
        name, data = f"{node.name}.{kind}", text.encode()
        if old is not None and _read_or_none(old / name) == data:
            os.link(old / name, d / name)  # most rebuilds leave boot configs as they were
        else:
            write_new(d / name, data, 0o644)  # no secret in it (the folder is private anyway)
            written.append(str(d / name))
    return _Output(node.name, tuple(written), boot is not None)


def _read_or_none(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _work(names: list[str]) -> list[_Output] | Exception:
    """Render and write a chunk, or say why not (the parent then drops the new folders)."""
    assert _JOB is not None
    b, gen = _JOB
    try:
        return [_build_node(b, gen, b.inventory.node(n)) for n in names]  # type: ignore[arg-type]
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


def _fsync(paths: Iterable[str | Path], flags: int = os.O_RDONLY) -> None:
    for p in paths:
        fd = os.open(p, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dirs(paths: Iterable[str | Path]) -> None:
    _fsync(paths, os.O_RDONLY | os.O_DIRECTORY)


def load_manifest(state: State) -> dict[str, str]:
    path = layout.overlay_manifest(state)
    try:
        return json.loads(path.read_text())["nodes"] if path else {}
    except (FileNotFoundError, ValueError, KeyError):
        return {}


def build(
    state: State,
    site: Site | None,
    inventory: Inventory,
    nodes: list[Node] | None = None,
    *,
    force: bool = False,
    jobs: int | None = None,
    facts: dict[str, dict[str, Any]] | None = None,
    progress: Callable[[int], None] | None = None,
) -> BuildReport:
    """Build the given nodes (default all) whose inputs changed into a new generation and
    switch every node to it at once; all or nothing."""
    global _JOB
    started = time.monotonic()
    nodes = list(inventory.nodes if nodes is None else nodes)
    report = BuildReport()
    with locked(private_dir(state.overlays) / "build"):
        sweep(state)
        # A node gone from the inventory leaves no secret, archive or boot config behind, and
        # its host keys join the revocation list every other node gets (so all rebuild).
        gone = set(secrets.forget(state, secrets.departed(state, inventory)))
        secrets.ensure_secrets(state, inventory, [])  # the cluster-wide ones shared files read
        manifest = load_manifest(state)
        gone |= set(manifest) - {n.name for n in inventory.nodes}
        for name in gone:
            manifest.pop(name, None)
        report.removed = sorted(gone)
        b, digests, dirty = _dirty(state, site, inventory, nodes, facts, manifest, force)
        try:
            waits = wait_scripts(inventory.cluster, site)
        except RenderError as e:
            raise BuildFailed(f"nothing built: {e}") from None
        # Secrets are checked only for nodes about to be built (checking 10,000 nodes' keys
        # costs more than a one-node rebuild may take); making any changes the digests.
        if secrets.ensure_secrets(
            state, inventory, [n for n in dirty if secrets.needs_host_keys(n)], jobs=jobs
        ) + secrets.ensure_credentials(state, dirty):
            b, digests, dirty = _dirty(state, site, inventory, nodes, facts, manifest, force)
        dirty_names = {n.name for n in dirty}
        report.unchanged = [n.name for n in nodes if n.name not in dirty_names]
        if dirty or gone:
            gen = _start(state, dirty_names | gone)
            _JOB = (b, gen)
            try:
                outputs = _run(state, gen, [n.name for n in dirty], jobs, progress)
            except BaseException:
                _drop(gen)
                raise
            finally:
                _JOB = None
            for out in outputs:
                manifest[out.node] = digests[out.node]
                report.built.append(out.node)
                if not out.has_boot:
                    report.no_image.append(out.node)
            _publish(state, gen, manifest, outputs, gone)
            _prune(state, gone)
            sweep(state)
        bootloaders.install_rendered(state, waits)
    report.seconds = time.monotonic() - started
    return report


def _dirty(
    state: State,
    site: Site | None,
    inventory: Inventory,
    nodes: list[Node],
    facts: dict[str, dict[str, Any]] | None,
    manifest: dict[str, str],
    force: bool,
) -> tuple[Build, dict[str, str], list[Node]]:
    try:
        b = Build(state, site, inventory, facts)
    except RenderError as e:
        raise BuildFailed(f"nothing built: {e}") from None
    digests = {n.name: b.digest(n) for n in nodes}
    dirty = [n for n in nodes if force or manifest.get(n.name) != digests[n.name]]
    return b, digests, dirty


def _run(
    state: State, gen: _Gen, names: list[str], jobs: int | None, progress: Callable[[int], None] | None
) -> list[_Output]:
    """Render every node into the new shard folders (in parallel when it pays)."""
    workers = max(1, jobs or os.cpu_count() or 1)
    if len(names) < SERIAL_MAX or workers == 1:
        return _collect(map(_work, [names[i : i + 8] for i in range(0, len(names), 8)]), progress)
    size = max(1, min(256, len(names) // (workers * 8)))
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return _collect(pool.imap_unordered(_work, [names[i : i + size] for i in range(0, len(names), size)]), progress)


def _collect(results: Iterable[Any], progress: Callable[[int], None] | None) -> list[_Output]:
    """Gather every chunk; if any failed, report the first error (the caller drops the rest)."""
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
        raise BuildFailed(f"nothing built: {errors[0]}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
    return outputs


# -- generations ---------------------------------------------------------------------------------


def _shard_folders(gen_dir: Path) -> dict[str, Path]:
    """shard -> folder, as a generation's symlinks name them."""
    out = {}
    with os.scandir(gen_dir) as it:
        for e in it:
            if e.is_symlink():
                out[e.name] = gen_dir.parent.parent / "shards" / os.path.basename(os.readlink(e.path))
    return out


def _start(state: State, dirty: set[str]) -> _Gen:
    """The next generation's number and a fresh private folder for each shard it changes (those
    of the nodes it builds or drops)."""
    gens, shards = private_dir(layout.overlay_gens(state)), private_dir(layout.overlay_shards(state))
    taken = [name.rpartition(".")[2] for name in (*os.listdir(gens), *os.listdir(shards))]
    number = 1 + max((int(t) for t in taken if t.isdigit()), default=0)
    current = layout.published(state)
    old = _shard_folders(current) if current else {}
    new = {}
    for shard in sorted({layout.shard_of(n) for n in dirty}):
        new[shard] = shards / f"{shard}.{number}"
        os.mkdir(new[shard], 0o700)
    return _Gen(number, old, new)


def _drop(gen: _Gen) -> None:
    for d in gen.new.values():
        shutil.rmtree(d, ignore_errors=True)


def _node_of(filename: str) -> str:
    """The node a shard file belongs to (<node>.cpio.gz, <node>.rt.tar.gz, <node>.<boot
    config kind>)."""
    for suffix in (layout.ARCHIVE, layout.RUNTIME_ARCHIVE):
        if filename.endswith(suffix):
            return filename[: -len(suffix)]
    return filename.rpartition(".")[0]


def _publish(state: State, gen: _Gen, manifest: dict[str, str], outputs: list[_Output], gone: set[str]) -> None:
    """Complete the new shard folders with the nodes this build left alone (not the ones it
    drops), make the whole generation durable, then switch `current` to it with one rename."""
    built = {o.node for o in outputs} | gone
    written = [p for o in outputs for p in o.written]
    for shard, d in gen.new.items():
        old = gen.old.get(shard)
        for name in os.listdir(old) if old else ():
            if _node_of(name) not in built:
                os.link(old / name, d / name)  # type: ignore[operator]
    gdir = layout.overlay_gens(state) / str(gen.number)
    os.mkdir(gdir, 0o700)
    for shard, d in sorted({**gen.old, **gen.new}.items()):
        os.symlink(f"../../shards/{d.name}", gdir / shard)
    write_new(gdir / layout.MANIFEST, json.dumps({"format": FORMAT, "nodes": manifest}).encode())
    if len(written) > FSYNC_MAX:
        _syncfs(state.overlays)
    else:
        _fsync(written)
        _fsync_dirs([*gen.new.values(), gdir, layout.overlay_gens(state), layout.overlay_shards(state)])
    before = _swap(layout.overlay_current(state), f"gens/{gen.number}")
    if before is not None:
        _swap(layout.overlay_previous(state), before)


def _prune(state: State, gone: set[str]) -> None:
    """Unlink the dropped nodes' files from every shard folder still kept (`previous` holds
    them one more build otherwise): no reader has a reason to fetch a removed node's archive,
    and its secrets go at once."""
    shards = layout.overlay_shards(state)
    folders = os.listdir(shards)
    for name in gone:
        files = (
            name + layout.ARCHIVE,
            name + layout.RUNTIME_ARCHIVE,
            *(f"{name}.{kind}" for kind in layout.BOOT_CONFIGS),
        )
        for folder in (f for f in folders if f.startswith(layout.shard_of(name) + ".")):
            for f in files:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(shards / folder / f)


def _swap(link: Path, target: str) -> str | None:
    """Point `link` at `target` with one rename(2); returns what it pointed at."""
    try:
        before: str | None = os.readlink(link)
    except FileNotFoundError:
        before = None
    tmp = link.with_name(f".{link.name}.new")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    _fsync_dirs([link.parent])
    return before


_KEEP = {"current", "previous", "gens", "shards", "build.lock"}


def sweep(state: State) -> None:
    """Remove what neither `current` nor `previous` uses: the leftovers of a build that was
    killed or failed, the generation before `previous`, and the files of the layout before
    generations (whose archives were readable by anyone)."""
    top = state.overlays
    keep_gens, keep_shards = set(), set()
    for link in (layout.overlay_current(state), layout.overlay_previous(state)):
        with contextlib.suppress(OSError):
            gen = top / os.readlink(link)
            keep_shards |= {d.name for d in _shard_folders(gen).values()}
            keep_gens.add(gen.name)
    for folder, keep in (
        (top, _KEEP),
        (layout.overlay_gens(state), keep_gens),
        (layout.overlay_shards(state), keep_shards),
    ):
        with contextlib.suppress(FileNotFoundError):
            for name in set(os.listdir(folder)) - keep:
                _remove(folder / name)
    legacy = state.root / "nodes"  # boot configs before generations
    if legacy.is_dir() and not legacy.is_symlink():
        shutil.rmtree(legacy)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


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
    for kind, text in boot.items() if boot else []:
        conf = layout.boot_config(b.state, node.name, kind)
        before = conf.read_bytes() if conf.exists() else None
        label = f"(boot) {conf.name}"
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
