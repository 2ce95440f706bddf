"""Every service `provisioner serve` runs is a Service: concrete, named as --services names it,
and with the interface's methods under the interface's signatures; one shut down before it
served (serve stopped while starting) frees its port and then returns from serve_forever()."""

import inspect
import socket
import threading

from labs.serve import cluster_yaml
from provisioner.inventory import parse_text
from provisioner.paths import State
from provisioner.servers.dhcp import DhcpServer
from provisioner.servers.http import HttpServer
from provisioner.servers.serve import SERVICES
from provisioner.servers.service import Service
from provisioner.servers.tftp_service import TftpService, directory_service

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


def test_shut_down_before_serving_frees_the_port_and_never_serves(tmp_path):
    inventory = parse_text(cluster_yaml(), "cluster.yaml")
    for make, kind in (
        (lambda: directory_service(tmp_path, "127.0.0.1", 0), socket.SOCK_DGRAM),
        (lambda: HttpServer(inventory, State(tmp_path), "127.0.0.1", _free_tcp_port()), socket.SOCK_STREAM),
    ):
        service = make()
        port = service.server.port if isinstance(service, TftpService) else service.port
        service.shutdown()
        failed: list[Exception] = []
        thread = threading.Thread(target=_catching, args=(service.serve_forever, failed))
        thread.start()
        thread.join(5)
        assert not thread.is_alive() and not failed, (service, failed)
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", port))


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _catching(fn, failed: list[Exception]) -> None:
    try:
        fn()
    except Exception as e:  # handed to the test
        failed.append(e)
