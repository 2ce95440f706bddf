"""YAML loading that remembers where every value came from.

Validation must name the file and line of each problem; plain `yaml.safe_load` forgets that,
so we compose the node tree ourselves and keep a map from value path to line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

_Loader: type[yaml.CSafeLoader | yaml.SafeLoader]
try:
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - libyaml missing
    _Loader = yaml.SafeLoader

Path = tuple[str | int, ...]

_SEXAGESIMAL_TAGS = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}


@dataclass
class Located:
    """Plain data plus the 1-based line of each mapping key or list item, by path."""

    data: Any
    lines: dict[Path, int] = field(default_factory=dict)
    duplicates: list[tuple[Path, int]] = field(default_factory=list)

    def line(self, path: Path) -> int:
        """The line of `path`, or of its nearest ancestor that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return 1


def load(text: str) -> Located:
    """Parse YAML text; raise yaml.YAMLError (with a problem_mark) on a syntax error."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        out = Located(None)
        out.data = {} if root is None else _convert(loader, root, (), out)
        return out
    finally:
        loader.dispose()


def _convert(loader: Any, node: yaml.Node, path: Path, out: Located) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                key = str(key)
            sub = (*path, key)
            if key in result:
                out.duplicates.append((sub, key_node.start_mark.line + 1))
            out.lines[sub] = key_node.start_mark.line + 1
            result[key] = _convert(loader, value_node, sub, out)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            out.lines[(*path, i)] = item.start_mark.line + 1
            items.append(_convert(loader, item, (*path, i), out))
        return items
    if node.tag in _SEXAGESIMAL_TAGS and ":" in node.value:
        # YAML 1.1 reads 52:54:00:00:00:01 as a base-60 integer; nobody means that.
        return node.value
    return loader.construct_object(node, deep=True)
