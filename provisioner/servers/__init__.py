"""Servers (DHCP, TFTP, HTTP): they read artifacts and the inventory, never render."""
