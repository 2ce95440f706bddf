"""Talking to node BMCs: power and boot device over IPMI (pyghmi) or Redfish (sushy), and the
serial console over IPMI serial-over-LAN (pyghmi). Below the servers, which keep console logs."""

from .client import ACTIONS, BmcError, Target, close_sessions, default_port, power, set_pxe

__all__ = ["ACTIONS", "BmcError", "Target", "close_sessions", "default_port", "power", "set_pxe"]
