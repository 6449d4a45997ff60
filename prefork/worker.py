"""The worker process: everything that happens after the fork.

Importing this module monkey-patches with gevent, so only a forked child imports it (the master never
loads gevent, so nothing was created unpatched that matters). ``run_worker`` never returns: it imports
and sets up the application (the master never imports it, so each generation runs the code on disk),
takes connections through ``prefork.accepting`` (the listeners, limited to ``worker_connections``
clients and balanced over the workers, and the connections handed over at a reload), serves each client
(``prefork.protocol.connection``), and reports to the master through its heartbeat file every second
(``prefork.state``; the app's stats and readiness: ``prefork.appreport``). Signals from the master:
TERM = graceful stop (at a reload, when ``prefork.handoff``'s board names a newer generation, the
connections move to it open; at the final stop the listen backlog is served first), INT/QUIT = quick
stop, USR1 = reopen logs, ABRT = dump stacks (then killed).

Exit codes: 0 after a stop, ``EXIT_BOOT`` when the app cannot be imported or set up (the master
counts these to stop a fork loop), 1 on any other failure.
"""

from __future__ import annotations

# This module is imported only in a freshly forked worker (prefork.workerspec is what the master uses):
# patch first, as any gevent program does, before anything else touches sockets, threads or time.
from gevent import monkey

monkey.patch_all()

import faulthandler  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
from typing import Any, NoReturn  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

from prefork import logs  # noqa: E402
from prefork.accepting import Acceptor  # noqa: E402
from prefork.appreport import AppReport  # noqa: E402
from prefork.config.appload import AppLoadError, import_app  # noqa: E402
from prefork.config.errors import ConfigError  # noqa: E402
from prefork.exits import EXIT_BOOT, EXIT_FAILURE, EXIT_OK  # noqa: E402
from prefork.handoff import channel_name  # noqa: E402
from prefork.interface import (  # noqa: E402
    WorkerInfo,
    accepts_line_ids,
    close_of,
    line_ids_refused,
    setup_of,
)
from prefork.privileges import drop as drop_privileges  # noqa: E402
from prefork.privileges import file_owner  # noqa: E402
from prefork.proctitle import set_title  # noqa: E402
from prefork.protocol.connection import LineConnection, ProtocolSettings  # noqa: E402
from prefork.protocol.counters import Counters  # noqa: E402
from prefork.protocol.framers import acks  # noqa: E402
from prefork.protocol.tlsaccept import TlsListener  # noqa: E402
from prefork.signals import reset_master_handlers  # noqa: E402
from prefork.state import beat, iso  # noqa: E402
from prefork.workerspec import WorkerSpec  # noqa: E402

HEARTBEAT_INTERVAL = 1.0

# At a graceful stop, connections read on for this share of graceful_timeout at most: the rest is left to
# answer what they read and to close the app before the master's kill at graceful_timeout.
STOP_READ_SHARE = 0.8

log = logging.getLogger("prefork.worker")


def run_worker(spec: WorkerSpec) -> NoReturn:
    """Run a worker in the freshly forked child and exit the process with its exit code."""
    code = EXIT_FAILURE
    try:
        code = Worker(spec).run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_FAILURE
    except BaseException:
        log.exception("worker crashed")
    finally:
        logs.flush()
        os._exit(code)


