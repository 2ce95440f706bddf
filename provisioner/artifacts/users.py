"""The master's accounts read for the users overlay: the I/O half of render/users.py.

Read from `cluster.users.root` (the master's /, or a scratch tree in tests): etc/passwd,
etc/group, etc/shadow only when the site asks for it, and the chosen users' keys from their
~/.ssh/authorized_keys; root's are the admins' (root's authorized_keys and its own id_*.pub,
so the master's root reaches every node). Read at every build, so a change on the master
reaches the nodes with the next `overlay build` (the accounts' digest is part of every
node's).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import UserError
from ..inventory.model import Inventory, Users
from ..paths import State
from ..render.context import RenderError
from ..render.overlays import IdMap, node_overlays
from ..render.users import OVERLAY, SiteAccounts, authorized_keys, records, select, tree
from . import images, layout


def wanted(inventory: Inventory) -> bool:
    """Whether any node has the users overlay (else the master's accounts are not read)."""
    return any(OVERLAY in node_overlays(n) for n in inventory.nodes)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as e:
        raise UserError(f"cannot read the master's accounts: {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"cannot read the master's accounts: {path}: not UTF-8 (byte {e.start})") from None


def load(users: Users) -> SiteAccounts:
    root = Path(users.root)
    passwd = _read(root / "etc/passwd")
    shadow = _read(root / "etc/shadow") if users.shadow else None
    try:
        site = select(users, passwd, _read(root / "etc/group"), shadow, str(root))
    except RenderError as e:
        raise UserError(str(e)) from None
    homes = {r[0]: r[5] for r in records(passwd) if len(r) >= 7}
    found = {}
    for name in ("root", *site.names):
        ssh = root / homes.get(name, f"/home/{name}").lstrip("/") / ".ssh"
        files = [ssh / "authorized_keys", *(sorted(ssh.glob("id_*.pub")) if name == "root" else ())]
        found[name] = "".join(_read(f) + "\n" for f in files if f.is_file())
    try:
        return dataclasses.replace(site, keys=authorized_keys(users, site, found))
    except RenderError as e:
        raise UserError(str(e)) from None


def image_ids(state: State, image: str | None, version: str | None, users: Users) -> IdMap:
    """The tables of the image a node boots (its shadow too when the site's is merged)."""
    return IdMap.load(layout.image_rootfs(state, image, version) if image else None, users.shadow)


def problems(state: State, inventory: Inventory) -> list[str]:
    """What stops the users overlay: the master's files, or a site account that clashes with
    an account of an image its nodes boot (for `check`, before any build)."""
    if not wanted(inventory):
        return []
    try:
        site = load(inventory.cluster.users)
    except UserError as e:
        return [str(e)]
    out = []
    used = {n.image for n in inventory.nodes if OVERLAY in node_overlays(n)}
    for image in sorted(used, key=lambda i: i or ""):
        version = images.current_version(state, image) if image else None
        try:
            tree(image_ids(state, image, version, inventory.cluster.users), site)
        except RenderError as e:
            out.append(f"image {image or '(none: the master)'}: {e}")
    return out
