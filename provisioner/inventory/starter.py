"""A commented starter cluster.yaml for this host (`provisioner init`).

The provisioning interface and its subnet are read from the kernel with pyroute2: the named
interface, or else the one holding the default route, or else the first with an IPv4 address.
The nodes' gateway is never a silent guess: the starter names the one it chose and why, in
the file and on the terminal (see `gateway`).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network


@dataclass(frozen=True)
class HostNet:
    interface: str
    address: IPv4Interface
    router: IPv4Address | None = None  # this host's default router, when it sits on this network


@dataclass(frozen=True)
class Gateway:
    """The nodes' gateway the starter chose (None: no default route for nodes), and why."""

    address: IPv4Address | None
    why: str

    @property
    def summary(self) -> str:
        return f"Nodes' gateway: {self.address or 'none'}. {self.why}"


def gateway(net: HostNet) -> Gateway:
    """This host's own default router when it sits on the provisioning network: it is known to
    route that network, and naming it keeps `node add` from giving a node its address. Else
    none: the master forwards nothing unless the admin makes it, so naming it would hand nodes
    a default route that goes nowhere."""
    subnet = net.address.network
    if net.router is not None:
        return Gateway(
            net.router,
            f"This host's own default router, on {net.interface}: nodes reach beyond "
            f"{subnet} through it as this host does, and no node is given its address. "
            f"Without it nodes stay on {subnet} (keep node addresses off {net.router}).",
        )
    return Gateway(
        None,
        f"This host's default route does not leave by {net.interface}, so no router on {subnet} "
        f"is known: nodes reach only {subnet}. To route them further, set gateway: to a router "
        f"there (this host, {net.address.ip}, once it forwards for them).",
    )


def detect(interface: str | None = None) -> HostNet:
    """The provisioning interface, its address and this host's default router on it;
    LookupError if none fits."""
    from pyroute2 import IPRoute  # half a second to import; only `init` reads the kernel

    with IPRoute() as ipr:
        names: dict[int, str] = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        addrs: dict[str, list[IPv4Interface]] = {}
        for a in ipr.get_addr(family=2):
            if name := names.get(a["index"]):  # a link made since get_links() is not a candidate
                addrs.setdefault(name, []).append(IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"))
        defaults: list[tuple[str | None, str | None]] = [
            (names.get(r.get_attr("RTA_OIF")), r.get_attr("RTA_GATEWAY")) for r in ipr.get_default_routes(family=2)
        ]
    if interface:
        if interface not in names.values():
            raise LookupError(f"no interface named {interface!r} (have: {', '.join(sorted(names.values()))})")
        if not addrs.get(interface):
            raise LookupError(f"interface {interface!r} has no IPv4 address")
        chosen = interface
    else:
        candidates = [name for name in [*(n for n, _ in defaults), *sorted(addrs)] if name and name != "lo"]
        chosen = next((name for name in candidates if addrs.get(name)), "")
        if not chosen:
            raise LookupError("no interface with an IPv4 address besides loopback (use --interface)")
    address = addrs[chosen][0]
    routers = [IPv4Address(gw) for name, gw in defaults if name == chosen and gw]
    return HostNet(chosen, address, next((r for r in routers if r in address.network), None))


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
    gw = gateway(net)
    why = textwrap.fill(gw.summary, 92, initial_indent="    # ", subsequent_indent="    # ")
    gw_line = f"    gateway: {gw.address}\n" if gw.address else f"    # gateway: {master}\n"
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
{why}
{gw_line}    dns: [{master}]                # nodes ask the master: `provisioner configure dns` runs dnsmasq there
{dyn_line}  nfs:
    version: "4.2"
    exports:
      - path: /home
        access: rw
  slurm:
    controller: master
  time_servers: [{master}]        # nodes keep time from the master: `provisioner configure ntp` (chrony)
  # The master's own daemons (`provisioner configure all`): names not in the cluster are
  # forwarded to dns.upstream (default: this host's /etc/resolv.conf); chrony follows
  # ntp.upstream; each node's syslog is kept under the state directory (`provisioner logs NODE`).
  # dns: {{upstream: [192.0.2.53], aliases: {{login: node01}}}}
  # ntp: {{upstream: [192.0.2.123]}}
  # logs: {{max_mb: 16}}
  ports:
    http: 80
    tftp: 69

profiles:
  default:
    description: every node unless it names its own profiles
    image: debian12
    kernel_args: [console=tty0, console=ttyS0]   # the last is /dev/console: serial (IPMI SOL)
    overlays: [base, ssh, munge, slurm, mpi, node-exporter]
    partitions: [batch]

# `provisioner node add NAME --mac MAC` appends here. A range entry names many nodes at
# once; addresses count up from `ip`, MACs are listed one per node:
#  - name: node[01-04]
#    ip: {master + 10}
#    mac: [52:54:00:00:00:01, 52:54:00:00:00:02, 52:54:00:00:00:03, 52:54:00:00:00:04]
nodes:
"""
