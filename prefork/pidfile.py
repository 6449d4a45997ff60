"""The pidfile: written atomically and locked by the running master, so that nobody acts on a stale one.

The master writes its pid to a temporary file, takes an exclusive ``flock`` on it and renames it into
place: the file is never seen half-written, and it is locked for as long as the master runs (workers close
their copy of the descriptor, so a master killed with SIGKILL leaves an unlocked file behind). A second
master with the same pidfile finds it locked and refuses to start, naming the live pid. ``reload``,
``stop`` and ``status`` signal a pid only while its pidfile is locked: a recycled pid is never signalled.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class PidfileError(Exception):
    """The pidfile cannot be taken (another master holds it, or its directory is missing)."""


def read_pid(path: str | os.PathLike) -> int | None:
    """The pid in a pidfile, or None if it is missing or unreadable."""
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def is_locked(path: str | os.PathLike) -> bool:
    """True while a running master holds this pidfile."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def check(path: str) -> None:
    """Raise PidfileError if a master could not take this pidfile now."""
    if is_locked(path):
        raise PidfileError(f"server.pidfile: {path} is held by a running master (pid {read_pid(path)})")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise PidfileError(f"server.pidfile: cannot write {path}: directory {directory} does not exist")


def acquire(path: str, pid: int) -> int:
    """Write `pid` to the pidfile atomically and lock it; return the locked descriptor (keep it open).

    Raises PidfileError when a live master holds the file or the directory is missing.
    """
    check(path)
    tmp = f"{path}.{pid}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{pid}\n".encode())
        os.rename(tmp, path)
    except OSError as exc:
        raise PidfileError(f"server.pidfile: cannot write {path}: {exc.strerror or exc}") from None
    return fd


def release(path: str, pid: int, fd: int | None) -> None:
    """Remove the pidfile if it is still ours, and drop the lock."""
    if read_pid(path) == pid:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    if fd is not None:
        os.close(fd)
