"""The ``prefork`` command line.

    prefork run [APP] [options]        # foreground; APP defaults to workers.ingest:app
    prefork run --daemon [options]     # returns 0 only once workers are serving
    prefork reload|stop|status [--pidfile PATH | -c FILE | --pid PID] [--json]
    prefork reload --wait [--timeout S]  # 0: the new generation serves; 1: refused or abandoned; 124: timed out
    prefork upgrade [--pidfile PATH | -c FILE | --pid PID] [--timeout S]  # USR2: 0 once the new master serves alone
    prefork check [APP] [-c FILE]      # validate config, import the app, run its check hook
    prefork initdb [APP] [-c FILE]     # run the app's initdb hook (ingest: create its table)
    prefork config [APP] [-c FILE] [--json]  # the effective configuration, each key with its source
    prefork send [--to HOST:PORT] [--errors FILE] [--no-ids] [--id-prefix TEXT] [--tls ...] [FILE ...]  # 0: all OK

Every config key can be given as ``-s section.key=value``; common keys also have flags (SETTINGS in
prefork.config.framework names them; an app's sections may declare more, resolved once the app is imported: see
prefork.config.flags). Errors in the command line or the config: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from prefork import __version__
from prefork.config.errors import ConfigError
from prefork.config.flags import add_setting_flags, overrides
from prefork.config.framework import FRAMEWORK, SETTINGS
from prefork.config.loader import Config, load_config
from prefork.exits import EXIT_BOOT, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_TIMEOUT, EXIT_USAGE

if TYPE_CHECKING:
    from prefork.privileges import Identity


class CommandError(Exception):
    """A command that cannot be carried out; the message is the one line printed."""

    def __init__(self, message: str, exit_status: int = EXIT_USAGE):
        super().__init__(message)
        self.exit_status = exit_status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefork", description="Pre-fork TCP line server with a green MySQL pool.")
    parser.add_argument(
        "--version", action=_VersionAction, help="print the versions of prefork, gevent, PyMySQL and Python"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="start the server (foreground, or --daemon)")
    run.add_argument("app", nargs="?", help="module:attribute of the line application (server.app)")
    _add_config_options(run)
    add_setting_flags(run)

    for name, text in (
        ("reload", "reload the config and the app (SIGHUP)"),
        ("stop", "stop gracefully (SIGTERM)"),
        ("status", "show the master and its workers"),
    ):
        p = sub.add_parser(name, help=text)
        _add_config_options(p)
        p.add_argument("--pidfile", help="the master's pidfile")
        p.add_argument("--pid", type=int, help="the master's pid (systemd's $MAINPID), instead of a pidfile")
        if name == "reload":
            p.add_argument(
                "--wait",
                action="store_true",
                help="wait for the outcome: exit 0 once the new generation serves, 1 if the reload was refused "
                "or abandoned, 124 if --timeout ran out",
            )
            p.add_argument(
                "--timeout",
                type=float,
                default=None,
                help=f"seconds --wait waits at most (implies --wait; default {RELOAD_WAIT_TIMEOUT:g})",
            )
        if name == "status":
            p.add_argument("--json", action="store_true", help="print one JSON object")
        if name == "stop":
            p.add_argument("--no-wait", action="store_true", help="return without waiting for the master to exit")
            p.add_argument(
                "--timeout", type=float, help="wait at most this many seconds for the master to exit (exit 1 if not)"
            )

    upgrade = sub.add_parser("upgrade", help="start a new master from the installed code (SIGUSR2) and wait")
    _add_config_options(upgrade)
    upgrade.add_argument("--pidfile", help="the master's pidfile")
    upgrade.add_argument("--pid", type=int, help="the master's pid (systemd's $MAINPID), instead of a pidfile")
    upgrade.add_argument(
        "--timeout",
        type=float,
        default=UPGRADE_WAIT_TIMEOUT,
        help="exit 124 if the new master does not serve alone within this many seconds "
        f"(default {UPGRADE_WAIT_TIMEOUT:g}); exit 0 once it does, 1 if it failed (the old master serves on)",
    )

    for name, text in (
        ("check", "validate the config, import the app and run its check hook (ingest: connect, find the table)"),
        ("initdb", "import the app and run its initdb hook (ingest: create the table if missing)"),
        ("config", "print the effective configuration: every key, its value and where it came from"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("app", nargs="?", help="module:attribute of the line application (server.app)")
        _add_config_options(p)
        add_setting_flags(p)
        if name == "config":
            p.add_argument("--json", action="store_true", help="print one JSON object")

    send = sub.add_parser("send", help="send the lines of files (or stdin) and wait for every reply")
    send.add_argument("files", nargs="*", metavar="FILE", help="files of lines (none or -: stdin)")
    send.add_argument("--to", default="127.0.0.1:32777", metavar="HOST:PORT", help="the server")
    send.add_argument("--window", type=int, default=1000, help="lines in flight at most (default 1000)")
    send.add_argument("--errors", metavar="FILE", help="write each line that got ERR there, after its reason")
    send.add_argument(
        "--no-ids",
        dest="ids",
        action="store_false",
        help="send no line ids, even to a server that offers them (a resent line may then be stored twice)",
    )
    send.add_argument(
        "--id-prefix",
        metavar="TEXT",
        help="stable ids for stdin's lines (TEXT:LINE_NUMBER), so that a re-run stores nothing twice; a file's ids "
        "come from the file itself (its device, inode and first line)",
    )
    tls = send.add_argument_group("TLS (any of these turns it on)")
    tls.add_argument(
        "--tls", action="store_true", help="connect with TLS 1.2 or later, verified against the system's CAs"
    )
    tls.add_argument("--tls-ca", metavar="FILE", help="the CA certificates (PEM) that verify the server instead")
    tls.add_argument("--tls-cert", metavar="FILE", help="a client certificate (PEM), for a server that asks for one")
    tls.add_argument("--tls-key", metavar="FILE", help="its key (PEM; default: in the --tls-cert file)")
    tls.add_argument("--tls-server-name", metavar="NAME", help="the name sent and verified (default: the host of --to)")
    return parser


RELOAD_WAIT_TIMEOUT = 60.0  # a probe and a generation's boot each get server.timeout (30 s by default)
UPGRADE_WAIT_TIMEOUT = 120.0  # the new master's boot (server.timeout), then the old workers' graceful stop


class _VersionAction(argparse.Action):
    """``--version``: prefork's version and those it runs with, looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(version_text())
        parser.exit()


