"""`provisioner monitoring`: configuration for Prometheus and Grafana."""

from __future__ import annotations

import re
from pathlib import Path

import click

from ..actions.monitoring import render_files
from ..render.monitoring import Options
from .context import Context, pass_ctx


def _bad_duration(value: str) -> str:
    raise click.BadParameter(f"{value!r} is not a duration like 15s, 1m or 500ms")


@click.group()
def monitoring() -> None:
    """Prometheus scrape configuration, alert rules and a Grafana dashboard."""


@monitoring.command("render")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Folder [default: STATE/monitoring]")
@click.option(
    "--scrape-interval",
    default="30s",
    show_default=True,
    callback=lambda _c, _p, v: v if re.fullmatch(r"[1-9][0-9]{0,5}(ms|s|m|h)", v) else _bad_duration(v),
    help="Prometheus scrape and rule interval.",
)
@pass_ctx
def render_cmd(ctx: Context, out: Path | None, scrape_interval: str) -> None:
    """Write prometheus.yml (serve's /metrics and every node's exporter on :9100), the alert
    rules it loads and a Grafana dashboard (JSON, to import)."""
    for path in render_files(ctx, out, Options(scrape_interval, scrape_interval)):
        click.echo(path)
