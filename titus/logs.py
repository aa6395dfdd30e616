"""Logging: one JSON line per connection and per supervisor event.

python-json-logger formats the records (well kept, and the stdlib logging
machinery stays usable by operators); on a terminal the same records are
printed as readable text.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

logger = logging.getLogger("titus")


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        when = self.formatTime(record, "%H:%M:%S")
        return f"{when} {record.levelname.lower():7} {record.getMessage()} {extra}".rstrip()


class _Json(JsonFormatter):
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
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """A supervisor event: `name` is a short fixed string, details go in fields."""
    logger.log(level, name, extra={"fields": fields})
