"""A commented starter cluster.yaml for this host (`provisioner init`).

The provisioning interface and its subnet are read from the kernel with pyroute2: the named
interface, or else the one holding the default route, or else the first with an IPv4 address.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network

from pyroute2 import IPRoute


@dataclass(frozen=True)
class HostNet:
    interface: str
    address: IPv4Interface


def detect(interface: str | None = None) -> HostNet:
    """The provisioning interface and its address; LookupError if none fits."""
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        addrs: dict[str, list[IPv4Interface]] = {}
        for a in ipr.get_addr(family=2):
            name = names.get(a["index"])
            addrs.setdefault(name, []).append(IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"))
        default_ifs = [names.get(r.get_attr("RTA_OIF")) for r in ipr.get_default_routes(family=2)]
    if interface:
        if interface not in names.values():
            raise LookupError(f"no interface named {interface!r} (have: {', '.join(sorted(names.values()))})")
        if not addrs.get(interface):
            raise LookupError(f"interface {interface!r} has no IPv4 address")
        return HostNet(interface, addrs[interface][0])
    for name in [*default_ifs, *sorted(addrs)]:
        if name and name != "lo" and addrs.get(name):
            return HostNet(name, addrs[name][0])
    raise LookupError("no interface with an IPv4 address besides loopback (use --interface)")


def dynamic_range(subnet: IPv4Network) -> tuple[str, str] | None:
    """The top quarter of the subnet's hosts (capped at 64), for discovery of unknown nodes."""
    hosts = subnet.num_addresses - 2
    if hosts < 8:
        return None
    size = min(64, hosts // 4)
    last = subnet.broadcast_address - 1
    return str(last - size + 1), str(last)


def starter_yaml(name: str, net: HostNet) -> str:
    subnet = net.address.network
    dyn = dynamic_range(subnet)
    dyn_line = f"    dynamic_range: {dyn[0]}-{dyn[1]}   # unknown nodes that PXE boot get these\n" if dyn else ""
    master = net.address.ip
    return f"""\
# provisioner site inventory. `provisioner check` validates it; `provisioner node add` and
# friends edit it and keep these comments.
cluster:
  name: {name}
  domain: {name}.cluster
  network:
    interface: {net.interface}        # the provisioning network, found on this host
    subnet: {subnet}
    master: {master}          # this host: DHCP, TFTP, HTTP, NFS and slurmctld
    gateway: {master}
    dns: [{master}]
{dyn_line}  nfs:
    version: "4.2"
    exports:
      - path: /home
        access: rw
  slurm:
    controller: master
  time_servers: [{master}]
  ports:
    http: 80
    tftp: 69

profiles:
  default:
    description: every node unless it names its own profiles
    image: debian12
    kernel_args: [console=ttyS0, console=tty0]
    overlays: [base, ssh, munge, slurm, mpi]
    partitions: [batch]

# `provisioner node add NAME --mac MAC` appends here. A range entry names many nodes at
# once; addresses count up from `ip`, MACs are listed one per node:
#  - name: node[01-04]
#    ip: {master + 10}
#    mac: [52:54:00:00:00:01, 52:54:00:00:00:02, 52:54:00:00:00:03, 52:54:00:00:00:04]
nodes:
"""
