"""Per-node image version pins: the version a node boots instead of its image's `current`.

A pin is operational state, not configuration (a rollout sets and moves it, batch by batch),
so it lives in the state directory, not in cluster.yaml. Every overlay build reads it (the
boot configs a node fetches name its pinned version), so no build path can forget it, and
image pruning keeps every pinned version. A pin for another image than the node's, or for a
version that no longer exists, is ignored: the node boots `current`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_write, locked
from ..errors import UserError
from ..paths import State


@dataclass(frozen=True)
class Pin:
    image: str
    version: str


def pins_file(state: State) -> Path:
    return state.root / "pins.json"


def load(state: State) -> dict[str, Pin]:
    """Every node's pin (none before the first rollout)."""
    path = pins_file(state)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the version pins {path}: {e}") from None
    return {node: Pin(p["image"], p["version"]) for node, p in raw.items()}


def _save(state: State, pins: Mapping[str, Pin]) -> None:
    data = {n: {"image": p.image, "version": p.version} for n, p in sorted(pins.items())}
    atomic_write(pins_file(state), json.dumps(data, indent=2, sort_keys=True) + "\n", mode=0o644)


@contextmanager
def editing(state: State) -> Iterator[dict[str, Pin]]:
    """The pins, locked against other writers; saved (atomically) when the block succeeds."""
    state.root.mkdir(parents=True, exist_ok=True)
    with locked(pins_file(state)):
        pins = load(state)
        yield pins
        _save(state, pins)


def pinned_versions(state: State, image: str) -> set[str]:
    """The versions of `image` some node is pinned to (pruning keeps them)."""
    return {p.version for p in load(state).values() if p.image == image}