def version_text() -> str:
    """One line: ``prefork 0.1.0 (gevent 24.2.1, PyMySQL 1.1.1, Python 3.11.2)``."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for dist in ("gevent", "PyMySQL"):
        try:
            found.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            found.append(f"{dist} not installed")
    return f"prefork {__version__} ({', '.join(found)}, Python {platform.python_version()})"


def _add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", metavar="FILE", help="INI config file")
    p.add_argument(
        "-s",
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="set any config key (repeatable)",
    )


# Commands that take the flags of the app's sections, and the long options they have of their own.
APP_FLAG_COMMANDS = ("run", "check", "initdb", "config")
_OWN_OPTIONS = frozenset({"--config", "--set", "--help", "--json", *(s.flag for s in SETTINGS if s.flag)})


def split_app_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Take the long options prefork does not know out of a run/check/initdb/config command line, each
    with its value (``--flag VALUE`` or ``--flag=VALUE``): they may be flags of the app's sections, known
    only once the app is imported. Taken out before argparse, so that a value is never mistaken for APP."""
    if not argv or argv[0] not in APP_FLAG_COMMANDS:
        return list(argv), []
    kept, app_flags = [argv[0]], []
    i = 1
    while i < len(argv):
        token = argv[i]
        if token == "--":
            kept += argv[i:]
            break
        flag = token.partition("=")[0]
        if token.startswith("--") and flag not in _OWN_OPTIONS:
            app_flags.append(token)
            if "=" not in token and i + 1 < len(argv):
                i += 1
                app_flags.append(argv[i])
        else:
            kept.append(token)
        i += 1
    return kept, app_flags


