"""`provisioner doctor NODE`: walk a node's boot chain link by link and say where it stopped.

Every link is judged from what was recorded (the inventory, the node-state database the
servers write, the state directory, Slurm, what the node reported) and ends PASS, FAIL or
UNKNOWN (nothing recorded yet: the boot did not get that far, or the link is not in use),
with the evidence and, for a failure, the fix.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from ..artifacts import images, layout, secrets
from ..bootfiles import FILE_STAGES
from ..errors import UserError
from ..inventory import Inventory, Node
from ..nodestate.slurm import SlurmError, node_status
from ..nodestate.summary import latest_boot
from ..servers.boottree import BootTree
from ..servers.dhcp import pxe
from ..servers.dhcp.bootanswer import absent
from .context import Context

PASS, FAIL, UNKNOWN = "PASS", "FAIL", "UNKNOWN"
CLOCK_SKEW = 2.0  # seconds between the node's reported clock and the master's that fail the check
OK_OUTCOMES = ("ok", "size probe")
RECENT = 3600.0  # unknown MACs seen this recently may be this node with a MAC the inventory lacks
DRAINED = ("drain", "drained", "draining", "down", "fail", "failing")


@dataclass(frozen=True)
class Check:
    link: str
    status: str
    evidence: str
    fix: str | None = None


@dataclass(frozen=True)
class Diagnosis:
    node: str
    checks: tuple[Check, ...]

    @property
    def stopped_at(self) -> Check | None:
        """The first failed link: where the boot stopped."""
        return next((c for c in self.checks if c.status == FAIL), None)

    def as_dict(self) -> dict[str, Any]:
        first = self.stopped_at
        return {
            "node": self.node,
            "ok": first is None,
            "stopped_at": first.link if first else None,
            "checks": [asdict(c) for c in self.checks],
        }


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _last(events: Sequence[Mapping[str, Any]], *stages: str) -> Mapping[str, Any] | None:
    return next((e for e in reversed(events) if e["stage"] in stages), None)


@dataclass
class _Evidence:
    """What was recorded about the node's latest boot."""

    events: Sequence[Mapping[str, Any]]
    transfers: Sequence[Mapping[str, Any]]  # since the boot started (all, with no boot recorded)
    facts: dict[str, Any] | None
    facts_at: float | None


def _evidence(ctx: Context, node: str) -> _Evidence:
    db = ctx.db()
    everything = [dict(e) for e in db.timeline(node)]
    events = latest_boot(everything)
    start = min((e["at"] for e in events), default=0.0)
    transfers = [dict(t) for t in db.transfers(node) if t["at"] >= start - 300]
    row = db.facts_row(node)
    return _Evidence(events, transfers, row[0] if row else None, row[1] if row else None)


def check_inventory(inv: Inventory, node: Node) -> Check:
    missing = [what for what, have in (("mac", node.mac), ("image", node.image)) if not have]
    if missing:
        return Check(
            "inventory",
            FAIL,
            f"{node.name} has no {' and no '.join(m.upper() if m == 'mac' else m for m in missing)}",
            f"provisioner node set {node.name} " + " ".join(f"--{m} {m.upper()}" for m in missing),
        )
    where = str(node.ip) if node.ip else "a dynamic address"
    return Check("inventory", PASS, f"{node.name}: MAC {node.mac}, {where}, image {node.image}")


_ANSWERED = re.compile(r"^(?:\S+ )?(pxe|http|ipxe)(?: arch ([0-9]+))?")


