"""Every service `provisioner serve` runs is a Service: concrete, named as --services names it,
and with the interface's methods under the interface's signatures."""

import inspect

from provisioner.servers.dhcp import DhcpServer
from provisioner.servers.http import HttpServer
from provisioner.servers.serve import SERVICES
from provisioner.servers.service import Service
from provisioner.servers.tftp_service import TftpService

CLASSES = (DhcpServer, TftpService, HttpServer)
INTERFACE = ("serve_forever", "shutdown", "reload", "counters")


def test_every_service_class_satisfies_the_interface():
    assert sorted(c.name for c in CLASSES) == sorted(SERVICES)
    for cls in CLASSES:
        assert issubclass(cls, Service) and not inspect.isabstract(cls), cls
        for method in INTERFACE:
            ours, declared = inspect.signature(getattr(cls, method)), inspect.signature(getattr(Service, method))
            assert list(ours.parameters) == list(declared.parameters), (cls, method, ours)
        assert "ready" not in vars(cls), f"{cls.__name__} must take `ready` from Service.__init__"


def test_the_base_class_gives_ready_and_empty_counters():
    class Idle(Service):
        name = "idle"

        def serve_forever(self) -> None:
            self.ready.set()

        def shutdown(self) -> None:
            pass

        def reload(self, inventory) -> None:
            pass

    idle = Idle()
    assert not idle.ready.is_set() and idle.counters() == {}
    idle.serve_forever()
    assert idle.ready.is_set()