def load_from_args(args: argparse.Namespace) -> Config:
    """Build the config from -c, the environment, -s and flags (flags win over -s)."""
    return load_config(args.config, os.environ, overrides(args.sets, getattr(args, "app", None), args))


# -- commands -------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from prefork import activation, logs, sockets, upgrade
    from prefork.config.appload import AppLoadError, start_directory
    from prefork.config.probe import needs_probe, probe
    from prefork.daemon import daemonize
    from prefork.master import Master
    from prefork.privileges import file_owner
    from prefork.tls import check_config as check_tls_files
    from prefork.tls import warn_expiring

    try:  # first: no child (the app probe, workers) may see LISTEN_FDS or inherit the sockets
        passed, ignored = activation.take()
        handover = upgrade.take(len(passed))  # USR2 started this master: the sockets are the old master's
    except (activation.ActivationError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    cfg = load_from_args(args)
    identity = resolve_identity(cfg)
    if needs_probe(cfg, args.extra):  # values for the app's sections: check them before anything starts
        try:
            cfg = probe(cfg, cfg.server.chdir or start_directory(), args.extra, cfg.server.timeout, identity=identity)
        except AppLoadError as exc:
            raise CommandError(f"workers could not boot: {exc}", EXIT_BOOT) from None
    if cfg.server.pidfile:  # before anything is bound or forked: one line, exit 2
        from prefork import pidfile

        try:
            pidfile.check(cfg.server.pidfile)
        except pidfile.PidfileError as exc:
            raise CommandError(str(exc)) from None
    # Workers reopen the log file (USR1 after logrotate) as server.user: it is given to that user.
    logs.setup(cfg.server.log_level, cfg.server.log_file, cfg.server.log_format, owner=file_owner(identity))
    log = logging.getLogger("prefork.master")
    if ignored:
        log.warning("%s", ignored)
    try:
        if handover is not None:
            log.info("Upgrading from master %s: serving its listening sockets", handover.old_pid)
            from_systemd, dropped = upgrade.matched(handover, passed, cfg.server.bind)
            for key, each in dropped:
                log.warning("server.bind=%s is no longer in the config: its socket is not served", key)
                each.sock.close()
        else:
            from_systemd = activation.match(passed, cfg.server.bind, cfg.server.fd_name)
    except activation.ActivationError as exc:
        raise CommandError(str(exc)) from None
    # TLS listeners' files, as root if started so (the workers load them before dropping privileges).
    warn_expiring(check_tls_files(cfg))  # ConfigError: exit 2, one line naming the key and the reason
    listeners = {}
    try:
        for address in cfg.server.bind:
            if (key := str(address)) in from_systemd:
                # Inherited: systemd's, or the old master's (a unix socket's file is then left in place at
                # the final stop: the next bind replaces a stale one).
                listeners[key] = sockets.adopt(from_systemd[key].sock, upgrade=handover is not None)
                continue
            if passed:
                log.info("server.bind=%s: no socket from systemd matches it, binding it", address)
            bind = partial(sockets.bind, address, **sockets.bind_options(cfg.server))
            listeners[str(address)] = sockets.retry_in_use(bind, f"server.bind={address}", cfg.server.bind_attempts)
    except sockets.BindError as exc:
        for sock in listeners.values():
            sock.close()
        raise CommandError(str(exc)) from None
    metrics = None
    if (metrics_bind := cfg.server.metrics_bind) is not None:
        from prefork.metrics import MetricsServer

        def serve_metrics() -> MetricsServer:
            return MetricsServer(metrics_bind, lambda: master.reporter.state())

        try:
            what = f"server.metrics_bind={metrics_bind}"
            metrics = sockets.retry_in_use(serve_metrics, what, cfg.server.bind_attempts)
        except sockets.BindError as exc:
            for sock in listeners.values():
                sock.close()
            raise CommandError(str(exc)) from None
        except OSError as exc:
            for sock in listeners.values():
                sock.close()
            raise CommandError(f"cannot bind server.metrics_bind={metrics_bind}: {exc.strerror or exc}") from None
    master = Master(cfg, listeners, metrics=metrics, identity=identity, handover=handover)
    if not cfg.server.daemon or handover is not None:  # started by a daemon's USR2: detached already
        return master.run()
    report = daemonize(master)  # the launching process exits inside, with the start's outcome
    code = master.run()
    report(code or 1)  # stopped before serving: the launcher must not report success
    return code


def resolve_identity(cfg: Config) -> Identity | None:
    """Who the workers run as (server.user / server.group), or None when neither is set."""
    from prefork.privileges import PrivilegeError, resolve

    try:
        return resolve(cfg.server.user, cfg.server.group)
    except PrivilegeError as exc:
        raise CommandError(str(exc)) from None


def find_master(args: argparse.Namespace) -> tuple[int, Path]:
    """The master's pid and state directory: from --pidfile, from the config's pidfile, or the only
    running master."""
    from prefork.state import (
        MASTER_FILE,
        PIDFILE_STATE_SUFFIX,
        STATE_DIR_PREFIX,
        candidate_state_dirs,
        default_runtime_dir,
        runtime_dir,
    )

    pidfile = getattr(args, "pidfile", None)
    bases = [Path(os.environ["PREFORK_SERVER_RUNTIME_DIR"])] if os.environ.get("PREFORK_SERVER_RUNTIME_DIR") else []
    given = getattr(args, "pid", None)
    if given is not None:  # before the config: a reload's new config may not load, the master's pid is known
        if given <= 0 or not _alive(given):
            raise CommandError(f"no master running (pid {given})", EXIT_FAILURE)
        candidates = candidate_state_dirs(given, bases)
        return given, next((d for d in candidates if (d / MASTER_FILE).exists()), candidates[0])
    if args.config or args.sets:
        cfg = load_from_args(args)
        bases.append(runtime_dir(cfg.server.runtime_dir))
        pidfile = pidfile or cfg.server.pidfile
        if not pidfile:
            raise CommandError("server.pidfile is not set in the config: give --pidfile")
    if pidfile:
        pidfile = _live_pidfile(pidfile)
        pid = _pid_from(pidfile)
        try:  # the master wrote where its state is beside the pidfile (PIDFILE's, not PIDFILE.oldbin's)
            recorded = [Path(Path(pidfile + PIDFILE_STATE_SUFFIX).read_text().strip())]
        except OSError:
            recorded = []
        candidates = recorded + candidate_state_dirs(pid, bases)
        found = next((d for d in candidates if (d / MASTER_FILE).exists()), candidates[0])
        return pid, found
    pids: dict[int, Path] = {}
    for base in [default_runtime_dir(), *bases]:
        for entry in base.glob(f"{STATE_DIR_PREFIX}*"):
            suffix = entry.name[len(STATE_DIR_PREFIX) :]
            if suffix.isdigit() and _alive(int(suffix)) and (entry / MASTER_FILE).exists():
                pids.setdefault(int(suffix), entry)
    if len(pids) == 1:
        return next(iter(pids.items()))
    if not pids:
        raise CommandError("no master running (give --pidfile or -c FILE)", 1)
    raise CommandError(f"several masters running ({', '.join(map(str, sorted(pids)))}): give --pidfile or -c FILE")


def find_master_pid(args: argparse.Namespace) -> int:
    """The master's pid (see find_master)."""
    return find_master(args)[0]


def _pid_from(pidfile: str) -> int:
    from prefork.pidfile import read_pid

    pid = read_pid(pidfile)
    if pid is None:
        if not os.path.lexists(pidfile):
            raise CommandError(f"no master running (no pidfile {pidfile})", 1)
        raise CommandError(f"cannot read pidfile {pidfile}: no pid in it, or not readable", 1)
    if not _alive(pid):
        raise CommandError(f"no master running (stale pidfile {pidfile}, pid {pid})", 1)
    return pid


def signal_master(args: argparse.Namespace, signum: int, pid: int | None = None) -> int:
    """Send a signal to the master (``pid``, else the one find_master finds); through a pidfile, only while
    the master holds its lock (a pid recycled by another process since is never signalled)."""
    from prefork import pidfile as pidfiles

    pid = find_master_pid(args) if pid is None else pid
    path = None if getattr(args, "pid", None) is not None else _pidfile_of(args)
    if path and not pidfiles.is_locked(path):
        held = f"pidfile {path} is not held by a running master, pid {pid}"
        raise CommandError(f"no master running ({held})", EXIT_FAILURE)
    os.kill(pid, signum)
    return pid


def _pidfile_of(args: argparse.Namespace, live: bool = True) -> str | None:
    """The pidfile the command names; with ``live``, PIDFILE.oldbin instead while an upgrade moved it there."""
    path = args.pidfile if getattr(args, "pidfile", None) else None
    if path is None and (args.config or args.sets):
        path = load_from_args(args).server.pidfile
    return _live_pidfile(path) if path and live else path


def _live_pidfile(path: str) -> str:
    """PIDFILE, or PIDFILE.oldbin when only that exists: a master upgrading (USR2) moved its pidfile there
    until the new master writes PIDFILE; `stop`, `reload`, `status` and `upgrade` reach it meanwhile."""
    from prefork.upgrade import OLDBIN

    if os.path.lexists(path) or not os.path.lexists(path + OLDBIN):
        return path
    return path + OLDBIN


def cmd_reload(args: argparse.Namespace) -> int:
    if not args.wait and args.timeout is None:
        signal_master(args, signal.SIGHUP)
        return 0
    from prefork.reloads import SERVING, ReloadWaitError, answer, requested
    from prefork.state import MASTER_FILE, read_json

    pid, state_dir = find_master(args)
    timeout = RELOAD_WAIT_TIMEOUT if args.timeout is None else args.timeout
    try:
        before = requested(read_json(state_dir / MASTER_FILE))  # read before the HUP: see prefork.reloads
    except ReloadWaitError as exc:
        raise CommandError(f"cannot wait for the reload: {exc}", EXIT_FAILURE) from None
    signal_master(args, signal.SIGHUP, pid)
    deadline = time.monotonic() + timeout
    while (record := answer(read_json(state_dir / MASTER_FILE), before)) is None:
        if not _alive(pid):
            raise CommandError(f"master {pid} exited before the reload was over", EXIT_FAILURE)
        if time.monotonic() > deadline:
            print(f"prefork: master {pid} is still reloading after {timeout:g}s", file=sys.stderr)
            return EXIT_TIMEOUT
        time.sleep(0.1)
    if record["outcome"] == SERVING:
        print(f"prefork: reloaded: generation {record['generation']} serving, the old workers stopping")
        return 0
    print(
        f"prefork: reload {record['outcome']}: {record['reason']} (generation {record['generation']} keeps serving)",
        file=sys.stderr,
    )
    return EXIT_FAILURE


def cmd_upgrade(args: argparse.Namespace) -> int:
    """USR2, then wait: 0 once the new master serves and the old one is gone (the pidfile naming the new
    one), 1 with the reason if the new master failed (the old one serves on), 124 when --timeout runs out."""
    from prefork import pidfile
    from prefork.state import MASTER_FILE, read_json
    from prefork.upgrade import FAILED, answer, answered, running

    pid, state_dir = find_master(args)
    master = read_json(state_dir / MASTER_FILE)
    if master is not None and "upgrade" not in master:  # USR2 would kill it: its default action
        raise CommandError("the master keeps no upgrade record (a prefork older than this command?)", EXIT_FAILURE)
    before = answered(master)  # the next attempt to finish answers this USR2
    signal_master(args, signal.SIGUSR2, pid)
    path = _pidfile_of(args, live=False) if args.pid is None else None  # the new master writes PIDFILE
    deadline = time.monotonic() + args.timeout
    new_pid = None
    while True:
        master = read_json(state_dir / MASTER_FILE)  # None once the old master is gone
        record = answer(master, before)
        if record is not None and record["outcome"] == FAILED:
            print(f"prefork: upgrade failed: {record['reason']} (master {pid} keeps serving)", file=sys.stderr)
            return EXIT_FAILURE
        # The new master's pid, seen while it boots (the old master may be gone before its last words are read).
        new_pid = (record or {}).get("new_pid") or (master or {}).get("upgrade", {}).get("running") or new_pid
        if not running(pid):
            if new_pid is None or not running(new_pid):
                raise CommandError(f"master {pid} exited before a new master served", EXIT_FAILURE)
            if path is None or (pidfile.read_pid(path) == new_pid and pidfile.is_locked(path)):
                print(f"prefork: upgraded: master {new_pid} serving, the old master {pid} gone")
                return 0
        if time.monotonic() > deadline:
            if record is not None:
                doing = f"new master {new_pid} serves, the old one stopping"
            else:
                doing = f"new master {new_pid} booting" if new_pid else "no new master started yet"
            print(f"prefork: upgrade not over after {args.timeout:g}s ({doing})", file=sys.stderr)
            return EXIT_TIMEOUT
        time.sleep(0.1)


def cmd_stop(args: argparse.Namespace) -> int:
    pid = signal_master(args, signal.SIGTERM)
    if args.no_wait:
        return 0
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    while _alive(pid):
        if deadline is not None and time.monotonic() > deadline:
            print(f"prefork: master {pid} is still stopping after {args.timeout:g}s", file=sys.stderr)
            return EXIT_FAILURE
        time.sleep(0.1)
    print(f"prefork: master {pid} stopped")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from prefork.status import collect, render_table

    report = collect(*find_master(args))
    if args.json:
        import json

        print(json.dumps(report, indent=2))
    else:
        print(render_table(report))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from prefork.checks import check

    return check(load_from_args(args), args.extra)


def cmd_initdb(args: argparse.Namespace) -> int:
    from prefork.checks import initdb

    return initdb(load_from_args(args), args.extra)


def cmd_config(args: argparse.Namespace) -> int:
    """Every key with its value (the DSN's password as ***) and its source, the app's sections included."""
    from prefork.config.appload import AppLoadError
    from prefork.config.appsections import load_settled
    from prefork.config.section import Section

    cfg = load_from_args(args)
    sections: tuple[type[Section], ...] = ()
    try:
        _, cfg, sections = load_settled(cfg, args.extra)
    except AppLoadError as exc:
        if args.extra or cfg.app_values:
            raise CommandError(f"cannot check the app's settings: {exc}") from None
        print(f"prefork: warning: the app's own settings are not shown: {exc}", file=sys.stderr)
    values = cfg.as_dict(sections)
    sources = cfg.sources(sections)
    kinds: tuple[type[Section], ...] = (*FRAMEWORK, *sections)
    rows = [(s.name, values[s.section][s.key], sources[s.name]) for k in kinds for s in k.settings()]
    if args.json:
        print(json.dumps({name: {"value": value, "source": source} for name, value, source in rows}, indent=1))
        return 0
    shown = [(name, _config_text(value), source) for name, value, source in rows]
    width = max(len(name) + len(text) for name, text, _ in shown) + 3
    for name, text, source in shown:
        print(f"{f'{name} = {text}':<{width}}  # {source}")
    return 0


def _config_text(value: object) -> str:
    """A value as it would be written in the config file."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmd_send(args: argparse.Namespace) -> int:
    """Stream the files' lines to the server; exit 0 only when every line got OK."""
    from prefork.sender import send_files

    return send_files(
        args.files or ["-"],
        args.to,
        window=args.window,
        errors_path=args.errors,
        ids=args.ids,
        id_prefix=args.id_prefix,
        tls=args.tls or None,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        server_name=args.tls_server_name,
    )


COMMANDS = {
    "run": cmd_run,
    "reload": cmd_reload,
    "upgrade": cmd_upgrade,
    "stop": cmd_stop,
    "status": cmd_status,
    "check": cmd_check,
    "initdb": cmd_initdb,
    "config": cmd_config,
    "send": cmd_send,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``prefork`` console script."""
    argv, extra = split_app_flags(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.extra = extra
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"prefork: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        print(f"prefork: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:  # Ctrl-C before a master handles signals (say, in the app probe), or in send
        print("prefork: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
