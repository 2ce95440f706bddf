"""What every action needs: the site and state directories, the inventory, the state DB."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..inventory import Inventory, InventoryInvalid, Node, load_inventory
from ..nodestate import NodeStateDB
from ..paths import Site, State

# How an action tells its caller something (a progress line, a warning): the CLI echoes it,
# the demo prefixes its stage, a test collects it.
Say = Callable[[str], None]


def quiet(_: str) -> None:
    """The Say of a caller who wants to hear nothing."""


def select(inventory: Inventory, expr: str | None) -> list[Node]:
    """Nodes for a selector; a name that is not in the inventory is a user error."""
    try:
        return inventory.select(expr)
    except KeyError as e:
        raise UserError(f"no such node or profile: {e.args[0]}") from None


@dataclass
class Context:
    site: Site
    state: State
    _inventory: Inventory | None = field(default=None, repr=False)

    def has_inventory(self) -> bool:
        return self.site.cluster_yaml.exists()

    def inventory(self) -> Inventory:
        """The inventory, loaded on first use (commands that need none work before `init`)."""
        if self._inventory is None:
            if not self.has_inventory():
                raise UserError(f"no inventory at {self.site.cluster_yaml} (run `provisioner init` or pass --site)")
            try:
                self._inventory = load_inventory(self.site.cluster_yaml)
            except InventoryInvalid as e:
                raise UserError(f"{len(e.problems)} problem(s) in the inventory:\n{e}") from None
        return self._inventory

    def fresh(self) -> Context:
        """The same directories with the inventory read again (a long-running action's next round)."""
        return Context(self.site, self.state)

    def select(self, expr: str | None) -> list[Node]:
        return select(self.inventory(), expr)

    def node(self, name: str) -> Node:
        node = self.inventory().node(name)
        if node is None:
            raise UserError(f"no such node: {name}")
        return node

    def db(self) -> NodeStateDB:
        return NodeStateDB(self.state.db)

    def facts(self) -> dict[str, dict[str, Any]]:
        """What nodes reported (templates and slurm.conf use it); none before the first boot,
        and no database is made just to read that."""
        if not self.state.db.exists():
            return {}
        db = self.db()
        try:
            return db.all_facts()
        finally:
            db.close()
