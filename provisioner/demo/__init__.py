"""The demo: a whole cluster on one machine. A network namespace stands in for the
provisioning network, qemu (TCG) for a compute node; the master side runs the real servers.

It sits at the end of the data path and drives every stage through the same functions the
CLI uses, so what the demo shows is what an admin gets.
"""
