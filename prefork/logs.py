"""Logging for the master and its workers: text or JSON lines, to stderr, a file, or syslog.

- ``server.log_file``: ``-`` is stderr; ``syslog`` or ``syslog:ADDRESS`` (a socket path such as
  ``/dev/log``, or ``HOST:PORT`` over UDP) goes through the standard library's ``SysLogHandler``, as the
  original daemon logged; anything else is a file, appended to. USR1 reopens it if logrotate moved it
  (``WatchedFileHandler.reopenIfNeeded``).
- ``server.log_format``: ``text`` (``[time] [pid] [LEVEL] logger: message``) or ``json``: one object per
  line with time, level, logger, pid, generation (a worker's; null for the master), message and, if any,
  exception.
- When ``JOURNAL_STREAM`` is set (systemd connected stderr to the journal), stderr lines start with their
  syslog priority (``<6>`` for info), so journald keeps the levels.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from typing import Any

FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
SYSLOG_FORMAT = "prefork[%(process)d]: [%(levelname)s] %(name)s: %(message)s"
SYSLOG_DEFAULT_ADDRESS = "/dev/log"
# sd-daemon(3) priority prefixes, by logging level.
_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

_handler: logging.Handler | None = None


class JSONFormatter(logging.Formatter):
    """One JSON object per record."""

    def __init__(self, generation: int | None):
        super().__init__()
        self.generation = generation

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "generation": self.generation,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class PriorityFormatter(logging.Formatter):
    """Prefix each line with its syslog priority, for journald (JOURNAL_STREAM)."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITIES.get(record.levelno, 6)}>"
        return prefix + self.inner.format(record).replace("\n", "\n" + prefix)


def syslog_address(log_file: str) -> str | tuple[str, int] | None:
    """The address of ``syslog`` / ``syslog:ADDRESS``, or None when ``log_file`` is not syslog."""
    if log_file != "syslog" and not log_file.startswith("syslog:"):
        return None
    address = log_file.partition(":")[2] or SYSLOG_DEFAULT_ADDRESS
    if address.startswith("/"):
        return address
    host, _, port = address.rpartition(":")
    return (host or "localhost", int(port)) if port.isdigit() else (address, 514)


def setup(level: str = "info", log_file: str = "-", log_format: str = "text", generation: int | None = None) -> None:
    """Send every log record at ``level`` or above where ``log_file`` says, formatted as ``log_format``."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    address = syslog_address(log_file)
    formatter: logging.Formatter
    if address is not None:
        _handler = logging.handlers.SysLogHandler(address=address)
        formatter = JSONFormatter(generation) if log_format == "json" else logging.Formatter(SYSLOG_FORMAT)
    else:
        if log_file in ("", "-"):
            _handler = logging.StreamHandler(sys.stderr)
        else:
            _handler = logging.handlers.WatchedFileHandler(log_file)
        formatter = JSONFormatter(generation) if log_format == "json" else logging.Formatter(FORMAT)
        if log_file in ("", "-") and os.environ.get("JOURNAL_STREAM"):
            formatter = PriorityFormatter(formatter)
    _handler.setFormatter(formatter)
    root.addHandler(_handler)
    root.setLevel(level.upper())


def reopen(*_: object) -> None:
    """Reopen the log file if logrotate moved it (USR1); a no-op for stderr and syslog."""
    if isinstance(_handler, logging.handlers.WatchedFileHandler):
        _handler.reopenIfNeeded()


def stream() -> Any:
    """The stream log records go to (for faulthandler's stack dumps; stderr when there is none)."""
    return getattr(_handler, "stream", None) or sys.stderr


def flush() -> None:
    """Flush the handler (before os._exit, which skips it)."""
    if _handler is not None:
        try:
            _handler.flush()
        except Exception:
            pass
