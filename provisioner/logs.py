"""Log lines as logfmt: `ts=... level=... logger=... msg=... key=value ...`, one event a line.

Every daemon (serve, a TFTP worker, `provisioner tftp`, the standalone DHCP server) logs
through setup_logging(), and every logger in the package passes its fields with kv(), so a
line is split into fields by any logfmt reader (Loki, lnav, `grep key=value`) whichever
layer wrote it. This module imports nothing of the package: every layer may use it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

FIELDS = "kv"  # the LogRecord attribute kv() fills


def kv(**fields: Any) -> dict[str, Any]:
    """The `extra=` of a log call carrying these fields: log.info("event", extra=kv(node=...))."""
    return {FIELDS: fields}


def value(v: Any) -> str:
    """A field value as logfmt writes it: bare when it is one plain word, else a JSON string
    (quotes, escapes and newlines inside stay on one line)."""
    s = str(v)
    if s and not any(c in s for c in ' "=\\') and s.isprintable():
        return s
    return json.dumps(s)


class Logfmt(logging.Formatter):
    """ts, level, logger (without the package prefix), msg, then the record's kv() fields,
    a traceback as `error`, and the process's `always` fields (a TFTP worker's pid).
    A field whose value is None is left out."""

    def __init__(self, always: dict[str, Any] | None = None):
        super().__init__()
        self.always = dict(always or {})

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name.removeprefix("provisioner."),
            "msg": record.getMessage(),
            **getattr(record, FIELDS, {}),
        }
        if record.exc_info:
            fields["error"] = self.formatException(record.exc_info)
        fields.update(self.always)
        return " ".join(f"{k}={value(v)}" for k, v in fields.items() if v is not None)


def setup_logging(level: str = "info", **always: Any) -> None:
    """Every record of the process to stderr as logfmt, at `level` and above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Logfmt(always))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