def boot_file_answer(ctx: Context, inv: Inventory, node: Node, detail: str | None) -> tuple[str | None, str | None]:
    """(boot file, why none) of the DHCP answer to the booting client the event's detail
    names ("IP KIND arch N"): the file the DHCP server names, or why it named none (the same
    choice and boot-tree check it makes). (None, None) for a plain DHCP client."""
    m = _ANSWERED.match(detail or "")
    if m is None or not node.mac:
        return None, None
    arch = int(m.group(2)) if m.group(2) else None
    client = pxe.Client(m.group(1), None, arch, None, None)
    master, port = str(inv.cluster.network.master), inv.cluster.ports.http
    answer = pxe.choose(client, node.mac, node.boot_files, master, port)
    if isinstance(answer, pxe.Refused):
        return None, answer.why
    if answer is None:
        return None, None
    why = absent(BootTree(ctx.state, inv), answer.local, node) if answer.local else None
    return (None, why) if why else (answer.file, None)


def check_dhcp(
    ctx: Context, inv: Inventory, node: Node, ev: _Evidence, discovered: Sequence[Mapping[str, Any]]
) -> Check:
    answer = _last(ev.events, "dhcp")
    if answer is not None:
        said = f"answered at {_clock(answer['at'])}: {answer['detail']}"
        file, why = boot_file_answer(ctx, inv, node, answer["detail"])
        if why:
            fix = (
                "provisioner boot install" if "boot install" in why else "put it in the boot tree, or change boot_files"
            )
            return Check("dhcp", FAIL, f"{said}, but no boot file: {why}", fix)
        return Check("dhcp", PASS, said + (f", boot file {file}" if file else ""))
    macs = {i.mac for i in node.interfaces if i.mac}
    now = time.time()
    strangers = [
        d for d in discovered if d["mac"] not in macs and not d["adopted_as"] and now - d["last_seen"] < RECENT
    ]
    if strangers:
        seen = ", ".join(f"{d['mac']} at {_clock(d['last_seen'])}" for d in strangers[-5:])
        return Check(
            "dhcp",
            FAIL,
            f"no DHCP request from {', '.join(sorted(macs))}; unknown MACs asked: {seen}",
            f"if one of them is {node.name}, correct its MAC: provisioner node set {node.name} --mac MAC "
            "(or `provisioner node approve` it)",
        )
    why = (
        " (proxy mode: the site's main DHCP server must answer with an address first)"
        if inv.cluster.dhcp.mode == "proxy"
        else ""
    )
    return Check(
        "dhcp",
        FAIL if ev.transfers else UNKNOWN,
        f"no DHCP request from {', '.join(sorted(macs)) or 'its MAC'} recorded{why}",
        "check that it network-boots on the provisioning network (boot order, cabling, VLAN, a relay's "
        "giaddr in the subnet) and that `provisioner serve` runs DHCP",
    )


BOOT_LINKS = (  # link, the stages that show it was fetched, how to rebuild what is missing
    ("bootloader", ("bootloader",), "provisioner boot install"),
    ("boot script", ("ipxe", "config"), "provisioner overlay build {node}"),
    ("kernel", ("kernel",), "provisioner image build {image} (or image rollback)"),
    ("initramfs", ("initramfs",), "provisioner initramfs build {image}"),
)


def _link_of(path: str) -> str | None:
    name = path.rsplit("/", 1)[-1]
    if name.endswith(".ipxe"):
        return "boot script"
    stage = FILE_STAGES.get(name)
    return {"bootloader": "bootloader", "ipxe": "boot script", "config": "boot script"}.get(stage or "", stage)


def check_transfers(node: Node, ev: _Evidence) -> list[Check]:
    out = []
    for link, stages, fix in BOOT_LINKS:
        failed = [t for t in ev.transfers if _link_of(t["path"]) == link and t["outcome"] not in OK_OUTCOMES]
        done = _last(ev.events, *stages)
        sent = [t for t in ev.transfers if _link_of(t["path"]) == link and t["outcome"] in OK_OUTCOMES]
        if failed and (done is None or failed[-1]["at"] > done["at"]):
            t = failed[-1]
            how = fix.format(node=node.name, image=node.image)
            hint = f"the file is missing: {how}" if t["outcome"] == "not found" else how
            out.append(
                Check(
                    link,
                    FAIL,
                    f"{t['protocol'].upper()} {t['path']} from {t['client']}: {t['outcome']} at {_clock(t['at'])}",
                    hint,
                )
            )
        elif done is not None:
            size = f", {sent[-1]['bytes']} bytes by {sent[-1]['protocol'].upper()}" if sent else ""
            out.append(Check(link, PASS, f"fetched {done['detail'] or ''} at {_clock(done['at'])}{size}".strip()))
        else:
            out.append(Check(link, UNKNOWN, "no fetch recorded in the latest boot"))
    return out