class Worker:
    """One gevent worker: app, clients, heartbeat, stop."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.cfg = spec.config
        self.pid = os.getpid()
        self.started_at = time.time()
        self.app: Any = None
        self.accepting: Acceptor  # set at boot: the listeners and the handoff channel (prefork.accepting)
        self.connections: set[Any] = set()
        self.tls: list[TlsListener | None] = []  # each listener's TLS context (server.tls_cert), None: plaintext
        self.read_until = 0.0  # once stopping: the event loop's time at which every connection stops reading
        self.handoff_to: str | None = None  # a reload's stop: the new generation's channel (prefork.handoff)
        self.ready = False
        self.loop_lag_ms = 0.0
        self.max_requests = 0
        self._early_stop: str | None = None  # "graceful" or "quick": a stop signal that came during boot
        self.report = AppReport()  # the app's stats and readiness in the heartbeat state
        if self.cfg.server.max_requests:
            self.max_requests = self.cfg.server.max_requests + random.randint(0, self.cfg.server.max_requests_jitter)

    def run(self) -> int:
        """Boot, serve until told to stop, stop; return the exit code."""
        try:
            booted = self._boot()
        except Exception:
            # Anything failing before the worker serves is a boot failure: the master counts these to
            # stop instead of forking in a loop.
            log.exception("worker failed to boot")
            booted = False
        if not booted:
            return EXIT_BOOT
        self.ready = True
        self._write_state()
        if self.cfg.server.daemon:
            _release_stderr()
        heartbeat = gevent.spawn(self._heartbeat)
        if self._early_stop is not None:  # told to stop while booting
            self._quick = self._early_stop == "quick"
            self._stop_event.set()
        self._stop_event.wait()
        if self._quick:
            return EXIT_OK
        # The heartbeat goes on while stopping: the state says "stopping", so the master gives this worker
        # its graceful_timeout instead of taking it for hung after `timeout`.
        self._graceful_stop()
        heartbeat.kill()
        return EXIT_OK

    def _boot(self) -> bool:
        """Set up the process and the app, start serving; False if the app cannot be imported or set up."""
        self._prepare_process()
        self._stop_event = Event()
        self._quick = False
        self.counters = Counters()
        count = len(self.spec.listeners)
        framings = self.spec.framings or ["lines"] * count
        ack_modes = self.spec.acks or ["auto"] * count
        # Per listener (server.framing and server.ack may differ by server.bind address).
        self.settings = [
            ProtocolSettings(
                max_line=self.cfg.server.max_line,
                client_timeout=self.cfg.server.client_timeout,
                ack=acks(framing, ack),
                line_ids=self.cfg.server.line_ids,
                framing=framing,
            )
            for framing, ack in zip(framings, ack_modes, strict=True)
        ]
        if not self._boot_app():
            return False
        self.accepting = Acceptor(self.spec, self.settings, self.tls, self.counters, self._serve)
        self.accepting.start()
        for signum, handler in (
            (signal.SIGTERM, self._on_term),
            (signal.SIGINT, self._on_quick),
            (signal.SIGQUIT, self._on_quick),
            (signal.SIGUSR1, _reopen_logs),
        ):
            gevent.signal_handler(signum, handler)
        return True

    # -- boot ---------------------------------------------------------------------------------------

    def _prepare_process(self) -> None:
        # The master's handlers and its self-pipe are not ours.
        for fd in self.spec.close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        reset_master_handlers()
        # Until gevent's handlers take over at the end of the boot: a stop is remembered for then, USR1
        # reopens the logs, and no signal the master sends kills a booting worker by its default action
        # (a logrotate's USR1 during a reload would otherwise kill the new generation).
        signal.signal(signal.SIGTERM, lambda *_: self._remember_stop("graceful"))
        signal.signal(signal.SIGINT, lambda *_: self._remember_stop("quick"))
        signal.signal(signal.SIGQUIT, lambda *_: self._remember_stop("quick"))
        signal.signal(signal.SIGUSR1, _reopen_logs)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signal.valid_signals())  # blocked by the master at fork
        # This generation's logging settings (a reload may have changed them; the master switches its own
        # only once the new generation serves). Opened before dropping privileges, as the master's were.
        server = self.cfg.server
        logs.setup(
            server.log_level, server.log_file, server.log_format, self.spec.generation, file_owner(self.spec.identity)
        )
        _dump_stacks_on_abort()
        # Certificates and keys are read now, before dropping privileges: a root-only key works, as in nginx.
        timeout = server.tls_handshake_timeout
        self.tls = [TlsListener(t, timeout) if t is not None else None for t in self.spec.tls]
        drop_privileges(self.spec.identity)  # server.user/group, before any of the app's code runs
        set_title(f"prefork: worker [{self.cfg.server.name}] gen {self.spec.generation}")

    def _remember_stop(self, how: str) -> None:
        if self._early_stop != "quick":
            self._early_stop = how

    def _boot_app(self) -> bool:
        # The app is imported from server.chdir, by default where prefork was started as $PWD names it: a
        # symlinked release directory (current -> v2) is entered afresh by each new generation, as gunicorn
        # does. server.pythonpath comes first.
        try:
            self.app = import_app(self.cfg.server.app, self.spec.app_dir or os.getcwd(), self.cfg.server.pythonpath)
            if self.cfg.server.line_ids and not accepts_line_ids(self.app):
                # Serving it would hand ids to an app that ignores them: resends stored twice, silently.
                log.error("worker failed to boot: %s", line_ids_refused(self.cfg.server.app))
                return False
            setup = setup_of(self.app)
            if setup is not None:
                setup(WorkerInfo(pid=self.pid, generation=self.spec.generation, config=self.cfg))
        except (AppLoadError, ConfigError) as exc:
            log.error("worker failed to boot: %s", exc)
            return False
        except SystemExit as exc:
            # sys.exit("message") in the app's setup (its import is import_app's): say what it said.
            log.error("worker failed to boot: %s exited: %s", self.cfg.server.app, exc.code)
            return False
        except Exception:
            log.exception("worker failed to boot: %s setup failed", self.cfg.server.app)
            return False
        return True

    # -- serving ------------------------------------------------------------------------------------

    def _serve(self, settings: ProtocolSettings, sock: Any, addr: Any, carried: bytes, state: dict | None) -> None:
        """Serve one client (``Acceptor`` took it) until it is done."""
        conn = LineConnection(sock, addr, self.app, settings, self.counters)
        self.connections.add(conn)
        if self.accepting.draining:
            # A client the stop did not see (its header came, or its greenlet ran, after the stop went
            # through `connections`): stopped as those were, once its reader waits.
            gevent.spawn(conn.stop, self.read_until, self.handoff_to)
        try:
            conn.serve(carried, state)
        finally:
            self.connections.discard(conn)

    def _heartbeat(self) -> None:
        while True:
            before = time.monotonic()
            gevent.sleep(HEARTBEAT_INTERVAL)
            self.loop_lag_ms = max(0.0, (time.monotonic() - before - HEARTBEAT_INTERVAL) * 1000)
            self._write_state()
            if self._stop_event.is_set():
                continue
            if os.getppid() != self.spec.master_pid:
                log.warning("master %s is gone; stopping", self.spec.master_pid)
                self._on_term()
            elif self.max_requests and self.counters.lines_in >= self.max_requests:
                log.info("worker reached max_requests (%d lines); restarting", self.max_requests)
                self._on_term()

    def _write_state(self) -> None:
        c = self.counters
        now = time.time()
        state = {
            "pid": self.pid,
            "generation": self.spec.generation,
            "started_at": iso(self.started_at),
            "started_ts": self.started_at,
            "age_s": round(now - self.started_at, 3),
            "ready": self.ready,
            "stopping": self._stop_event.is_set(),
            "clients": c.clients,
            "lines_in": c.lines_in,
            "ok": c.ok,
            "err": c.err,
            "err_by_reason": c.err_by_reason,
            "unread_clients": c.unread_clients,
            "handoffs": c.handoffs,
            "refused": c.refused,
            "tls": c.tls,
            "rss_bytes": _rss_bytes(),
            "loop_lag_ms": round(self.loop_lag_ms, 3),
            "app": self.report.stats(self.app),
            "not_ready": self.report.not_ready(self.app, self.ready),
        }
        beat(self.spec.heartbeat_fd, state)

    # -- stopping -----------------------------------------------------------------------------------

    def _on_term(self) -> None:
        self._stop_event.set()

    def _on_quick(self) -> None:
        self._quick = True
        self._stop_event.set()

    def _graceful_stop(self) -> None:
        """Stop accepting, stop reading, answer every line already read, close clients, close the app."""
        graceful = self.cfg.server.graceful_timeout
        deadline = time.monotonic() + graceful
        self.read_until = gevent.get_hub().loop.now() + graceful * STOP_READ_SHARE
        serving = self.spec.handoff_board.get() if self.spec.handoff_board is not None else 0
        if serving != 0 and (serving != self.spec.generation or self.spec.handoff_channel is not None):
            # The server goes on (a reload, or this worker alone stops: max_requests, TTOU): the listeners
            # stay open for the workers that go on, and the connections move to them (the serving
            # generation's; this worker no longer adopts).
            self.handoff_to = channel_name(self.spec.master_pid, serving)
        final = serving == 0
        self.accepting.stop(final)
        for conn in list(self.connections):
            conn.stop(self.read_until, self.handoff_to)
        self.accepting.end_handshakes()
        if final:  # the last close of a listener resets what its backlog holds: serve that first
            self.accepting.serve_backlogs(self.read_until, deadline)
        self.accepting.join(deadline)
        self._write_state()
        close = close_of(self.app)
        if close is not None:
            try:
                close(max(0.0, deadline - time.monotonic()))
            except Exception:
                log.exception("app close failed")
        gevent.sleep(0)


def _dump_stacks_on_abort() -> None:
    """On SIGABRT (the master's last word to a worker that missed its heartbeat), and on a crash (SIGSEGV,
    SIGBUS, ...), write every thread's stack to the log before dying: it shows where the event loop was
    blocked. faulthandler does it in C, so it works however the interpreter is stuck."""
    faulthandler.enable(file=logs.stream(), all_threads=True)


def _reopen_logs(*_: object) -> None:
    logs.reopen()
    _dump_stacks_on_abort()  # the log file's descriptor changed


def _release_stderr() -> None:
    """Daemon mode: once booted, stop holding the launching command's stderr, as the master does once
    serving. A caller reading it to EOF (``out=$(prefork run --daemon 2>&1)``, a supervisor's pipe) would
    otherwise wait for this worker to exit. Boot errors, logged before this, still reach the launcher."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    except OSError:
        pass


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
