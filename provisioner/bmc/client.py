"""One BMC request, whichever protocol: the caller gives a Target (where and who), gets the
power state or a BmcError whose one-line text says what went wrong and never holds the password.

pyghmi and sushy block and take no overall deadline, so every request runs in a daemon thread
the caller stops waiting for after `timeout` seconds; both libraries give up on their own soon
after (pyghmi's session retries, sushy's socket timeouts), so the thread ends too.
"""

from __future__ import annotations

import re
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

ACTIONS = ("on", "off", "cycle", "reset", "soft", "status")
CYCLE_SETTLE = 3.0  # seconds a node reads on after a power cycle before the cycle counts as done
T = TypeVar("T")


class BmcError(Exception):
    """A BMC request that failed; the text is one line for the admin. `final`: trying again
    cannot help (refused credentials; a retry would only lock the account sooner)."""

    def __init__(self, message: str, final: bool = False):
        super().__init__(message)
        self.final = final


@dataclass(frozen=True)
class Target:
    node: str
    protocol: str  # ipmi | redfish | redfish-http
    address: str
    port: int
    user: str
    password: str = field(repr=False)

    @property
    def where(self) -> str:
        return f"{self.protocol} BMC {self.address}:{self.port}"


def default_port(protocol: str) -> int:
    return {"ipmi": 623, "redfish": 443, "redfish-http": 80}[protocol]


def _bounded(target: Target, timeout: float, work: Callable[[], T]) -> T:
    """work() in a daemon thread, waited for at most `timeout` seconds."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run, name=f"bmc-{target.node}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise BmcError(f"{target.where} did not answer within {timeout:g} s")
    if "error" in box:
        raise _explain(target, box["error"]) from None
    value: T = box["value"]
    return value


def _explain(target: Target, e: BaseException) -> BmcError:
    """A library's exception as one line naming the BMC; the password appears in none of them
    (the text is checked anyway, as some libraries echo their arguments)."""
    if isinstance(e, BmcError):
        return e
    text = " ".join(str(e).split()) or type(e).__name__
    if text == "None":  # pyghmi's words when no reply it could read came back
        text = "no valid reply"
    if len(target.password) >= 4 and target.password in text:
        text = text.replace(target.password, "***")
    text = text if len(text) <= 160 else text[:157] + "..."
    # Words only, not the BMC's own address and port (port 40173 is no HTTP 401).
    low = text.lower().replace(f"{target.address}:{target.port}", "")
    if any(w in low for w in ("unauthorized", "password", "authentication", "rakp", "credential")) or re.search(
        r"\b401\b", low
    ):
        return BmcError(f"{target.where} refused user {target.user!r} and its password ({text})", final=True)
    if any(w in low for w in ("badstatusline", "decode", "expecting value", "invalid", "malformed")):
        return BmcError(f"{target.where} answered something that is not {target.protocol.split('-')[0]} ({text})")
    if any(w in low for w in ("no valid reply", "timeout", "timed out", "no response", "refused", "unreachable")):
        return BmcError(f"{target.where} did not answer ({text})")
    return BmcError(f"{target.where}: {text}")


def power(target: Target, action: str, timeout: float = 10.0) -> str:
    """Do `action` (one of ACTIONS); returns the power state: after `status`, the state read;
    after a change, the state asked for ("on", "off") or the change under way."""
    if action not in ACTIONS:
        raise BmcError(f"unknown power action {action!r}")
    if target.protocol == "ipmi":
        return _bounded(target, timeout, lambda: _ipmi_power(target, action, max(timeout - 1, 0.5)))
    return _bounded(target, timeout, lambda: _redfish_power(target, action, timeout))


def set_pxe(target: Target, persistent: bool = False, timeout: float = 10.0) -> None:
    """Boot from the network next time (or always, `persistent`)."""
    if target.protocol == "ipmi":
        _bounded(target, timeout, lambda: _ipmi_pxe(target, persistent))
    else:
        _bounded(target, timeout, lambda: _redfish_pxe(target, persistent, timeout))


# -- IPMI (pyghmi) -------------------------------------------------------------------------------

_IPMI_SET = {"on": "on", "off": "off", "reset": "reset", "soft": "shutdown"}
_IPMI_RESULT = {"on": "on", "off": "off", "reset": "resetting", "soft": "shutting down"}


_sessions: dict[Target, Any] = {}
_sessions_lock = threading.Lock()
_logins: dict[tuple[str, int], threading.Lock] = {}


def ipmi_command(target: Target) -> Any:
    """A logged-in pyghmi Command, kept for the target's next request (a node's `pxe` then `on`,
    a retry) until close_sessions(); raises pyghmi's exception when the login fails."""
    with _sessions_lock:  # also makes the first import one thread's: pyghmi's is not thread-safe
        from pyghmi.ipmi import command

    with _sessions_lock:
        cmd = _sessions.get(target)
    if cmd is not None and not cmd.ipmi_session.broken:
        return cmd
    with _sessions_lock:
        login_lock = _logins.setdefault((target.address, target.port), threading.Lock())
    # One login at a time per BMC: pyghmi shares a socket between sessions to one BMC, and a
    # login that fails (a wrong password) releases it under the other's feet, which then hears
    # nothing (under load, tests/test_bmc_power.py saw the good password time out, or the wrong
    # one reported as no answer).
    with login_lock:
        try:
            cmd = command.Command(
                bmc=target.address, userid=target.user, password=target.password, port=target.port, keepalive=False
            )
        except BaseException:
            _forget_login(target)
            raise
    with _sessions_lock:
        _sessions[target] = cmd
    return cmd


