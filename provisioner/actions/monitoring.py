"""`provisioner monitoring render`: the Prometheus scrape configuration, alert rules and
Grafana dashboard for the cluster, written where Prometheus and Grafana read them."""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_write
from ..errors import UserError
from ..render.monitoring import Options, render
from .context import Context


def default_dir(ctx: Context) -> Path:
    return ctx.state.root / "monitoring"


def render_files(ctx: Context, out: Path | None = None, opts: Options | None = None) -> list[Path]:
    """Write the three files into `out` (default: STATE/monitoring); each replaces the old
    one whole, so Prometheus reloading meanwhile reads either version, never half of one."""
    files = render(ctx.inventory(), opts or Options())
    out = out or default_dir(ctx)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot make {out}: {e.strerror}") from None
    if not out.is_dir():
        raise UserError(f"{out} is not a directory")
    written = []
    for name, text in files.items():
        atomic_write(out / name, text)
        written.append(out / name)
    return written
