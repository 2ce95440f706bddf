"""Overlay trees rendered per node into a list of file entries (path, bytes, mode, owner).

Sources, later winning file by file: the stock overlay (overlays/<name>/), the site's overlay
of the same name (site/overlays/<name>/), the overlays in the node's order after the one every
node gets (ALWAYS), and finally the node's own override tree (site/nodes/<node>/). In every
tree `*.j2` is a template, `*.secret` names a secret whose bytes become the file, symlinks stay
symlinks, `*.symlink` is a symlink to the target it holds (how the stock trees, shipped in a
wheel, carry theirs), and `_meta.yaml` sets mode/owner/group per node path. An overlay may
also get files made from data rather than from a tree (the users overlay: the master's accounts
merged into the image's, see users.py). Rendering is pure given the secret reader: no writes.

An overlay is boot-time unless its `_overlay.yaml` says `runtime: true` (stock and site files
merge, the site's keys winning); a node's own override tree is runtime unless its
`_overlay.yaml` says otherwise. Running nodes get their runtime files again whenever a build
changes them (the node agent); secrets are never runtime: identity is set at boot. `reload`
maps a node path (a file, or a folder ending in "/") to a command the agent runs once after
files under it changed, e.g. `etc/ssh/sshd_config.d/: systemctl reload ssh`.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jinja2
import yaml

from ..inroot import Root
from ..inventory.model import Node
from ..paths import Site
from ..resources import STOCK_OVERLAYS
from .context import (
    PER_NODE,
    RenderError,
    SharedContext,
    compile_template,
    environment,
    node_context,
    reads,
    render,
)

META = "_meta.yaml"
DECLARATION = "_overlay.yaml"
LINK = ".symlink"
DIR_MODE, FILE_MODE, EXEC_MODE, SECRET_MODE = 0o755, 0o644, 0o755, 0o600
# Every node's overlay starts with this one: it carries the node's report credential, without
# which nothing the node reports is believed.
# The agent overlay keeps runtime files current on running nodes.
ALWAYS = ("provisioner", "agent")


def node_overlays(node: Node) -> tuple[str, ...]:
    return (*ALWAYS, *(o for o in node.overlays if o not in ALWAYS))


@dataclass(frozen=True)
class Meta:
    mode: int | None = None
    owner: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class FileEntry:
    """One path on the node. `data` is the body, or the target for a symlink. `shared` means
    every node of the build gets these same bytes (the archive writer reuses their compressed
    form)."""

    path: str
    kind: str  # "file", "dir" or "symlink"
    data: bytes
    perm: int
    owner: str
    group: str
    uid: int
    gid: int
    source: str
    shared: bool = False
    secret: bool = False
    runtime: bool = False  # refreshed on running nodes (from a runtime overlay, not a secret)

    @property
    def mode(self) -> int:
        kind = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}[self.kind]
        return kind | self.perm


@dataclass
class SourceFile:
    out: str
    src: Path
    kind: str  # "template", "secret", "static", "symlink", "dir"
    label: str
    data: bytes = b""
    template: jinja2.Template | None = None
    per_node: bool = False
    executable: bool = False
    reads: frozenset[str] = frozenset()
    private: bool = False  # root's alone, like a secret, and never shown in a diff
    runtime: bool = False  # its tree is a runtime overlay

    @property
    def per_node_reads_all(self) -> bool:
        """Rendered per node yet reading every node: its output changes with any node."""
        return self.per_node and "nodes" in self.reads


@dataclass
class OverlayTree:
    """One overlay (stock + site merged) or one node's override tree."""

    name: str
    files: dict[str, SourceFile] = field(default_factory=dict)
    meta: dict[str, Meta] = field(default_factory=dict)
    digest: str = ""
    runtime: bool = False
    reload: dict[str, str] = field(default_factory=dict)  # node path or folder/ -> command