def _forget_login(target: Target) -> None:
    """Drop pyghmi's entry for a login to this target: it files logins under the text of the
    user and password, and removes a failed one under their bytes, which never matches; the
    dead session left behind would answer the next login with its old error or not at all."""
    from pyghmi.ipmi.private import session

    session.Session.initting_sessions.pop((target.address, target.user, target.password, target.port, None), None)


def close_sessions(targets: Iterable[Target] | None = None) -> None:
    """Log out of these targets' sessions, or of every one this process opened (BMCs have few
    session slots).

    pyghmi keeps a logged-out session in its table of sessions being set up and hands that
    dead object to the next Command for the same BMC and user; dropping the entry makes the
    next Command log in afresh (tests/test_bmc_power.py checks a second round works)."""
    with _sessions_lock:
        chosen = list(_sessions) if targets is None else [t for t in targets if t in _sessions]
        cmds = [(t, _sessions.pop(t)) for t in chosen]
    for target, cmd in cmds:
        try:
            cmd.ipmi_session.logout()
        except Exception:
            pass  # a lost logout only leaves the BMC to time the session out
        _forget_login(target)


def _ipmi_state(cmd: Any) -> str:
    # Get Chassis Status (00h/01h) itself: pyghmi's get_power first asks for the device ID to
    # pick an OEM handler, a second round trip per BMC.
    reply = cmd.xraw_command(netfn=0, command=1)
    return "on" if reply["data"][0] & 1 else "off"


def _ipmi_power(target: Target, action: str, wait: float) -> str:
    cmd = ipmi_command(target)
    if action == "status":
        return _ipmi_state(cmd)
    if action == "cycle":
        # Chassis Control 02h: power cycle (pyghmi's set_power has no word for it). The BMC
        # powers on again after its power cycle interval; until then a `power off` would be
        # undone by that pending power-on, so the cycle is done only once the node is on again.
        cmd.xraw_command(netfn=0, command=2, data=[2])
        return _ipmi_cycled(cmd, wait)
    else:
        reply = cmd.set_power(_IPMI_SET[action])
        if "powerstate" in reply:  # already in that state
            return str(reply["powerstate"])
    return _IPMI_RESULT[action]


def _ipmi_cycled(cmd: Any, wait: float) -> str:
    """ "on" once the node is seen on after a power cycle: after it was seen off, or after
    CYCLE_SETTLE seconds on (a BMC quicker than the polls); "cycling" if `wait` runs out."""
    start = time.monotonic()
    seen_off = False
    while time.monotonic() - start < wait:
        if _ipmi_state(cmd) == "off":
            seen_off = True
        elif seen_off or time.monotonic() - start >= CYCLE_SETTLE:
            return "on"
        time.sleep(0.25)
    return "cycling"


