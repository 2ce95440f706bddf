"""Node state: what was observed (leases, discovered MACs, boot stages, facts, transfers).

The inventory says what a node should be; this embedded SQLite database records what
happened. Servers write here; `provisioner status` reads. WAL mode lets the servers write
while the CLI reads.
"""

from .db import STAGES, NodeStateDB

__all__ = ["STAGES", "NodeStateDB"]