_SHA256 = re.compile(r"[0-9a-f]{64}")
_PINNED = re.compile(r"/images/([A-Za-z0-9_.-]+)/versions/(v[0-9]+)/")


def check_image(ctx: Context, node: Node) -> Check:
    if not node.image:
        return Check("image", UNKNOWN, "no image in the inventory")
    script = layout.ipxe_script(ctx.state, node.name)
    pinned = _PINNED.search(script.read_text(errors="replace")) if script.is_file() else None
    version = pinned.group(2) if pinned else images.current_version(ctx.state, node.image)
    source = f"pinned by {script.name}" if pinned else "current"
    if version is None:
        return Check(
            "image", FAIL, f"image {node.image} has no version", f"provisioner image build {node.image} (or import)"
        )
    rootfs = layout.image_rootfs(ctx.state, node.image, version)
    exported = node.image in images.nfs_roots(ctx.state)
    if not rootfs.is_dir():
        return Check(
            "image",
            FAIL,
            f"{node.image} {version} ({source}) is not exported over NFS: {rootfs} does not exist",
            f"rebuild the boot configs on an existing version: provisioner overlay build {node.name} "
            f"(versions: {', '.join(v.version for v in images.versions(ctx.state, node.image)) or 'none'})",
        )
    if not exported:
        return Check(
            "image",
            FAIL,
            f"{node.image} has no current version, so `provisioner nfs exports` leaves it out",
            f"provisioner image rollback {node.image} {version}, then re-render the NFS exports",
        )
    return Check("image", PASS, f"{node.image} {version} ({source}) exported as /images/{node.image}")


def check_overlay(node: Node, ev: _Evidence) -> Check:
    fetches = [t for t in ev.transfers if t["path"] == f"/overlays/{node.name}.cpio.gz"]
    applied = _last(ev.events, "overlay")
    if fetches and fetches[-1]["outcome"] not in OK_OUTCOMES and (applied is None or applied["at"] < fetches[-1]["at"]):
        t = fetches[-1]
        fix = (
            "the node must fetch it from a privileged source port (below 1024) as the initramfs does "
            "(curl --local-port 600-1023), or the cluster must not be `secure`"
            if "unprivileged" in t["outcome"]
            else f"provisioner overlay build {node.name}"
            if t["outcome"] == "not found"
            else None
        )
        return Check("overlay", FAIL, f"{t['path']} from {t['client']}: {t['outcome']} at {_clock(t['at'])}", fix)
    if applied is not None:
        return Check("overlay", PASS, f"applied at {_clock(applied['at'])}")
    if fetches:
        return Check("overlay", PASS, f"fetched by {fetches[-1]['client']} at {_clock(fetches[-1]['at'])}")
    return Check("overlay", UNKNOWN, "not fetched in the latest boot")


def check_root(ev: _Evidence) -> Check:
    root, failed = _last(ev.events, "root"), _last(ev.events, "failed")
    if failed is not None and (root is None or failed["at"] > root["at"]):
        return Check(
            "root",
            FAIL,
            f"the initramfs failed at {_clock(failed['at'])}: {failed['detail']}",
            "read the message: `provisioner logs NODE --boot` has the rest",
        )
    if root is not None:
        return Check("root", PASS, f"mounted {root['detail']} at {_clock(root['at'])}")
    return Check("root", UNKNOWN, "no root mount reported in the latest boot")


