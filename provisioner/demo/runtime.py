"""The demo's runtime stage: overlay edits reach a running node through its agent, no reboot.

On one booted node, through the CLI's own actions: an edit to the node's own files is on the
node soon after `overlay build` (timed to the agent's `runtime` event in the node's timeline)
and its reload action runs once; a file dropped from the overlay disappears and the action does
not run again; a file edited by hand on the node shows in `overlay diff --live`; a corrupt and
a truncated archive are refused by the agent and the node keeps its files (the hand edit
stays until a push with the good archive puts the rendered file back); with `serve` stopped a
build leaves the node untouched, and the node catches up once `serve` is back.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import yaml

from ..actions.overlays import build_overlays
from ..actions.runtime import live_diff, push
from ..artifacts import layout
from ..nodestate import NodeStateDB
from .procs import DemoFailure

if TYPE_CHECKING:
    from .run import Demo

FILE = "etc/provisioner-demo"  # edited on the master, with a reload action
GONE = "etc/provisioner-demo-dropped"  # dropped from the overlay after the first refresh
COUNTER = "/var/lib/provisioner-demo-reloads"  # the action appends a line: how often it ran
WAIT = 90.0  # seconds each step may take (the goal is 5 s; srun and TCG guests are slow)
AWAY = 10.0  # seconds `serve` stays stopped
COUNT = f"echo reloads $(cat {COUNTER} 2>/dev/null | wc -l)"


class RuntimeCheck:
    def __init__(self, demo: Demo, node: str):
        self.d, self.node = demo, node
        self.own = demo.site.node_overrides(node)
        self.db = NodeStateDB(demo.state.db)
        self.text = ""  # what FILE holds as rendered
        self.actions = 0  # how often its reload action should have run

    def say(self, message: str) -> None:
        self.d.say("runtime", f"{self.node}: {message}")

    def on_node(self, script: str) -> str:
        assert self.d.master is not None
        res = self.d.master.run(["srun", "--mpi=none", "-w", self.node, "sh", "-c", script], timeout=WAIT)
        if res.returncode != 0:
            raise DemoFailure(f"{self.node}: {script!r} exited {res.returncode}: {res.stdout}{res.stderr}")
        return res.stdout

    def refreshed(self, gen: int, since: float) -> float | None:
        """When the node's timeline got the agent's `runtime` event for generation `gen`."""
        for ev in self.db.timeline(self.node):
            if ev["stage"] == "runtime" and ev["at"] >= since and f"generation {gen} " in (ev["detail"] or ""):
                return float(ev["at"])
        return None

    def wait_refreshed(self, gen: int, since: float) -> float:
        deadline = time.monotonic() + WAIT
        while (at := self.refreshed(gen, since)) is None:
            if time.monotonic() > deadline:
                raise DemoFailure(
                    f"{self.node}: no runtime event for generation {gen} within {WAIT:.0f} s\n"
                    f"serve log:\n{self.d.tail(self.d.logs / 'serve.log')}"
                )
            time.sleep(0.2)
        return at

    def build(self) -> tuple[int, float]:
        """`overlay build`; returns the generation and when the build ended."""
        build_overlays(self.d.ctx.fresh())
        return layout.generation(self.d.state) or 0, time.time()

    def write(self, rel: str, text: str) -> None:
        path = self.own / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def check_actions(self, out: str, after: str) -> None:
        """The reload action ran exactly as often as its file changed (`out` ends with COUNT)."""
        ran = int(out.rsplit("reloads ", 1)[1].split()[0])
        if ran != self.actions:
            raise DemoFailure(f"{self.node}: {after}: the reload action ran {ran} times, not {self.actions}")

    def run(self) -> None:
        # The agent's first refresh after boot (every runtime file checked, under TCG) comes first:
        # the checks are of a node that runs its latest generation, as a node in service does.
        deadline = time.monotonic() + WAIT
        while not any(ev["stage"] == "runtime" and ev["at"] >= self.d.booted_at for ev in self.db.timeline(self.node)):
            if time.monotonic() > deadline:
                raise DemoFailure(f"{self.node}: its agent reported no runtime generation {WAIT:.0f} s after idle")
            time.sleep(0.5)
        self.edit()
        self.drop()
        self.hand_edit_and_bad_archives()
        self.master_away()

    def edit(self) -> None:
        declaration = {"runtime": True, "reload": {FILE: f"echo reloaded >>{COUNTER}"}}
        self.write("_overlay.yaml", yaml.safe_dump(declaration))
        self.text = f"written on the master at {time.strftime('%H:%M:%S')}\n"
        self.write(FILE, self.text)
        self.write(GONE, "dropped after the first refresh\n")
        gen, built = self.build()
        reported = self.wait_refreshed(gen, built) - built
        # When the file was renamed into place: its change time on the node (the node's clock
        # follows the master's chrony).
        out = self.on_node(f"stat -c %.9Z /{FILE}; cat /{FILE} /{GONE}; {COUNT}")
        placed, _, out = out.partition("\n")
        if not out.startswith(self.text):
            raise DemoFailure(f"{self.node}: after generation {gen}: {out!r}")
        self.actions += 1
        self.check_actions(out, f"generation {gen}")
        self.say(
            f"/{FILE} edited on the master reached the running node in {float(placed) - built:.1f} s after "
            f"the build (its timeline: runtime generation {gen} at {reported:.1f} s; overlay build + agent, "
            "no reboot)"
        )
        self.say("its reload action ran once")

    def drop(self) -> None:
        (self.own / GONE).unlink()
        gen, built = self.build()
        self.wait_refreshed(gen, built)
        out = self.on_node(f"test ! -e /{GONE} && echo gone; {COUNT}")
        if not out.startswith("gone"):
            raise DemoFailure(f"{self.node}: /{GONE} dropped in generation {gen}: {out!r}")
        self.check_actions(out, f"generation {gen}")
        self.say(f"/{GONE}, dropped from the overlay, is gone from the node; the action did not run again")

    def hand_edit_and_bad_archives(self) -> None:
        ctx = self.d.ctx.fresh()
        node = ctx.node(self.node)
        self.on_node(f"echo edited by hand >>/{FILE}")
        _, drift = live_diff(ctx, node)
        if [(x.what, x.path) for x in drift] != [("changed", FILE)]:
            raise DemoFailure(f"{self.node}: overlay diff --live after a hand edit: {drift}")
        self.say(f"the hand edit of /{FILE} shows in `overlay diff --live`")
        # Bytes flipped, size and time kept (serve offers the good hash it has cached), then cut
        # in half (serve offers the hash of what is there: tar refuses it): both pushed.
        archive = layout.runtime_archive(self.d.state, self.node)
        good, st = archive.read_bytes(), archive.stat()
        middle = len(good) // 2
        with open(archive, "r+b") as f:
            f.seek(middle)
            f.write(bytes(b ^ 0xFF for b in good[middle : middle + 16]))
        os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns))
        try:
            for what, want in (("corrupt", "sha256"), ("truncated", "unpack")):
                if what == "truncated":
                    archive.write_bytes(good[:middle])
                result = push(ctx, [node], WAIT)[0]
                if result.ok or want not in result.detail:
                    raise DemoFailure(f"{self.node}: a {what} archive was not refused: {result.detail}")
        finally:
            archive.write_bytes(good)
        out = self.on_node(f"cat /{FILE}")
        if out != self.text + "edited by hand\n":
            raise DemoFailure(f"{self.node}: /{FILE} changed by refused archives: {out!r}")
        result = push(ctx, [node], WAIT)[0]
        out = self.on_node(f"cat /{FILE}; {COUNT}")
        _, drift = live_diff(ctx, node)
        if not result.ok or not out.startswith(self.text + "reloads") or drift:
            raise DemoFailure(f"{self.node}: push of the good archive: {result.detail}; {out!r}; drift {drift}")
        self.actions += 1  # the file changed back
        self.check_actions(out, "the push")
        self.say("a corrupt and a truncated archive were refused (sha256, unpack); the node kept its files")
        self.say("`overlay push` with the good archive put the rendered file back: no drift")

    def master_away(self) -> None:
        self.d.sup.stop("serve")
        stopped = time.monotonic()
        self.text = f"written while serve was stopped, at {time.strftime('%H:%M:%S')}\n"
        self.write(FILE, self.text)
        gen, built = self.build()
        time.sleep(max(0.0, AWAY - (time.monotonic() - stopped)))
        out = self.on_node(f"cat /{FILE}; systemctl is-active provisioner-agent; {COUNT}")
        if self.text in out or "\nactive\n" not in out:
            raise DemoFailure(f"{self.node}: with serve stopped: {out!r}")
        self.check_actions(out, "serve stopped")
        self.d.start_serve()
        back = time.time()
        took = self.wait_refreshed(gen, built) - back
        out = self.on_node(f"cat /{FILE}; {COUNT}")
        if not out.startswith(self.text):
            raise DemoFailure(f"{self.node}: after serve came back: {out!r}")
        self.actions += 1
        self.check_actions(out, "serve back")
        self.say(
            f"serve stopped {AWAY:.0f} s and a build meanwhile: the node kept its files; "
            f"it caught up {took:.1f} s after serve was back (generation {gen}, the action once more)"
        )
