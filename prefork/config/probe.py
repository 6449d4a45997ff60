"""The probe: a forked child that imports the app to check the config against its sections, for the master.

The master never imports the application (a reload must run new code, and nothing of the app may live
in the master), so ``prefork run`` and SIGHUP ask a forked child, the probe, to import it, check the
config against the sections it declares (prefork.config.appsections), resolve the app's command-line
flags and report back through a pipe (``Probe``: it runs as server.user and holds nothing of the
master's). The probe runs only when there is something to check: a value of a section other than
[server] and [pool], or a flag the framework does not know (``needs_probe()``). At start ``prefork run``
waits for it (``probe()``); on SIGHUP the master watches it from its main loop and keeps supervising
meanwhile. The one-shot commands (``check``, ``initdb``, ``config``) import the app in their own process
and call ``settle()``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
from collections.abc import Sequence
from typing import Any

from prefork import logs
from prefork.config.appload import AppLoadError
from prefork.config.appsections import load_settled
from prefork.config.errors import ConfigError
from prefork.config.loader import Config
from prefork.privileges import Identity, PrivilegeError, die_with_parent
from prefork.privileges import drop as drop_privileges
from prefork.signals import reset_master_handlers

PROBE_POLL_S = 0.1  # how often a waiting probe() looks at its deadline


def needs_probe(cfg: Config, tokens: Sequence[str] = ()) -> bool:
    """Whether the master has anything the app's sections must check: no values, nothing to check."""
    return bool(tokens or cfg.app_values)


class Probe:
    """One probe: a child forked to import the app and ``settle()`` the config, watched by its parent.

    The child keeps no descriptor of its parent's but stdin, stdout, stderr and its report pipe (not the
    pidfile's lock, the listeners, the metrics port, the master's self-pipe nor any worker's heartbeat
    file), runs as ``identity`` (server.user/group, like the workers) and is killed by the kernel if its
    parent dies. The parent either waits in ``probe()`` (at start, when there is nothing else to do) or
    watches it from its main loop: ``fileno()`` to wake on the report, ``poll()`` to read it, ``overdue()``
    against the deadline, then ``result()``; ``kill()`` to give up.
    """

    def __init__(
        self,
        cfg: Config,
        app_dir: str,
        tokens: Sequence[str] = (),
        timeout: float = 30.0,
        identity: Identity | None = None,
    ):
        self.cfg = cfg
        self.tokens = tuple(tokens)
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.reaped = False  # set by a parent that collected the child with waitpid(-1) (the master)
        self._chunks: list[bytes] = []
        self._eof = False
        parent = os.getpid()
        r, w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the probe: never returns
            _probe_child(cfg, app_dir, self.tokens, w, identity, parent)
        os.close(w)
        os.set_blocking(r, False)
        self._fd: int | None = r

    def fileno(self) -> int:
        """The report pipe, readable when the probe has something to say (select() on the object)."""
        assert self._fd is not None, "the probe is over"
        return self._fd

    def poll(self, wait: float = 0.0) -> bool:
        """Read what the probe wrote, waiting up to ``wait`` seconds; True once its report is complete."""
        if self._eof or self._fd is None:
            return self._eof
        if wait > 0:
            try:
                select.select([self._fd], [], [], wait)
            except InterruptedError:
                return False
        try:
            while chunk := os.read(self._fd, 65536):
                self._chunks.append(chunk)
        except BlockingIOError:
            return False
        self._eof = True
        return True

    def overdue(self) -> bool:
        """Whether the probe has taken longer than its timeout."""
        return time.monotonic() > self.deadline

    def result(self) -> Config:
        """The settled config, once ``poll()`` said the report is complete. Raises ConfigError (a bad
        value) or AppLoadError (the app does not import, the probe died)."""
        self._close()
        try:
            report = json.loads(b"".join(self._chunks))
        except ValueError:
            raise AppLoadError(
                f"importing {self.cfg.server.app} to check its settings failed (the probe died)"
            ) from None
        if "config_error" in report:
            raise ConfigError(report["config_error"], report.get("key"))
        if "import_error" in report:
            raise AppLoadError(report["import_error"])
        return self.cfg.with_app_flags(report["overrides"]) if self.tokens else self.cfg

    def timed_out(self) -> AppLoadError:
        """The error for a probe that overran its timeout (``kill()`` it first)."""
        return AppLoadError(f"importing {self.cfg.server.app} to check its settings took longer than {self.timeout:g}s")

    def kill(self) -> None:
        """Kill the probe (if it still runs) and collect it."""
        if not self.reaped:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self.reaped:
            try:
                os.waitpid(self.pid, 0)  # it has written its report (or was killed): this does not wait long
            except ChildProcessError:
                pass
            self.reaped = True


