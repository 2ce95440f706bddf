"""Profile merging: later profiles beat earlier ones, the node beats every profile.

Scalars are replaced, lists append (no repeats), dicts merge key by key. The sources map
records, for `node show --sources`, which layer each value came from.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from .model import SETTINGS


def _deep_merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def merge_settings(layers: Iterable[tuple[str, Mapping[str, Any]]]) -> tuple[dict[str, Any], dict[str, str]]:
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for origin, settings in layers:
        for key, value in settings.items():
            kind = SETTINGS[key]
            if kind == "list":
                prev = list(merged.get(key, ()))
                merged[key] = tuple(prev + [v for v in value if v not in prev])
                sources[key] = f"{sources[key]} + {origin}" if key in sources else origin
            elif kind == "dict":
                merged[key] = _deep_merge(merged.get(key, {}), value)
                for sub in _leaf_keys(value):
                    sources[f"{key}.{sub}"] = origin
            else:
                merged[key] = value
                sources[key] = origin
    return merged, sources


def _leaf_keys(d: Mapping, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        name = f"{prefix}{k}"
        out.extend(_leaf_keys(v, f"{name}.") if isinstance(v, Mapping) and v else [name])
    return out
