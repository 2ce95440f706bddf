"""Every module's imports follow the data path, and no provisioner modules import in a circle.

The layers, lowest first: a module may import its own layer and the layers before it, never a
later one. The data path reads inventory -> render -> artifacts -> servers -> node state, but
for imports the node-state store sits below the servers: they are what write it (leases,
stages, transfers), and it needs only the inventory. The core (actions/) is above every layer
it orchestrates; servers that need an action get it as a callback. The demo and the CLI are
the top: they call the core.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import provisioner

PACKAGE = Path(provisioner.__file__).parent
LAYERS = ("base", "inventory", "render", "artifacts", "nodestate", "bmc", "servers", "actions", "demo", "cli")


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module, dotted
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`: a dependency, but none at run time

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} (line {self.line})"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    """A subpackage is its own layer; the top-level modules (paths, atomic writes, errors...)
    are the base: declarations every layer shares, importing nothing but each other."""
    if module == "provisioner" or MODULES[module].parent == PACKAGE:
        return "base"
    area = module.split(".")[1]
    assert area in LAYERS, f"{module}: {area}/ is in no layer; add it to LAYERS where it belongs"
    return area


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, type_only: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        yield child, type_only
        inner = type_only or (isinstance(child, ast.If) and _type_checking(child))
        yield from _walk(child, inner)


def imports(module: str) -> Iterator[Import]:
    """Every provisioner module `module` imports (function-local imports too). `from pkg import
    name` counts as importing pkg.name when that is a module, else pkg itself."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node, type_only in _walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in MODULES else origin for a in node.names]
        else:
            continue
        for target in dict.fromkeys(targets):
            if target.split(".")[0] == "provisioner":
                yield Import(module, target, node.lineno, type_only)


ALL = [imp for m in MODULES for imp in imports(m)]


def test_imports_go_down_the_layers_only() -> None:
    upward = [imp for imp in ALL if LAYERS.index(layer(imp.target)) > LAYERS.index(layer(imp.source))]
    assert not upward, "imports against the data path:\n" + "\n".join(map(str, upward))


def test_servers_read_artifacts_and_never_render() -> None:
    """The design's rule for serve: artifacts are rendered before, never on a request."""
    assert not [str(i) for i in ALL if layer(i.source) == "servers" and layer(i.target) == "render"]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_import_cycle() -> None:
    """At run time (imports under TYPE_CHECKING are skipped: they exist to break a cycle for
    the type checker and never run). A package importing its own submodules in __init__ is no
    cycle: a submodule's `from . import sibling` names the sibling, not the package."""
    edges: dict[str, set[str]] = {}
    for imp in ALL:
        if not imp.type_only and imp.target != imp.source and imp.target in MODULES:
            edges.setdefault(imp.source, set()).add(imp.target)
    found = cycles(edges)
    assert not found, f"import cycles: {found}"


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_every_module_is_in_a_layer_and_parsed() -> None:
    assert "provisioner.servers.serve" in MODULES and "provisioner.inventory.model" in MODULES
    assert {layer(m) for m in MODULES} <= set(LAYERS)
    assert any(i.target == "provisioner.inventory.model" for i in ALL)


def test_a_command_loads_only_its_own_modules() -> None:
    """The CLI loads a subcommand's modules when it runs: `node list` pays for no packet
    library, netlink, TFTP or web server (together a second of start-up under load)."""
    import subprocess
    import sys

    code = (
        "import sys; from click.testing import CliRunner; from provisioner.cli import main; "
        "r = CliRunner().invoke(main, ['node', '--help']); assert r.exit_code == 0, r.output; "
        "print(' '.join(m for m in ('scapy', 'pyroute2', 'tftpy', 'aiohttp') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "", f"`node --help` imported {out.strip()}"