def probe(
    cfg: Config,
    app_dir: str,
    tokens: Sequence[str] = (),
    timeout: float = 30.0,
    identity: Identity | None = None,
) -> Config:
    """``settle()`` run in a probe (a forked child that imports the app from ``app_dir`` as ``identity``),
    waiting for its report: the master stays free of the app. Raises ConfigError (a bad value: exit 2)
    or AppLoadError (the app does not import, or the probe took longer than ``timeout`` seconds)."""
    child = Probe(cfg, app_dir, tokens, timeout, identity)
    try:
        while not child.poll(wait=PROBE_POLL_S):
            if child.overdue():
                child.kill()
                raise child.timed_out()
    except BaseException:  # Ctrl-C at start: the probe goes with us
        child.kill()
        raise
    return child.result()


def _probe_child(
    cfg: Config, app_dir: str, tokens: Sequence[str], w: int, identity: Identity | None, parent: int
) -> None:
    try:
        # The master's handlers queue signals for its loop: here a TERM or INT must simply end the probe.
        # (The wakeup descriptor goes first: it is closed below.) USR1, TTIN and TTOU are the master's
        # business: ignored, so that a logrotate's USR1 cannot kill the probe.
        reset_master_handlers(ignored=(signal.SIGUSR1, signal.SIGTTIN, signal.SIGTTOU))
        # Logging goes to stderr: the log file's descriptor is about to be closed, and its number could
        # then name a file the app opens.
        logs.setup(cfg.server.log_level, "-", cfg.server.log_format)
        _close_fds_except(w)
        data = json.dumps(_probe_report(cfg, app_dir, tokens, identity, parent)).encode()
        while data:
            data = data[os.write(w, data) :]
    finally:
        os._exit(0)  # never the master's atexit handlers or finally blocks


def _probe_report(
    cfg: Config, app_dir: str, tokens: Sequence[str], identity: Identity | None, parent: int
) -> dict[str, Any]:
    """What the probe reports: the app's flags as overrides, or the error that stops the start or reload."""
    try:
        drop_privileges(identity)  # as the workers do, before any of the app's code runs
        die_with_parent(parent)  # after the drop, which would clear it
    except (PrivilegeError, OSError) as exc:
        return {"import_error": f"cannot run as server.user/server.group: {exc}"}
    try:
        settled = load_settled(cfg, tokens, app_dir).config
        return {"overrides": {k: v for k, v in settled.overrides.items() if k not in cfg.overrides}}
    except ConfigError as exc:
        return {"config_error": str(exc), "key": exc.key}
    except AppLoadError as exc:
        return {"import_error": str(exc)}
    except BaseException as exc:
        return {"import_error": f"cannot load {cfg.server.app}: {exc!r}"}


def _close_fds_except(keep: int) -> None:
    """Close every descriptor but stdin, stdout, stderr and ``keep``."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: every possible number
        os.closerange(3, keep)
        os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
        return
    for fd in fds:
        if fd > 2 and fd != keep:
            try:
                os.close(fd)
            except OSError:
                pass  # the listing's own descriptor, closed already
