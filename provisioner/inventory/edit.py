"""CLI edits of cluster.yaml that keep the admin's comments and key order.

An edit takes the site lock, loads the file in ruamel.yaml's round-trip mode, changes the
document, validates the result with the same parser `check` uses, and only then replaces the
file atomically. An invalid result writes nothing.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from ..atomic import atomic_write, locked
from .hostlist import compress, expand, is_range
from .model import Inventory
from .parse import parse_text


def _yaml() -> YAML:
    y = YAML()  # round-trip
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    y.width = 4096
    return y


@contextlib.contextmanager
def edit_inventory(path: str | Path) -> Iterator[tuple[CommentedMap, Inventory]]:
    """Yield (document, inventory as it is now) under the lock; on clean exit validate the
    edited document and write it atomically.

    Raises InventoryInvalid (and writes nothing) if the file or the edit does not validate.
    """
    path = Path(path)
    with locked(path):
        y = _yaml()
        before = path.read_text()
        current = parse_text(before, str(path))
        doc = y.load(before) or CommentedMap()
        yield doc, current
        text = _dump(y, doc)
        parse_text(text, str(path))
        atomic_write(path, text)


def _dump(y: YAML, doc: CommentedMap) -> str:
    buf = io.StringIO()
    y.dump(doc, buf)
    return buf.getvalue()


def edited(doc: CommentedMap, path: str | Path) -> Inventory:
    """The inventory the edited document makes (InventoryInvalid if none): what edit_inventory
    will write, for work that must be done before the file says so."""
    return parse_text(_dump(_yaml(), doc), str(path))


def node_entries(doc: CommentedMap) -> CommentedSeq:
    if doc.get("nodes") is None:
        doc["nodes"] = CommentedSeq()
    nodes: CommentedSeq = doc["nodes"]
    return nodes


def find_entry(doc: CommentedMap, name: str) -> tuple[int, int] | None:
    """(entry index, position of `name` within the entry's expansion), or None."""
    for i, entry in enumerate(node_entries(doc)):
        pattern = str(entry.get("name", ""))
        names = expand(pattern) if is_range(pattern) else [pattern]
        if name in names:
            return i, names.index(name)
    return None


def _slice_entry(entry: CommentedMap, names: list[str], start: int, stop: int) -> list[CommentedMap]:
    """Entries for names[start:stop] of a range entry, addresses and MAC lists shifted."""
    piece = names[start:stop]
    if not piece:
        return []
    if expand(compress(piece)) != piece:
        return [e for k in range(start, stop) for e in _slice_entry(entry, names, k, k + 1)]
    out = CommentedMap()
    for key, value in entry.items():
        out[key] = value
    out["name"] = compress(piece)

    def shift(m: CommentedMap) -> None:
        if m.get("ip") is not None:
            m["ip"] = str(IPv4Address(str(m["ip"])) + start)
        if isinstance(m.get("mac"), list):
            macs = list(m["mac"][start:stop])
            m["mac"] = macs[0] if len(piece) == 1 else CommentedSeq(macs)

    shift(out)
    if out.get("bmc") is not None:
        out["bmc"] = str(IPv4Address(str(out["bmc"])) + start)
    if isinstance(out.get("interfaces"), list):
        ifaces = CommentedSeq()
        for iface in out["interfaces"]:
            copy = CommentedMap(iface.items())
            shift(copy)
            ifaces.append(copy)
        out["interfaces"] = ifaces
    return [out]


def isolate(doc: CommentedMap, name: str) -> CommentedMap:
    """The entry for node `name` alone, splitting a range entry around it if needed."""
    found = find_entry(doc, name)
    if found is None:
        raise KeyError(name)
    i, j = found
    entries = node_entries(doc)
    entry: CommentedMap = entries[i]
    pattern = str(entry["name"])
    if not is_range(pattern) or len(expand(pattern)) == 1:
        return entry
    names = expand(pattern)
    before = _slice_entry(entry, names, 0, j)
    pieces = before + _slice_entry(entry, names, j, j + 1) + _slice_entry(entry, names, j + 1, len(names))
    entries[i] = pieces[0]
    for k, p in enumerate(pieces[1:], start=1):
        entries.insert(i + k, p)
    return pieces[len(before)]


def set_fields(entry: CommentedMap, values: dict[str, Any]) -> None:
    """Set (or with value None, remove) keys; lists become YAML flow lists for readability."""
    for key, value in values.items():
        if value is None:
            entry.pop(key, None)
        elif isinstance(value, (list, tuple)):
            seq = CommentedSeq(value)
            seq.fa.set_flow_style()
            entry[key] = seq
        else:
            entry[key] = value


def used_ips(inv: Inventory) -> set[IPv4Address]:
    ips = {i.ip for n in inv.nodes for i in n.interfaces if i.ip}
    net = inv.cluster.network
    ips.add(net.master)
    if net.gateway:
        ips.add(net.gateway)
    return ips


def next_free_ip(inv: Inventory, within: tuple[IPv4Address, IPv4Address] | None = None) -> IPv4Address | None:
    """The lowest host address of the subnet (and of the range `within`, FIRST-LAST) that no
    node, master or gateway uses and that lies outside the dynamic range."""
    taken = used_ips(inv)
    net = inv.cluster.network
    for ip in net.subnet.hosts():
        if within is not None and not within[0] <= ip <= within[1]:
            continue
        if ip not in taken and not net.in_dynamic_range(ip):
            return ip
    return None