def _parse_declaration(path: Path, into: OverlayTree) -> None:
    """`runtime: bool` and `reload: {path: command}` from an overlay's _overlay.yaml."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RenderError(str(path), None, None, f"invalid YAML: {e}") from None
    if not isinstance(raw, dict) or set(raw) - {"runtime", "reload"}:
        raise RenderError(str(path), None, None, "expected keys runtime (true/false) and reload ({path: command})")
    runtime = raw.get("runtime", into.runtime)
    reload = raw.get("reload") or {}
    if not isinstance(runtime, bool):
        raise RenderError(str(path), None, None, f"runtime: expected true or false, got {runtime!r}")
    if not isinstance(reload, dict) or not all(
        isinstance(k, str) and k.strip("/") and isinstance(v, str) and v.strip() and "\n" not in v + k
        for k, v in reload.items()
    ):
        raise RenderError(str(path), None, None, "reload: expected {node path: one-line command}")
    into.runtime = runtime
    into.reload.update({k.lstrip("/"): v.strip() for k, v in reload.items()})


def _parse_meta(path: Path) -> dict[str, Meta]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RenderError(
            str(path), getattr(getattr(e, "problem_mark", None), "line", -1) + 1, None, f"invalid YAML: {e}"
        ) from None
    if not isinstance(raw, dict):
        raise RenderError(str(path), 1, None, "must map node paths to {mode, owner, group}")
    out = {}
    for key, spec in raw.items():
        if not isinstance(spec, dict) or set(spec) - {"mode", "owner", "group"}:
            raise RenderError(str(path), None, None, f"{key}: expected {{mode, owner, group}}, got {spec!r}")
        mode = spec.get("mode")
        try:
            perm = int(str(mode), 8) if mode is not None else None
        except ValueError:
            raise RenderError(str(path), None, None, f'{key}: mode {mode!r} is not octal like "0640"') from None
        if perm is not None and not 0 <= perm <= 0o7777:
            raise RenderError(str(path), None, None, f"{key}: mode {mode!r} out of range")
        out[str(key).strip("/")] = Meta(perm, _opt_str(spec.get("owner")), _opt_str(spec.get("group")))
    return out


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


def load_tree(name: str, roots: Iterable[Path], env: jinja2.Environment, runtime: bool = False) -> OverlayTree:
    """Merge the given roots (later wins file by file) into one tree; templates compiled once.
    `runtime` is the tree's kind unless its _overlay.yaml says otherwise."""
    tree = OverlayTree(name, runtime=runtime)
    digest = hashlib.sha256()
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            base = Path(dirpath)
            rel_dir = base.relative_to(root).as_posix()
            for entry in sorted(dirnames + filenames):
                src = base / entry
                rel = entry if rel_dir == "." else f"{rel_dir}/{entry}"
                if rel == META:
                    tree.meta.update(_parse_meta(src))
                    digest.update(b"meta\0" + src.read_bytes())
                    continue
                if rel == DECLARATION:
                    _parse_declaration(src, tree)
                    digest.update(b"declaration\0" + src.read_bytes())
                    continue
                sf = _source(src, rel, f"{name}:{rel}", env)
                if sf is None:
                    continue
                digest.update(f"{sf.kind}\0{sf.out}\0{int(sf.executable)}\0".encode() + sf.data)
                tree.files[sf.out] = sf
            dirnames[:] = [d for d in dirnames if not (base / d).is_symlink()]
    for sf in tree.files.values():
        sf.runtime = tree.runtime and sf.kind != "secret"
    tree.digest = digest.hexdigest()
    return tree


