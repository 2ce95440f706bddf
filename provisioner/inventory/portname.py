"""A new node's name from the switch port it is plugged into: cluster.discovery.pattern
(`r{rack}n{port:02}`) filled in with the port's fields. Pure, so the inventory can check a
pattern against every switch before a node ever asks."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

from .schema import valid_hostname

PORT_FIELDS = ("port", "ifindex", "ifname")  # what the switch tells; a switch's rack and vars add to them


def ifname_label(ifname: str) -> str:
    """An interface name (`Gi1/0/12`) as hostname characters (`gi1-0-12`)."""
    return re.sub(r"[^a-z0-9]+", "-", ifname.lower()).strip("-")


def node_name(pattern: str, fields: Mapping[str, Any]) -> str:
    """`pattern` filled in from `fields`; ValueError saying why when a field is missing, a
    format does not fit its value or the result is no hostname."""
    try:
        used = [name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None]
    except ValueError as e:
        raise ValueError(f"{pattern!r} is not a pattern ({e})") from None
    for name in used:
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ValueError(f"{pattern!r} uses {{{name}}}; the fields here are {known}")
    try:
        name = pattern.format_map(fields)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{pattern!r} does not fit {dict(fields)} ({e})") from None
    if not valid_hostname(name):
        raise ValueError(f"{pattern!r} gives {name!r}, which is not a valid host name")
    return name
