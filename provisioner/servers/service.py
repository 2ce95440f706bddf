"""The one interface every boot service (DHCP, TFTP, HTTP) offers the daemon that runs it.

`provisioner serve` runs each service in a process of its own (supervise.py), its
serve_forever() in a thread there, and drives them all through this interface alone: it
waits for `ready`, hands each a reloaded inventory, reads counters for /metrics and stops
them with shutdown().
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

from ..inventory import Inventory


class Service(ABC):
    """A boot server, constructed ready to serve; serve_forever() runs in a thread of its own."""

    name: ClassVar[str]  # the name `serve --services` takes

    def __init__(self) -> None:
        self.ready = threading.Event()  # set by serve_forever() once requests are answered

    @abstractmethod
    def serve_forever(self) -> None:
        """Serve until shutdown(); an exception out of here fails the daemon."""

    @abstractmethod
    def shutdown(self) -> None:
        """Stop serving, from any thread; return once stopped. Releases the sockets also
        when serve_forever() never ran."""

    @abstractmethod
    def reload(self, inventory: Inventory) -> None:
        """Follow a new inventory in place, from any thread: requests in flight carry on."""

    def counters(self) -> Mapping[str, int]:
        """Live figures of this process for /metrics (DHCP packets by type...)."""
        return {}