def _source(src: Path, rel: str, label: str, env: jinja2.Environment) -> SourceFile | None:
    if src.is_symlink():
        return SourceFile(rel, src, "symlink", label, os.readlink(src).encode())
    if src.is_dir():
        return SourceFile(rel, src, "dir", label)
    if not src.is_file():
        return None
    data = src.read_bytes()
    if rel.endswith(LINK):
        return SourceFile(rel[: -len(LINK)], src, "symlink", label, data.strip())
    executable = bool(src.stat().st_mode & 0o111)
    for suffix, kind in ((".j2", "template"), (".secret", "secret")):
        if rel.endswith(suffix):
            try:
                text = data.decode()
            except UnicodeDecodeError as e:
                raise RenderError(label, None, None, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
            names = reads(env, text, label)
            return SourceFile(
                rel[: -len(suffix)],
                src,
                kind,
                label,
                data,
                compile_template(env, text, label),
                bool(names & PER_NODE),
                executable,
                names,
            )
    return SourceFile(rel, src, "static", label, data, executable=executable)


class IdMap:
    """User and group names to ids, from an image's etc/passwd and etc/group (the node's view);
    the tables' text too, which the users overlay merges the site's accounts into, and the
    image's shadow when that is merged as well (None: not read)."""

    def __init__(self, passwd: str, group: str, origin: str, shadow: str | None = None):
        self.users = _id_table(passwd)
        self.groups = _id_table(group)
        self.passwd, self.group, self.shadow = passwd, group, shadow
        self.origin = origin
        tables = f"{passwd}\0{group}" + ("" if shadow is None else f"\0{shadow}")  # as before shadow was read
        self.digest = hashlib.sha256(tables.encode()).hexdigest()

    @classmethod
    def load(cls, rootfs: Path | None, shadow: bool = False) -> IdMap:
        """The image's tables (read inside the image: its links lead nowhere on this host);
        the master's own when the image is not built yet, but never the master's shadow (its
        root password has no place on a node)."""
        built = rootfs is not None and Root(rootfs).is_file("etc/passwd")
        image = Root(rootfs if built and rootfs is not None else Path("/"))
        group = image.read_text("etc/group") if image.is_file("etc/group") else ""
        has_shadow = built and image.is_file("etc/shadow")
        secret = (image.read_text("etc/shadow") if has_shadow else "") if shadow else None
        return cls(image.read_text("etc/passwd"), group, str(image.path / "etc"), secret)

    def uid(self, name: str) -> int:
        return self._resolve(name, self.users, "user")

    def gid(self, name: str) -> int:
        return self._resolve(name, self.groups, "group")

    def _resolve(self, name: str, table: dict[str, int], what: str) -> int:
        if name.isdigit():
            return int(name)
        if name not in table:
            raise KeyError(f"no {what} {name!r} in {self.origin}/{'passwd' if what == 'user' else 'group'}")
        return table[name]


def _id_table(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            out.setdefault(parts[0], int(parts[2]))
    return out


class OverlayLibrary:
    """Every overlay the site can use, loaded and compiled once per build."""

    def __init__(self, site: Site | None, stock: Path = STOCK_OVERLAYS):
        self.site = site
        self.stock = stock
        self.env = environment()
        self._trees: dict[str, OverlayTree] = {}
        self._overrides: dict[str, OverlayTree | None] = {}
        self._override_names: set[str] | None = None

    def names(self) -> list[str]:
        roots = [self.stock] + ([self.site.overlays] if self.site else [])
        return sorted({p.name for r in roots if r.is_dir() for p in r.iterdir() if p.is_dir()})

    def roots(self, name: str) -> list[Path]:
        return [self.stock / name] + ([self.site.overlays / name] if self.site else [])

    def tree(self, name: str) -> OverlayTree:
        if name not in self._trees:
            roots = self.roots(name)
            if not any(r.is_dir() for r in roots):
                raise RenderError(name, None, None, f"no overlay {name!r} (looked in {', '.join(map(str, roots))})")
            self._trees[name] = load_tree(name, roots, self.env)
        return self._trees[name]

    def override_tree(self, node: str) -> OverlayTree | None:
        """The node's own files (site/nodes/<node>/), or None; the folder is listed once."""
        if self._override_names is None:
            folder = self.site.node_overrides("") if self.site else None  # site/nodes itself
            self._override_names = set(os.listdir(folder)) if folder and folder.is_dir() else set()
        if node not in self._override_names or self.site is None:
            return None
        if node not in self._overrides:
            path = self.site.node_overrides(node)
            tree = load_tree(f"nodes/{node}", [path], self.env, runtime=True) if path.is_dir() else None
            self._overrides[node] = tree
        return self._overrides[node]


class NodeRenderer:
    """Renders nodes of one build: shared templates once, per-node templates per node."""

    def __init__(
        self,
        library: OverlayLibrary,
        shared: SharedContext,
        read_secret: Callable[[str], bytes],
        idmap: Callable[[str | None], IdMap],
        generated: Callable[[str, str | None], OverlayTree | None] = lambda name, image: None,
    ):
        self.library = library
        self.shared = shared
        self.read_secret = read_secret
        self.idmap = idmap
        self.generated = generated  # files an overlay gets from data, per image (the users')
        self._shared_bodies: dict[int, bytes] = {}
        self._layouts: dict[tuple[tuple[str, ...], str | None], list[tuple[FileEntry, SourceFile | None]]] = {}

    def merged(self, node: Node) -> tuple[dict[str, SourceFile], dict[str, Meta], OverlayTree | None]:
        files: dict[str, SourceFile] = {}
        meta: dict[str, Meta] = {}
        for name in node_overlays(node):
            tree = self.library.tree(name)
            files.update(tree.files)
            meta.update(tree.meta)
            made = self.generated(name, node.image)
            if made is not None:
                files.update(made.files)
        own = self.library.override_tree(node.name)
        if own is not None:
            files.update(own.files)
            meta.update(own.meta)
        return files, meta, own

    def render(self, node: Node, facts: Mapping[str, Any] | None = None) -> list[FileEntry]:
        """Every path of the node's overlay, parents before children, sorted.

        Nodes with the same overlays and image share one layout (paths, modes, owners, shared
        bodies); only the per-node slots are rendered for each node."""
        files, meta, own = self.merged(node)
        if own is None:
            key = (node.overlays, node.image)
            if key not in self._layouts:
                self._layouts[key] = self._layout(files, meta, None, node)
            layout = self._layouts[key]
        else:
            layout = self._layout(files, meta, own, node)
        entries = [e for e, _ in layout]
        ctx: dict[str, Any] | None = None
        for i, (proto, sf) in enumerate(layout):
            if sf is not None:
                if ctx is None:
                    ctx = node_context(self.shared, node, facts)
                entries[i] = FileEntry(
                    proto.path,
                    proto.kind,
                    self._body(sf, ctx, node.name),
                    proto.perm,
                    proto.owner,
                    proto.group,
                    proto.uid,
                    proto.gid,
                    proto.source,
                    False,
                    proto.secret,
                    proto.runtime,
                )
        return entries

    def reload_actions(self, node: Node) -> dict[str, str]:
        """The node's reload actions (node path or folder/ -> command), later trees winning."""
        actions: dict[str, str] = {}
        trees = [self.library.tree(n) for n in node_overlays(node)]
        own = self.library.override_tree(node.name)
        for tree in [*trees, *([own] if own else [])]:
            actions.update(tree.reload)
        return actions

    def _layout(
        self, files: dict[str, SourceFile], meta: dict[str, Meta], own: OverlayTree | None, node: Node
    ) -> list[tuple[FileEntry, SourceFile | None]]:
        """Sorted entries with shared bodies filled in; per-node ones paired with their source."""
        ids = self.idmap(node.image)
        entries: dict[str, tuple[FileEntry, SourceFile | None]] = {}
        for out, sf in files.items():
            own_file = own is not None and own.files.get(out) is sf
            per_node = own_file or (sf.kind in ("template", "secret") and sf.per_node)
            body = b"" if per_node else self.shared_body(sf, node.name)
            entry = self._entry(out, sf, body, meta.get(out), ids, node.name, not per_node)
            entries[out] = (entry, sf if per_node and sf.kind not in ("dir", "symlink") else None)
        for out in list(entries):
            parent = out.rpartition("/")[0]
            while parent and parent not in entries:
                entries[parent] = (self._dir(parent, meta.get(parent), ids, node.name), None)
                parent = parent.rpartition("/")[0]
        return [entries[k] for k in sorted(entries)]

    def shared_body(self, sf: SourceFile, node: str | None = None) -> bytes:
        """The bytes of a file every node shares, rendered once per build."""
        key = id(sf)
        if key not in self._shared_bodies:
            self._shared_bodies[key] = self._body(sf, self.shared.as_dict(), node)
        return self._shared_bodies[key]

    def _body(self, sf: SourceFile, ctx: Mapping[str, Any], node: str | None) -> bytes:
        if sf.kind == "template":
            return render(sf.template, ctx, node).encode()  # type: ignore[arg-type]
        if sf.kind == "secret":
            relpath = render(sf.template, ctx, node).strip()  # type: ignore[arg-type]
            try:
                return self.read_secret(relpath)
            except Exception as e:  # the reader's own error says what is missing
                raise RenderError(sf.label, None, node, str(getattr(e, "message", e))) from None
        return sf.data

    def _entry(
        self, out: str, sf: SourceFile, body: bytes, m: Meta | None, ids: IdMap, node: str, shared: bool
    ) -> FileEntry:
        if sf.kind == "dir":
            return self._dir(out, m, ids, node)
        if sf.kind == "symlink":
            return FileEntry(out, "symlink", body, 0o777, "root", "root", 0, 0, sf.label, True, runtime=sf.runtime)
        secret = sf.kind == "secret" or sf.private
        default = SECRET_MODE if secret else EXEC_MODE if sf.executable else FILE_MODE
        entry = self._owned(out, "file", body, default, m, ids, node, sf.label, shared)
        return replace(entry, secret=secret, runtime=sf.runtime)

    def _dir(self, out: str, m: Meta | None, ids: IdMap, node: str) -> FileEntry:
        return self._owned(out, "dir", b"", DIR_MODE, m, ids, node, "(directory)", True)

    def _owned(
        self,
        out: str,
        kind: str,
        body: bytes,
        default: int,
        m: Meta | None,
        ids: IdMap,
        node: str,
        label: str,
        shared: bool,
    ) -> FileEntry:
        m = m or Meta()
        owner, group = m.owner or "root", m.group or m.owner or "root"
        try:
            uid, gid = ids.uid(owner), ids.gid(group)
        except KeyError as e:
            raise RenderError(f"{label} (_meta.yaml {out})", None, node, e.args[0]) from None
        return FileEntry(out, kind, body, default if m.mode is None else m.mode, owner, group, uid, gid, label, shared)


def runtime_entries(entries: list[FileEntry]) -> list[FileEntry]:
    """The runtime part of a node's entries: its runtime files and links with their folders."""
    keep = {e.path for e in entries if e.runtime}
    for path in list(keep):
        parent = path.rpartition("/")[0]
        while parent and parent not in keep:
            keep.add(parent)
            parent = parent.rpartition("/")[0]
    return [e for e in entries if e.path in keep]