def check_registered(ev: _Evidence) -> Check:
    ok, refused = _last(ev.events, "registered"), _last(ev.events, "facts-rejected")
    if refused is not None and (ok is None or refused["at"] > ok["at"]):
        return Check("registered", FAIL, f"facts refused: {refused['detail']}", "fix what the node reports")
    if ok is not None:
        return Check("registered", PASS, f"reported its facts at {_clock(ok['at'])}")
    return Check("registered", UNKNOWN, "no facts reported in the latest boot")


def check_slurm(node: Node, slurm: Mapping[str, Any] | None, error: str | None) -> Check:
    if slurm is None:
        return Check("slurm", UNKNOWN, error or "Slurm does not list the node")
    entry = slurm.get(node.name)
    if entry is None:
        return Check("slurm", UNKNOWN, "Slurm does not list the node (not in slurm.conf yet?)")
    said = f"state {entry.state}" + (f", reason: {entry.reason}" if entry.reason else "")
    if entry.state.rstrip("*~#!%$@^-+") in DRAINED or entry.state.endswith("*"):
        return Check("slurm", FAIL, said, f"fix the reason, then: scontrol update NodeName={node.name} State=RESUME")
    return Check("slurm", PASS, said)


def fingerprint(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()


def check_munge(ctx: Context, node: Node, ev: _Evidence) -> Check:
    reported = (ev.facts or {}).get("munge_key_sha256")
    if not isinstance(reported, str) or not _SHA256.fullmatch(reported):
        return Check("munge", UNKNOWN, "the node has not reported its MUNGE key's fingerprint (no key, or no facts)")
    try:
        master = fingerprint(secrets.read_secret(ctx.state, secrets.MUNGE_KEY))
    except secrets.SecretMissing:
        return Check("munge", UNKNOWN, "the master has no MUNGE key yet")
    if reported != master:
        return Check(
            "munge",
            FAIL,
            f"the node's MUNGE key sha256 {reported[:16]}... is not the master's {master[:16]}...",
            f"provisioner overlay build {node.name} and reboot it (or `provisioner overlay push {node.name}`)",
        )
    return Check("munge", PASS, f"sha256 {master[:16]}... on both")


def check_clock(ev: _Evidence) -> Check:
    clock = (ev.facts or {}).get("clock")
    if not isinstance(clock, (int, float)) or isinstance(clock, bool) or not math.isfinite(clock) or not ev.facts_at:
        return Check("clock", UNKNOWN, "the node has not reported its clock")
    skew = clock - ev.facts_at
    said = f"the node's clock was {skew:+.2f} s from the master's at {_clock(ev.facts_at)}"
    if abs(skew) > CLOCK_SKEW:
        return Check("clock", FAIL, said, "check chrony on the master (`provisioner configure ntp`) and timesyncd")
    return Check("clock", PASS, said)


def diagnose(ctx: Context, name: str) -> Diagnosis:
    """Every link of the node's boot chain, in boot order."""
    try:
        inv = ctx.inventory()
    except UserError as e:
        return Diagnosis(name, (Check("inventory", FAIL, str(e), "fix cluster.yaml: `provisioner check`"),))
    node = ctx.node(name)
    ev = _evidence(ctx, name)
    try:
        slurm: Mapping[str, Any] | None = node_status()
        error = None
    except SlurmError as e:
        slurm, error = None, f"cannot ask Slurm: {e}"
    return Diagnosis(
        name,
        (
            check_inventory(inv, node),
            check_dhcp(ctx, inv, node, ev, [dict(d) for d in ctx.db().discovered()]),
            *check_transfers(node, ev),
            check_image(ctx, node),
            check_overlay(node, ev),
            check_root(ev),
            check_registered(ev),
            check_slurm(node, slurm, error),
            check_munge(ctx, node, ev),
            check_clock(ev),
        ),
    )
