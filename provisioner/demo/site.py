"""The demo's site: a small cluster on a private network, one or more virtual nodes."""

from __future__ import annotations

from ipaddress import IPv4Interface

from ..artifacts.images import DEFAULT_PACKAGES

MASTER = IPv4Interface("10.77.0.1/24")
IMAGE = "demo"
# The demo boots what `provisioner image build` builds by default, so that set is proven to
# boot into Slurm.
IMAGE_PACKAGES = DEFAULT_PACKAGES


def node_names(count: int) -> list[str]:
    return [f"node{i:02d}" for i in range(1, count + 1)]


def node_mac(index: int) -> str:
    return f"52:54:00:77:00:{0x10 + index:02x}"


def unlisted_mac(index: int) -> str:
    """The MAC of the demo's guest number `index` that no node entry names (`--unlisted`)."""
    return f"52:54:00:77:01:{0x10 + index:02x}"


def cluster_yaml(
    count: int, home: str, kernel_args: tuple[str, ...] = (), discovery: str = "auto", accounts: str = "/"
) -> str:
    """`count` listed nodes (slurmctld needs one); guests whose MACs no entry names join as the
    next free nodeNN under cluster.discovery `mode: discovery` (auto: at once, approve: after
    `node approve`). `accounts`: the master's / as the users overlay reads it (the demo's user)."""
    args = ", ".join(("console=ttyS0", *kernel_args))
    macs = ", ".join(node_mac(i) for i in range(1, count + 1))
    last = f"{count:02d}"
    return f"""\
# The provisioner demo: a private network in a namespace, qemu guests as compute nodes.
cluster:
  name: demo
  domain: demo.cluster
  network:
    interface: br0
    subnet: {MASTER.network}
    master: {MASTER.ip}
    gateway: {MASTER.ip}
    dns: [{MASTER.ip}]
    dynamic_range: 10.77.0.200-10.77.0.220
  nfs:
    exports:
      - path: {home}
        mount: /home
        access: rw
  slurm:
    controller: master
    options:
      MessageTimeout: 60    # slurmstepd starts slowly on an emulated CPU
  time_servers: [{MASTER.ip}]
  discovery:                # guests no node entry names (demo --unlisted)
    mode: {discovery}
    names: node[01-99]
    addresses: 10.77.0.11-10.77.0.99
    profiles: [default]
  users:                    # the demo's user, from a scratch copy of a master's accounts
    root: {accounts}
    min_id: 2000
    max_id: 2999
    shadow: true
  ports:
    http: 80
    tftp: 69

profiles:
  default:
    image: {IMAGE}
    kernel_args: [{args}]
    overlays: [base, ssh, munge, slurm, mpi, node-exporter, users, ssh-user-ca]
    partitions: [debug]

nodes:
  - name: node[01-{last}]
    ip: 10.77.0.11
    mac: [{macs}]
"""