def _ipmi_pxe(target: Target, persistent: bool) -> None:
    ipmi_command(target).set_bootdev("network", persist=persistent)


# -- Redfish (sushy) -----------------------------------------------------------------------------


def _redfish_system(target: Target, timeout: float) -> Any:
    """The BMC's only (or first) computer system."""
    import sushy
    from sushy import auth

    scheme = "http" if target.protocol == "redfish-http" else "https"
    # One warning per request about the unverified certificate would bury the per-node lines.
    warnings.filterwarnings("ignore", message="Unverified HTTPS request")
    conn = sushy.Sushy(
        f"{scheme}://{target.address}:{target.port}",
        auth=auth.BasicAuth(username=target.user, password=target.password),
        # BMCs ship self-signed certificates; the password travels inside TLS all the same.
        verify=False,
        # One try: sushy reads 0 as its default of 3 tries 2 s apart; the caller retries.
        server_side_retries=1,
        read_timeout=timeout,
        connect_timeout=timeout,
    )
    members = conn.get_system_collection().get_members()
    if not members:
        raise BmcError(f"{target.where} manages no computer system")
    return members[0]


_REDFISH_RESET = {"on": "On", "off": "ForceOff", "reset": "ForceRestart", "soft": "GracefulShutdown"}


def _redfish_power(target: Target, action: str, timeout: float) -> str:
    import sushy

    system = _redfish_system(target, timeout)
    state = str(getattr(system.power_state, "value", system.power_state)).lower()
    if action == "status":
        return state
    if action in ("on", "off") and state == action:
        return state
    # A cycle of a node that is off is a power-on, as IPMI's power cycle does.
    kind = _REDFISH_RESET[action] if action != "cycle" else ("ForceRestart" if state == "on" else "On")
    system.reset_system(sushy.ResetType(kind))
    return _IPMI_RESULT[action]


def serial_console(target: Target, timeout: float = 10.0) -> tuple[str, ...]:
    """How the node's Redfish managers offer its serial console: the ConnectTypesSupported of
    an enabled SerialConsole (IPMI, SSH, Telnet, Oem), () where none offers one. Redfish only
    advertises the console; the session itself runs over one of those protocols."""
    return _bounded(target, timeout, lambda: _redfish_serial_console(target, timeout))


def _redfish_serial_console(target: Target, timeout: float) -> tuple[str, ...]:
    offered: list[str] = []
    for manager in _redfish_system(target, timeout).managers:
        sc = manager.serial_console
        if sc is not None and sc.service_enabled is not False:
            offered += [str(t) for t in sc.connect_types_supported or () if str(t) not in offered]
    return tuple(offered)


def _redfish_pxe(target: Target, persistent: bool, timeout: float) -> None:
    import sushy

    system = _redfish_system(target, timeout)
    enabled = sushy.BootSourceOverrideEnabled.CONTINUOUS if persistent else sushy.BootSourceOverrideEnabled.ONCE
    system.set_system_boot_options(target=sushy.BootSource.PXE, enabled=enabled)


def sol_target(t: Target) -> Target:
    """Where the node's serial console is: its IPMI BMC, or for a Redfish BMC, the same BMC
    over IPMI serial-over-LAN (port 623, same account) when its manager offers the console
    that way. Redfish itself carries no console data: a BMC that offers it over SSH or Telnet
    only, or not at all, is a BmcError that says what to use instead."""
    if t.protocol == "ipmi":
        return t
    offered = serial_console(t)
    if "IPMI" in offered:
        return Target(t.node, "ipmi", t.address, default_port("ipmi"), t.user, t.password)
    if offered:
        raise BmcError(
            f"{t.where} offers the serial console over {' and '.join(offered)}, not IPMI serial-over-LAN: "
            f"log into the BMC (e.g. `ssh {t.user}@{t.address}`) and use its console command"
        )
    raise BmcError(
        f"{t.where} offers no serial console (its Redfish managers have no SerialConsole): use IPMI "
        "serial-over-LAN if the BMC speaks IPMI (`bmc_protocol: ipmi`), or its web console"
    )
