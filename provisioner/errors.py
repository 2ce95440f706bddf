"""The project's own error: a problem the user can act on (a bad name, a missing image, a
build that failed), raised anywhere below the CLI. Only the CLI knows how to show it: one
line on stderr and exit status 1, no traceback (cli/context.py)."""


class UserError(Exception):
    pass
