"""Logging for the master and its workers: one format, stderr or a file that USR1 reopens."""

from __future__ import annotations

import logging
import sys

FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
_handler: logging.Handler | None = None


def setup(level: str = "info", log_file: str = "-") -> None:
    """Send every log record at `level` or above to stderr ("-") or to `log_file` (appending)."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    if log_file in ("", "-"):
        _handler = logging.StreamHandler(sys.stderr)
    else:
        _handler = logging.FileHandler(log_file, delay=False)
    _handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(_handler)
    root.setLevel(level.upper())


def reopen(*_: object) -> None:
    """Reopen the log file (after logrotate moved it); a no-op for stderr."""
    if isinstance(_handler, logging.FileHandler):
        _handler.acquire()
        try:
            _handler.close()
            _handler.stream = _handler._open()
        finally:
            _handler.release()


def stream() -> object:
    """The stream log records go to (for faulthandler's stack dumps)."""
    return getattr(_handler, "stream", None) or sys.stderr


def flush() -> None:
    """Flush the handler (before os._exit, which skips it)."""
    if _handler is not None:
        try:
            _handler.flush()
        except Exception:
            pass
