"""The master's users and groups as a node sees them: merged into its image's own tables.

The site's accounts (`cluster.users` picks them from the master's passwd and group) are added
to the image's passwd, group and, when the site asks, shadow: the image's system accounts
(root, daemon, munge...) stay as the image made them, since its files and daemons are owned by
those ids. A site account whose name or id the image already gives to another account is an
error, never an overwrite: the node would run one user's jobs as another. SSH public keys land
in /etc/ssh/authorized_keys/USER (the users overlay points sshd there), not in ~/.ssh, which
an NFS-mounted /home hides. Pure: the caller reads the master's files (artifacts/users.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..inventory.model import Users
from .context import RenderError
from .overlays import IdMap, OverlayTree, SourceFile

OVERLAY = "users"  # the stock overlay whose nodes get the accounts
KEYS_DIR = "etc/ssh/authorized_keys"
NOBODY = ("nobody", "nogroup")
Record = tuple[str, ...]  # the colon-separated fields of one line


def records(text: str) -> list[Record]:
    """The lines of a passwd, group or shadow file (comments and blank lines dropped)."""
    return [tuple(line.split(":")) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _line(rec: Record) -> str:
    return ":".join(rec) + "\n"


def _id(rec: Record) -> int | None:
    return int(rec[2]) if len(rec) > 2 and rec[2].isdigit() else None


@dataclass(frozen=True)
class SiteAccounts:
    """The master's accounts the nodes get. `members` are the site users the master puts in
    groups outside the selection (users:100, video:44): added where the image has that group
    with the same id."""

    passwd: tuple[Record, ...]
    group: tuple[Record, ...]
    members: Mapping[tuple[str, str], tuple[str, ...]]
    shadow: tuple[Record, ...] | None
    keys: Mapping[str, str] = field(default_factory=dict)
    origin: str = "the master"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r[0] for r in self.passwd)

    @property
    def digest(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()


def select(
    users: Users, passwd: str, group: str, shadow: str | None = None, origin: str = "the master"
) -> SiteAccounts:
    """The accounts `users` picks from the master's tables (`shadow` None: not asked)."""
    pw = [r for r in records(passwd) if len(r) >= 7 and _id(r) is not None]
    if users.names:
        known = {r[0] for r in pw}
        missing = [n for n in users.names if n not in known]
        if missing:
            raise RenderError("cluster.users.names", None, None, f"no user {', '.join(missing)} in {origin}/etc/passwd")
        chosen = [r for r in pw if r[0] in users.names]
    else:
        chosen = [r for r in pw if users.min_id <= (_id(r) or 0) <= users.max_id and r[0] not in NOBODY]
    names = {r[0] for r in chosen}
    primary = {r[3] for r in chosen}
    groups = [r for r in records(group) if len(r) >= 4 and _id(r) is not None]
    in_range = [r for r in groups if users.min_id <= (_id(r) or 0) <= users.max_id and r[0] not in NOBODY]
    picked = [r for r in groups if r in in_range or r[2] in primary or r[0] in users.groups]
    picked_names = {r[0] for r in picked}
    unknown = [g for g in users.groups if g not in picked_names]
    if unknown:
        raise RenderError("cluster.users.groups", None, None, f"no group {', '.join(unknown)} in {origin}/etc/group")
    members = {
        (r[0], r[2]): tuple(m for m in r[3].split(",") if m in names)
        for r in groups
        if r[0] not in picked_names and any(m in names for m in r[3].split(","))
    }
    lines = None
    if shadow is not None:
        by_name = {r[0]: r for r in records(shadow)}
        lines = tuple(by_name.get(r[0], (r[0], "*", "", "", "", "", "", "", "")) for r in chosen)
    return SiteAccounts(tuple(chosen), tuple(picked), members, lines, {}, origin)


