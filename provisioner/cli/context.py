"""What the commands share: the actions' Context (passed as click's obj), the one place core
errors become click errors, and output helpers."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from ..actions.context import Context
from ..errors import UserError

if TYPE_CHECKING:  # the overlay build's imports (jinja2, ...) are for the commands that build
    from ..actions.overlays import ProgressBar

__all__ = ["Context", "Group", "echo_json", "echo_table", "pass_ctx", "progress_bar"]


class Group(click.Group):
    """The root command group: a UserError raised by any command is shown as click shows its
    own errors (`Error: ...` on stderr, exit status 1, no traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as e:
            raise click.ClickException(str(e)) from None


pass_ctx = click.make_pass_decorator(Context)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def echo_table(headers: list[str], rows: list[list[Any]]) -> None:
    """An aligned plain-text table (no borders: easy to grep and cut)."""
    cells = [[str(h).upper() for h in headers]] + [["-" if v is None or v == "" else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)).rstrip())


@contextmanager
def _bar(total: int) -> Iterator[Callable[[int], None]]:
    with click.progressbar(length=total, label="building overlays") as bar:
        yield bar.update


def progress_bar(quiet: bool = False) -> ProgressBar | None:
    """A progress bar for overlay builds on a terminal; none when output is piped or `quiet`."""
    return _bar if sys.stdout.isatty() and not quiet else None
