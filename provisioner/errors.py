"""Errors a user can act on: the CLI prints them in one line and exits 1, no traceback."""

import click


class UserError(click.ClickException):
    exit_code = 1
