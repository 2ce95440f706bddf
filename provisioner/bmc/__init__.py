"""Talking to node BMCs: power and boot device over IPMI (pyghmi) or Redfish (sushy), and the
serial console over IPMI serial-over-LAN (pyghmi), also where a Redfish BMC offers it so.
Below the servers, which keep console logs."""

from .client import ACTIONS, BmcError, Target, close_sessions, default_port, power, serial_console, set_pxe, sol_target
from .console import ConsoleLog, Sol, log_path, read_log
from .targets import target_of

__all__ = [
    "ACTIONS",
    "BmcError",
    "ConsoleLog",
    "Sol",
    "Target",
    "close_sessions",
    "default_port",
    "log_path",
    "power",
    "read_log",
    "serial_console",
    "set_pxe",
    "sol_target",
    "target_of",
]
