"""What every command needs: the site and state directories, the inventory, the state DB."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import click

from ..errors import UserError
from ..inventory import Inventory, InventoryInvalid, Node, load_inventory
from ..nodestate import NodeStateDB
from ..paths import Site, State


@dataclass
class Context:
    site: Site
    state: State
    _inventory: Inventory | None = field(default=None, repr=False)

    def inventory(self) -> Inventory:
        if self._inventory is None:
            if not self.site.cluster_yaml.exists():
                raise UserError(f"no inventory at {self.site.cluster_yaml} (run `provisioner init` or pass --site)")
            try:
                self._inventory = load_inventory(self.site.cluster_yaml)
            except InventoryInvalid as e:
                raise UserError(f"{len(e.problems)} problem(s) in the inventory:\n{e}") from None
        return self._inventory

    def select(self, expr: str | None) -> list[Node]:
        """Nodes for a selector; a name that is not in the inventory is a user error."""
        try:
            return self.inventory().select(expr)
        except KeyError as e:
            raise UserError(f"no such node or profile: {e.args[0]}") from None

    def db(self) -> NodeStateDB:
        return NodeStateDB(self.state.db)


pass_ctx = click.make_pass_decorator(Context)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def echo_table(headers: list[str], rows: list[list[Any]]) -> None:
    """An aligned plain-text table (no borders: easy to grep and cut)."""
    cells = [[str(h).upper() for h in headers]] + [["-" if v is None or v == "" else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
