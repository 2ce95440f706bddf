"""Profile merging: later profiles beat earlier ones, the node beats every profile.

Each setting's kind names its rule: scalars are replaced, lists append (no repeats), dicts
merge key by key. The sources map
records, for `node show --sources`, which layer each value came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .model import SETTINGS


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def merge_settings(layers: Iterable[tuple[str, Mapping[str, Any]]]) -> tuple[dict[str, Any], dict[str, str]]:
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for origin, settings in layers:
        for key, value in settings.items():
            rule = SETTINGS[key].kind.merge
            if rule == "append":
                prev = list(merged.get(key, ()))
                merged[key] = tuple(prev + [v for v in value if v not in prev])
                sources[key] = f"{sources[key]} + {origin}" if key in sources else origin
            elif rule == "merge":
                merged[key] = _deep_merge(merged.get(key, {}), value)
                for sub in _leaf_keys(value):
                    sources[f"{key}.{sub}"] = origin
            else:
                merged[key] = value
                sources[key] = origin
    return merged, sources


def _leaf_keys(d: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        name = f"{prefix}{k}"
        out.extend(_leaf_keys(v, f"{name}.") if isinstance(v, Mapping) and v else [name])
    return out
