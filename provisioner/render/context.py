"""The Jinja2 environment and template context shared by overlay and boot-config templates.

StrictUndefined everywhere: a typo in a template must fail the build with the template, line
and node named, never ship an empty value to a node.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network, ip_address, ip_interface
from types import TracebackType
from typing import Any

import jinja2
import jinja2.meta
from jinja2.defaults import DEFAULT_NAMESPACE

from ..inventory.model import Cluster, Inventory, Node
from .mpi import rdma

# Context names whose value differs from node to node; a template using none of them renders
# once per build and is shared by every node.
PER_NODE = frozenset({"node", "vars", "facts", "rdma"})


class RenderError(Exception):
    """A template failed for one node: says which template, which line and which node."""

    def __init__(self, template: str, line: int | None, node: str | None, message: str):
        self.template, self.line, self.node, self.message = template, line, node, message
        where = f"{template}:{line}" if line else template
        super().__init__(f"{where}: {message}" + (f" (node {node})" if node else ""))


# -- filters -----------------------------------------------------------------------------------


def ip_add(addr: Any, n: int) -> str:
    """`10.0.0.5 | ip_add(3)` -> 10.0.0.8 (also keeps a prefix: 10.0.0.5/24 -> 10.0.0.8/24)."""
    s = str(addr)
    if "/" in s:
        iface = ip_interface(s)
        return f"{iface.ip + n}/{iface.network.prefixlen}"
    return str(ip_address(s) + n)


def ip_offset(addr: Any, network: Any) -> int:
    """Position of an address inside a network (10.0.0.12 in 10.0.0.0/24 -> 12)."""
    return int(ip_address(str(addr))) - int(IPv4Network(str(network)).network_address)


def ip_nth(network: Any, n: int) -> str:
    """The n-th address of a network (negative counts back from the broadcast address)."""
    return str(IPv4Network(str(network))[n])


def prefixlen(network: Any) -> int:
    return IPv4Network(str(network)).prefixlen


def netmask(network: Any) -> str:
    return str(IPv4Network(str(network)).netmask)


def with_prefix(addr: Any, network: Any) -> str:
    """An address in CIDR form with the network's prefix (10.0.0.12, 10.0.0.0/24 -> 10.0.0.12/24)."""
    return str(IPv4Interface(f"{addr}/{IPv4Network(str(network)).prefixlen}"))


def reverse_pointer(addr: Any) -> str:
    return ip_address(str(addr)).reverse_pointer


def _mac_octets(mac: Any) -> list[str]:
    hexdigits = "".join(c for c in str(mac).lower() if c in "0123456789abcdef")
    if len(hexdigits) != 12:
        raise ValueError(f"{mac!r} is not a MAC address")
    return [hexdigits[i : i + 2] for i in range(0, 12, 2)]


def mac_colon(mac: Any) -> str:
    return ":".join(_mac_octets(mac))


def mac_hyphen(mac: Any) -> str:
    return "-".join(_mac_octets(mac))


def mac_bare(mac: Any) -> str:
    return "".join(_mac_octets(mac))


def mac_upper(mac: Any) -> str:
    return ":".join(_mac_octets(mac)).upper()


def mac_pxelinux(mac: Any) -> str:
    """PXELINUX's per-client config name: ARP type 01, then the MAC with hyphens."""
    return "01-" + mac_hyphen(mac)


FILTERS: dict[str, Callable[..., Any]] = {
    f.__name__: f
    for f in (
        ip_add,
        ip_offset,
        ip_nth,
        prefixlen,
        netmask,
        with_prefix,
        reverse_pointer,
        mac_colon,
        mac_hyphen,
        mac_bare,
        mac_upper,
        mac_pxelinux,
    )
}


def environment(loader: jinja2.BaseLoader | None = None) -> jinja2.Environment:
    """Block tags on their own line leave no blank line behind (trim_blocks, lstrip_blocks)."""
    env = jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters.update(FILTERS)
    return env


# -- context -------------------------------------------------------------------------------------


class SecretHandles:
    """What templates see as `secrets`: read a secret's text by its path under state/secrets.

    Templates may embed public material (a CA's public key); private bytes belong in `.secret`
    files, which never pass through a template's text.
    """

    def __init__(self, reader: Callable[[str], bytes]):
        self._reader = reader

    def text(self, relpath: str) -> str:
        return self._reader(relpath).decode().strip()


@dataclass(frozen=True)
class SharedContext:
    """The part of the context that is the same for every node of one build."""

    cluster: Cluster
    nodes: tuple[Node, ...]
    secrets: SecretHandles

    def as_dict(self) -> dict[str, Any]:
        return {**DEFAULT_NAMESPACE, "cluster": self.cluster, "nodes": self.nodes, "secrets": self.secrets}


def shared_context(inventory: Inventory, secrets: SecretHandles) -> SharedContext:
    return SharedContext(inventory.cluster, inventory.nodes, secrets)


def node_context(shared: SharedContext, node: Node, facts: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`rdma`: the node's RDMA devices, () when it has none, None until it has said (render.mpi)."""
    return {**shared.as_dict(), "node": node, "vars": node.vars, "facts": dict(facts or {}), "rdma": rdma(node, facts)}


def reads(env: jinja2.Environment, source: str, name: str) -> frozenset[str]:
    """The context names a template reads: those in PER_NODE make it per node (else it renders
    once per build); `nodes` read by a per-node template ties it to every node."""
    try:
        ast = env.parse(source, name=name, filename=name)
    except jinja2.TemplateSyntaxError as e:
        raise RenderError(name, e.lineno, None, f"syntax error: {e.message}") from None
    return frozenset(jinja2.meta.find_undeclared_variables(ast))


def compile_template(env: jinja2.Environment, source: str, name: str) -> jinja2.Template:
    try:
        code = env.compile(source, name=name, filename=name)
    except jinja2.TemplateSyntaxError as e:
        raise RenderError(name, e.lineno, None, f"syntax error: {e.message}") from None
    return env.template_class.from_code(env, code, env.make_globals(None), None)


def render(template: jinja2.Template, context: Mapping[str, Any], node: str | None) -> str:
    """Render, turning any template failure into a RenderError with template, line and node.

    The context is used as is, not copied per template (a node renders a dozen templates from
    one context): contexts from this module already carry Jinja's default globals."""
    try:
        ctx = template.new_context(dict(context) if not isinstance(context, dict) else context, shared=True)
        try:
            return template.environment.concat(template.root_render_func(ctx))
        except Exception:
            template.environment.handle_exception()  # re-raises with template lines in the traceback
    except jinja2.TemplateError as e:
        raise RenderError(
            template.name or "?", _template_line(sys.exc_info()[2], template), node, _message(e)
        ) from None
    except (ValueError, TypeError, ArithmeticError, LookupError, AttributeError) as e:
        raise RenderError(
            template.name or "?", _template_line(sys.exc_info()[2], template), node, f"{type(e).__name__}: {e}"
        ) from None


def _message(e: jinja2.TemplateError) -> str:
    if isinstance(e, jinja2.UndefinedError):
        return f"undefined variable: {e.message}"
    return e.message or type(e).__name__


def _template_line(tb: TracebackType | None, template: jinja2.Template) -> int | None:
    """Jinja2 rewrites tracebacks so frames point into the template; take the innermost one."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == template.filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
