"""Upgrading the master in place (USR2): a new master from the installed code, on the same listening sockets.

On USR2 the old master renames its pidfile to ``PIDFILE.oldbin`` (as nginx does) and forks a child that
re-executes the command line it was started with (``sys.executable`` and ``sys.orig_argv``: interpreter
options and ``-m`` kept), in the same environment and the directory it was started in. The child
inherits the listening sockets, nothing else: they are moved to descriptors 3, 4, ... as systemd passes
sockets (``LISTEN_FDS``, with ``LISTEN_PID`` the child's own pid, so that ``prefork.activation`` takes
them), with ``PREFORK_UPGRADE_BINDS`` (a JSON list) naming the ``server.bind`` entry each one serves and
``PREFORK_UPGRADE_FD`` the write end of a pipe back to the old master. The new master binds nothing that it
inherited: no second bind, no moment when the port is closed.

The new master boots its workers; once they all serve it writes ``PIDFILE``, tells systemd
``MAINPID=<its pid>`` and ``READY=1``, and writes ``ready <pid>`` on the pipe. The old master then stops
its workers gracefully (as TERM does) and exits 0, removing ``PIDFILE.oldbin``. A new master that exits
first (exec error, import error, config error, workers that cannot boot) or is not ready within
``max(server.timeout, 10)`` seconds (it is then sent TERM) leaves the old master serving: it renames
``PIDFILE.oldbin`` back and logs one line with the reason. The old master records each attempt in its
master.json (``upgrade``), which `prefork upgrade` reads.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import MutableMapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from prefork.activation import SD_LISTEN_FDS_START, Inherited
from prefork.state import iso

FD_VARIABLE = "PREFORK_UPGRADE_FD"  # the new master's end of the pipe to the old one
BINDS_VARIABLE = "PREFORK_UPGRADE_BINDS"  # the server.bind entry of each passed socket, as a JSON list
OLDBIN = ".oldbin"  # the old master's pidfile while the new one boots (nginx's name)
EXEC_FAILED = 127  # as a shell reports a command it could not run
SERVING, FAILED = "serving", "failed"


def command_line() -> list[str]:
    """The command line this process was started with, to run again: the interpreter, its options, ``-m``."""
    return [sys.executable, *sys.orig_argv[1:]]


@dataclass
class Upgrade:
    """A new master started by USR2, not yet serving (in the old master)."""

    pid: int
    pipe: int  # read end: ``ready <pid>`` from the new master, or ``error ...`` from a failed exec
    deadline: float
    said: str = ""

    def read(self) -> str:
        """What the new master said so far (non-blocking)."""
        try:
            while chunk := os.read(self.pipe, 4096):
                self.said += chunk.decode(errors="replace")
        except (BlockingIOError, InterruptedError):
            pass
        return self.said

    @property
    def ready(self) -> bool:
        return self.said.startswith("ready ")

    def close(self) -> None:
        os.close(self.pipe)


def spawn(listeners: dict[str, socket.socket], cwd: str, environ: dict[str, str] | None = None) -> Upgrade:
    """Fork and exec the new master with the listeners (keyed by their server.bind entry); see the module."""
    argv = command_line()
    env = dict(os.environ if environ is None else environ)
    keys, socks = list(listeners), list(listeners.values())
    r, w = os.pipe()
    os.set_blocking(r, False)
    pid = os.fork()
    if pid:
        os.close(w)
        return Upgrade(pid, r, 0.0)
    try:  # the child: only exec from here, or _exit
        os.close(r)
        target = SD_LISTEN_FDS_START + len(socks)  # where the pipe goes, after the sockets
        # Copies above every target first, so that a dup2 onto 3, 4, ... never closes a source still needed.
        sources = [fcntl.fcntl(fd, fcntl.F_DUPFD, target + 1) for fd in [*(s.fileno() for s in socks), w]]
        for i, fd in enumerate(sources):
            os.dup2(fd, SD_LISTEN_FDS_START + i, inheritable=True)  # inherited by the exec, and only these
            os.close(fd)
        w = target
        env.update(
            {
                "LISTEN_PID": str(os.getpid()),
                "LISTEN_FDS": str(len(socks)),
                BINDS_VARIABLE: json.dumps(keys),
                FD_VARIABLE: str(target),
            }
        )
        env.pop("LISTEN_FDNAMES", None)
        if "WATCHDOG_PID" in env:  # systemd's watchdog is the new master's once it is the main process
            env["WATCHDOG_PID"] = str(os.getpid())
        os.chdir(cwd)
        os.execve(argv[0], argv, env)
    except BaseException as exc:
        try:
            os.write(w, f"error cannot start {' '.join(argv)}: {exc}".encode())
        finally:
            os._exit(EXEC_FAILED)
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class Handover:
    """In a new master started by USR2: the pipe to the old master and the binds of the inherited sockets."""

    fd: int
    binds: list[str]
    old_pid: int

    def ready(self, pid: int) -> None:
        """Tell the old master this one serves: it stops its workers and exits."""
        try:
            os.write(self.fd, f"ready {pid}\n".encode())
        except OSError:
            pass  # the old master is gone: nobody to tell
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def take(count: int, environ: MutableMapping[str, str] | None = None) -> Handover | None:
    """The handover from an old master, if USR2 started this process (``count``: the sockets taken from
    LISTEN_FDS); the variables are removed from the environment so that no child sees them."""
    env = os.environ if environ is None else environ
    fd, binds = env.pop(FD_VARIABLE, None), env.pop(BINDS_VARIABLE, None)
    if fd is None:
        return None
    keys = json.loads(binds or "[]")
    if not fd.isdigit() or not isinstance(keys, list) or len(keys) != count:
        raise ValueError(f"{FD_VARIABLE}={fd} {BINDS_VARIABLE}={binds}: not what an upgrading master passes")
    os.set_inheritable(int(fd), False)
    return Handover(int(fd), [str(k) for k in keys], os.getppid())


@dataclass
class UpgradeRecord:
    """The old master's record of its upgrades (USR2), in master.json under ``upgrade``: as
    ``prefork.reloads.ReloadRecord``, a USR2 that comes during an attempt is answered by it."""

    requested: int = 0  # attempts started (a USR2 during one is ignored: that attempt answers it)
    answered: int = 0  # attempts finished
    running: int | None = None  # the new master's pid while an attempt is under way
    outcome: str | None = None  # serving or failed
    reason: str | None = None  # why it failed
    new_pid: int | None = None
    finished_at: str | None = None

    def begin(self, pid: int) -> None:
        self.requested += 1
        self.running = pid

    def refuse(self, reason: str) -> None:
        """An attempt that could not start: answered at once."""
        self.requested += 1
        self.answered, self.running, self.new_pid = self.requested, None, None
        self.outcome, self.reason, self.finished_at = FAILED, reason, iso(time.time())

    def finish(self, outcome: str, reason: str | None = None) -> None:
        if self.running is None:
            return
        self.answered, self.new_pid, self.running = self.requested, self.running, None
        self.outcome, self.reason, self.finished_at = outcome, reason, iso(time.time())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def answered(master: dict[str, Any] | None) -> int:
    """The USR2s a master's finished upgrades answered so far, from its master.json: the next attempt to
    finish answers a USR2 sent now (the one under way, which ignores it, or the one it starts)."""
    record = (master or {}).get("upgrade")
    return int(record.get("answered") or 0) if isinstance(record, dict) else 0


def answer(master: dict[str, Any] | None, before: int) -> dict[str, Any] | None:
    """The record once an upgrade started after the first ``before`` finished; None until then."""
    record = (master or {}).get("upgrade")
    if isinstance(record, dict) and (record.get("answered") or 0) > before:
        return record
    return None


def running(pid: int) -> bool:
    """Whether pid is a live process (a zombie, exited but not yet reaped by its parent, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def matched(
    handover: Handover, passed: Sequence[Inherited], binds: Sequence[Any]
) -> tuple[dict[str, Inherited], list[tuple[str, Inherited]]]:
    """The inherited sockets by the server.bind entry they served in the old master (those the new config
    still has: the rest of its entries are bound), and those of the entries it no longer has (not served)."""
    wanted = {str(b) for b in binds}
    pairs = list(zip(handover.binds, passed, strict=True))
    return {key: each for key, each in pairs if key in wanted}, [(k, each) for k, each in pairs if k not in wanted]
