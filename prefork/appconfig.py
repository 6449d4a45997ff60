"""An application's own settings sections: learned by importing the app, then validated.

The master never imports the application (a reload must run new code, and nothing of the app may live
in the master), so ``prefork run`` and SIGHUP ask a forked child, the probe, to import it, check the
config against the sections it declares (prefork.settings), resolve the app's command-line flags and
report back through a pipe. The probe runs only when there is something to check: a value of a section
other than [server] and [pool], or a flag the framework does not know. The one-shot commands
(``check``, ``initdb``, ``config``) import the app in their own process and call ``settle()``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

from prefork.app import AppLoadError, enter_app_dir, load_app
from prefork.config import Config, ConfigError
from prefork.settings import Section, sections_of


def declared_sections(app: Any) -> tuple[type[Section], ...]:
    """The Section classes an app lists in its ``settings`` attribute (none if it has no such attribute)."""
    try:
        return sections_of(getattr(app, "settings", None))
    except TypeError as exc:
        raise AppLoadError(f"{type(app).__name__}.settings: {exc}") from None


def resolve_flags(tokens: Sequence[str], sections: Sequence[type[Section]]) -> dict[str, str]:
    """``--flag VALUE`` / ``--flag=VALUE`` tokens the framework's parser left over, as ``section.key``
    overrides of the app's sections; ConfigError for a token that is none of their flags."""
    flags = {s.flag: s.name for kind in sections for s in kind.settings() if s.flag}
    result: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        flag, eq, value = tokens[i].partition("=")
        if flag not in flags:
            offered = f" (the app's flags: {', '.join(sorted(flags))})" if flags else ""
            raise ConfigError(f"unrecognized argument {tokens[i]!r}{offered}")
        if not eq:
            if i + 1 >= len(tokens):
                raise ConfigError(f"{flag}: expected a value ({flags[flag]})", flags[flag])
            i += 1
            value = tokens[i]
        result[flags[flag]] = value
        i += 1
    return result


def settle(cfg: Config, app: Any, tokens: Sequence[str] = ()) -> Config:
    """``cfg`` with the app's flags folded in, its sections validated; ConfigError on the first problem."""
    sections = declared_sections(app)
    if tokens:
        cfg = cfg.with_app_flags(resolve_flags(tokens, sections))
    cfg.check_sections(sections, cfg.server.app)
    return cfg


def needs_probe(cfg: Config, tokens: Sequence[str] = ()) -> bool:
    """Whether the master has anything the app's sections must check: no values, nothing to check."""
    return bool(tokens or cfg.app_values)


class ProbeInterrupted(AppLoadError):
    """The master was told to stop while the probe ran: the probe was killed, its question left open."""


def probe(
    cfg: Config,
    app_dir: str,
    tokens: Sequence[str] = (),
    timeout: float = 30.0,
    interrupted: Callable[[], bool] = lambda: False,
    close_fds: Sequence[int] = (),
) -> Config:
    """``settle()`` run in a forked child that imports the app from ``app_dir``; the master stays free of
    it. Raises ConfigError (a bad value: exit 2, or a reload kept back) or AppLoadError (the app does not
    import, or the probe took longer than ``timeout`` seconds). ``interrupted()`` is asked every 0.1 s
    while the probe runs: True (a stop signal came) kills it and raises ProbeInterrupted. ``close_fds``
    (the master's listeners) are closed in the probe first: a probe outliving its master must not keep a
    port bound."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the probe: never returns
        os.close(r)
        for fd in close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        _probe_child(cfg, app_dir, tokens, w)
    os.close(w)
    data: bytes | None = None
    try:
        data = _read_all(r, timeout, interrupted)
    finally:
        os.close(r)
        if data is None:
            _kill(pid)
        os.waitpid(pid, 0)
    if data is None and interrupted():
        raise ProbeInterrupted(f"stopped while importing {cfg.server.app} to check its settings")
    if data is None:
        raise AppLoadError(f"importing {cfg.server.app} to check its settings took longer than {timeout:g}s")
    try:
        report = json.loads(data)
    except ValueError:
        raise AppLoadError(f"importing {cfg.server.app} to check its settings failed (the probe died)") from None
    if "config_error" in report:
        raise ConfigError(report["config_error"], report.get("key"))
    if "import_error" in report:
        raise AppLoadError(report["import_error"])
    return cfg.with_app_flags(report["overrides"]) if tokens else cfg


def _probe_child(cfg: Config, app_dir: str, tokens: Sequence[str], w: int) -> None:
    report: dict[str, Any]
    try:
        # The master's handlers queue signals for its loop: here a TERM or INT must simply end the probe.
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        for signum in (signal.SIGUSR1, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(signum, signal.SIG_IGN)
        try:
            enter_app_dir(app_dir, cfg.server.pythonpath)
            settled = settle(cfg, load_app(cfg.server.app), tokens)
            report = {"overrides": {k: v for k, v in settled.overrides.items() if k not in cfg.overrides}}
        except ConfigError as exc:
            report = {"config_error": str(exc), "key": exc.key}
        except AppLoadError as exc:
            report = {"import_error": str(exc)}
        except OSError as exc:
            report = {"import_error": f"server.chdir: cannot enter {app_dir}: {exc.strerror or exc}"}
        except SystemExit as exc:
            report = {"import_error": f"{cfg.server.app} exited: {exc.code}"}
        except BaseException as exc:
            report = {"import_error": f"cannot load {cfg.server.app}: {exc!r}"}
        data = json.dumps(report).encode()
        while data:
            data = data[os.write(w, data) :]
    finally:
        os._exit(0)  # never the master's atexit handlers or finally blocks


def _read_all(fd: int, timeout: float, interrupted: Callable[[], bool]) -> bytes | None:
    """Everything until EOF, or None once ``timeout`` passed or ``interrupted()`` says so."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or interrupted():
            return None
        try:
            readable, _, _ = select.select([fd], [], [], min(left, 0.1))
        except InterruptedError:
            continue
        if readable:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