def authorized_keys(users: Users, site: SiteAccounts, found: Mapping[str, str]) -> dict[str, str]:
    """Each account's keys on the nodes: those `found` on the master (its authorized_keys)
    then those cluster.yaml names; root's are the admins'. Accounts with none are left out."""
    out = {}
    for name in ("root", *site.names):
        keys = [k.strip() for text in (found.get(name, ""), users.keys.get(name, "")) for k in text.splitlines()]
        keys = [k for k in dict.fromkeys(keys) if k and not k.startswith("#")]
        if keys:
            out[name] = "\n".join(keys) + "\n"
    unknown = sorted(set(users.keys) - {"root", *site.names})
    if unknown:
        raise RenderError("cluster.users.keys", None, None, f"{', '.join(unknown)}: not among the nodes' users")
    return out


def _merge(image: list[Record], site: Iterable[Record], what: str, image_origin: str, origin: str) -> list[Record]:
    """The image's records with the site's added; a name or id already the image's is a clash,
    unless both match: the same account, whose line stays the image's (a group gains the
    master's members)."""
    out = list(image)
    by_name = {r[0]: i for i, r in enumerate(out)}
    by_id = {_id(r): r[0] for r in out if _id(r) is not None}
    for rec in site:
        i = by_name.get(rec[0])
        ident = _id(rec)
        if i is not None and (ident is None or _id(out[i]) == ident):
            if what == "group":
                out[i] = _with_members(out[i], rec)
            continue
        other = out[i] if i is not None else next((r for r in out if r[0] == by_id.get(ident)), None)
        if other is not None:
            raise RenderError(
                f"{origin}/etc/{what}",
                None,
                None,
                f"{rec[0]} ({what} id {rec[2]}) clashes with {other[0]} (id {other[2]}) in {image_origin}/{what}",
            )
        out.append(rec)
    return out


def _with_members(image: Record, site: Record) -> Record:
    members = [m for m in (*image[3].split(","), *site[3].split(",")) if m]
    return (*image[:3], ",".join(dict.fromkeys(members)))


def passwd(image: IdMap, site: SiteAccounts) -> str:
    return "".join(map(_line, _merge(records(image.passwd), site.passwd, "passwd", image.origin, site.origin)))


def group(image: IdMap, site: SiteAccounts) -> str:
    mine = []
    for r in records(image.group):
        extra = site.members.get((r[0], r[2]) if len(r) > 2 else ("", ""), ())
        mine.append(_with_members(r, (*r[:3], ",".join(extra))) if extra and len(r) >= 4 else r)
    return "".join(map(_line, _merge(mine, site.group, "group", image.origin, site.origin)))


def shadow(image: IdMap, site: SiteAccounts) -> str:
    """The image's shadow with the site users' lines (an account the image has keeps its own:
    the image's root password stays)."""
    if image.shadow is None or site.shadow is None:
        raise RenderError(OVERLAY, None, None, "the shadow file was not read (cluster.users.shadow is false)")
    out = records(image.shadow)
    known = {r[0] for r in out}
    return "".join(map(_line, out + [r for r in site.shadow if r[0] not in known]))


def tree(image: IdMap, site: SiteAccounts, runtime: bool = False) -> OverlayTree:
    """The files the users overlay adds for nodes of this image: passwd, group, shadow if the
    site asks (marked private: never shown in diffs, and like a secret never runtime), each
    user's authorized keys; `runtime` as the users overlay declares itself."""
    src = Path(site.origin)
    bodies = {"etc/passwd": passwd(image, site), "etc/group": group(image, site)}
    if site.shadow is not None:
        bodies["etc/shadow"] = shadow(image, site)
    bodies |= {f"{KEYS_DIR}/{name}": text for name, text in site.keys.items()}
    out = OverlayTree(f"{OVERLAY} (accounts of {site.origin})", runtime=runtime)
    for path, body in bodies.items():
        label = f"{OVERLAY}:{path} (from {site.origin})"
        private = path == "etc/shadow"
        out.files[path] = SourceFile(
            path, src, "static", label, body.encode(), private=private, runtime=runtime and not private
        )
    return out
