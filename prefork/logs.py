"""Logging for the master and its workers: text or JSON lines, to stderr, a file, or syslog.

- ``server.log_file``: ``-`` is stderr; ``syslog`` or ``syslog:ADDRESS`` (a socket path such as
  ``/dev/log``, or ``HOST:PORT`` over UDP) goes through the standard library's ``SysLogHandler``, as the
  original daemon logged; anything else is a file, appended to. USR1 reopens it if logrotate moved it
  (``WatchedFileHandler.reopenIfNeeded``). With ``server.user`` the file is given to that user (as gunicorn
  does), so that a worker can reopen the new file logrotate made; a worker that still cannot reopen it
  goes on writing to the old one (never dying of it).
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
import stat
import sys
import time
from typing import Any

from prefork.config.address import parse_peer

FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
SYSLOG_FORMAT = "prefork[%(process)d]: [%(levelname)s] %(name)s: %(message)s"
SYSLOG_UDP_PORT = 514
SYSLOG_DEFAULT_ADDRESS = "/dev/log"
# sd-daemon(3) priority prefixes, by logging level.
_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

_handler: logging.Handler | None = None
_owner: tuple[int, int] | None = None  # (uid, gid) of server.user: who the log file is given to


class ReopeningFileHandler(logging.handlers.WatchedFileHandler):
    """A WatchedFileHandler that, when the moved file's successor cannot be opened (a worker running as
    server.user facing a file only root may write), keeps writing to the file it has, says so once, and
    tries again only when the path changes again: a failed reopen must not kill the process (it did, in a
    worker's USR1 handler) nor cost an open() per record."""

    def reopenIfNeeded(self) -> None:
        try:
            st = os.stat(self.baseFilename)
        except FileNotFoundError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == (self.dev, self.ino):
            return
        try:
            stream = self._open()
        except OSError as exc:
            if st is not None:
                self.dev, self.ino = st.st_dev, st.st_ino  # not again until the path changes again
            if self.stream is not None:
                self.stream.write(f"prefork: cannot reopen the log file, still writing to the old one: {exc}\n")
            return
        if self.stream is not None:
            self.stream.flush()
            self.stream.close()
        self.stream = stream
        self._statstream()


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
    return parse_peer(address, SYSLOG_UDP_PORT)  # HOST, HOST:PORT, [v6] or [v6]:PORT; ValueError otherwise


def setup(
    level: str = "info",
    log_file: str = "-",
    log_format: str = "text",
    generation: int | None = None,
    owner: tuple[int, int] | None = None,
) -> None:
    """Send every log record at ``level`` or above where ``log_file`` says, formatted as ``log_format``.
    ``owner``: the (uid, gid) of server.user, given the log file so that workers can reopen it."""
    global _handler, _owner
    _owner = owner
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
            _handler = ReopeningFileHandler(log_file)
            _give_away(log_file)
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
        _give_away(_handler.baseFilename)


def _give_away(path: str) -> None:
    """Give a log file (a regular file: never a device such as /dev/stdout) to server.user, when root."""
    if _owner is None or os.geteuid() != 0:
        return
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode) and (st.st_uid, st.st_gid) != _owner:
            os.chown(path, *_owner)
    except OSError:
        pass  # not ours to change (a read-only or foreign file system): the workers keep their descriptor


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
