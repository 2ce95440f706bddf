"""The core: what the CLI, the demo and `serve` do, one function per action, no click.

Each action takes a Context (site, state, inventory, node-state DB), reports progress through
callbacks its caller passes, and raises errors.UserError for what the user can fix. Actions may
import every layer of the data path (inventory, render, artifacts, servers, nodestate);
nothing in those layers imports actions, so a server that needs an action (DHCP adopting a
node) is handed it as a callback by whoever starts it.
"""
