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
import threading
import time
from typing import Any

FIELDS = "kv"  # the LogRecord attribute kv() fills
REPEAT = "repeat_key"  # the LogRecord attribute repeated() fills
REPEAT_INTERVAL = 10.0  # seconds: a repeated event is one line per interval at most


def kv(**fields: Any) -> dict[str, Any]:
    """The `extra=` of a log call carrying these fields: log.info("event", extra=kv(node=...))."""
    return {FIELDS: fields}


def repeated(key: str, **fields: Any) -> dict[str, Any]:
    """kv() for an event a flood repeats (a refusal, a malformed packet): lines with the same
    `key` are collapsed by Collapse, so put in the key what tells the events apart for the
    reader (the reason, never the attacker's changing port)."""
    return {FIELDS: fields, REPEAT: key}


class Collapse(logging.Filter):
    """One line per `interval` for each repeated() key: the first goes out at once, later
    ones within the interval are dropped and counted, and the next line after it carries
    `count=N` (itself and those dropped). Records without a key pass untouched, so ordinary
    events are never lost; the keys kept are bounded by `max_keys` (oldest dropped)."""

    def __init__(self, interval: float = REPEAT_INTERVAL, max_keys: int = 4096):
        super().__init__()
        self.interval, self.max_keys = interval, max_keys
        self._seen: dict[str, list[float]] = {}  # key -> [time of the last line out, dropped]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = getattr(record, REPEAT, None)
        if key is None:
            return True
        now = time.monotonic()
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and now - entry[0] < self.interval:
                entry[1] += 1
                return False
            dropped = int(entry[1]) if entry is not None else 0
            self._seen.pop(key, None)
            self._seen[key] = [now, 0]
            if len(self._seen) > self.max_keys:
                del self._seen[next(iter(self._seen))]
        if dropped:
            record.__dict__[FIELDS] = {**getattr(record, FIELDS, {}), "count": dropped + 1}
        return True


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
    """Every record of the process to stderr as logfmt, at `level` and above, repeated
    events collapsed (Collapse)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Logfmt(always))
    handler.addFilter(Collapse())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
