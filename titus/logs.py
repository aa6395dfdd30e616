"""Logging: one JSON line per connection and per supervisor event.

python-json-logger formats the records (well kept, and the stdlib logging
machinery stays usable by operators); on a terminal the same records are
printed as readable text.  With JSON to a stream (what `setup` makes unless it
is a terminal), `event` writes the same line itself: json.dumps of the same
fields in the same order, a third of the CPU of a trip through logging, which
the supervisor pays once per connection.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from typing import Any

from pythonjsonlogger.json import JsonFormatter

logger = logging.getLogger("titus")
_encode = json.JSONEncoder(default=str).encode  # json.dumps(default=str), made once


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        when = self.formatTime(record, "%H:%M:%S")
        return f"{when} {record.levelname.lower():7} {record.getMessage()} {extra}".rstrip()


def endpoint(addr: tuple[Any, ...] | list[Any]) -> str:
    """An address as every record writes it: `127.0.0.1:443`, `[::1]:443`; an IPv4-mapped
    IPv6 address (a dual-stack listener's peer) as the IPv4 address it is."""
    host, port = str(addr[0]), int(addr[1])
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_second: list[Any] = [None, ""]  # the last second written, and its text


def rfc3339(created: float) -> str:
    """A record's time: RFC 3339 in UTC with milliseconds, `2026-12-02T17:10:39.896Z`.
    The text up to the second is made once per second (a record per connection: the
    datetime round trip was a fifth of writing one)."""
    fraction, whole = math.modf(created)  # rounded as datetime.fromtimestamp rounds
    second, micros = divmod(round(fraction * 1e6) + int(whole) * 1_000_000, 1_000_000)
    if second != _second[0]:
        _second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_second[1]}.{micros // 1000:03d}Z"


class _Json(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return rfc3339(record.created)

    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        super().add_fields(log_record, record, message_dict)
        log_record.pop("fields", None)
        log_record.update(getattr(record, "fields", {}))


def setup(fmt: str = "auto", stream: Any = None, level: int = logging.INFO) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    if fmt == "json":
        handler.setFormatter(_Json("%(asctime)s %(levelname)s %(message)s",
                                   rename_fields={"asctime": "time", "levelname": "level",
                                                  "message": "event"},
                                   timestamp=False))
    else:
        handler.setFormatter(_TextFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    global _fast
    _fast = (handler, stream, level) if fmt == "json" else None


# (handler, stream, level) of the JSON handler `setup` made: while it is the only one,
# `event` writes the line itself.
_fast: tuple[logging.Handler, Any, int] | None = None
_LEVELS = {logging.DEBUG: "DEBUG", logging.INFO: "INFO", logging.WARNING: "WARNING",
           logging.ERROR: "ERROR", logging.CRITICAL: "CRITICAL"}


def setup_daemon(fmt: str = "auto") -> None:
    """A daemon has no terminal: log to syslog when there is one, else keep stderr."""
    import logging.handlers
    import os

    if not os.path.exists("/dev/log"):
        setup("json" if fmt == "auto" else fmt)
        return
    handler = logging.handlers.SysLogHandler(address="/dev/log",
                                             facility=logging.handlers.SysLogHandler.LOG_DAEMON)
    handler.ident = "titus: "
    handler.setFormatter(_TextFormatter() if fmt == "text" else _Json("%(message)s"))
    global _fast
    _fast = None
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """A supervisor event: `name` is a short fixed string, details go in fields."""
    fast = _fast
    if fast is None or level not in _LEVELS or logger.handlers != [fast[0]]:
        logger.log(level, name, extra={"fields": fields})
        return
    _, stream, threshold = fast
    if level < threshold or logger.level > level:
        return
    record = {"time": rfc3339(time.time()), "level": _LEVELS[level], "event": name, **fields}
    try:
        stream.write(_encode(record) + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass  # as logging's handleError: a log that cannot be written never stops titus
