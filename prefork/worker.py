"""The worker process: everything that happens after the fork.

Importing this module monkey-patches with gevent, so only a forked child imports it (the master never
loads gevent, so nothing was created unpatched that matters). ``run_worker`` never returns: it imports
and sets up the application (the master never imports it, so each generation runs the code on disk),
serves every listener with a gevent StreamServer limited to ``worker_connections`` clients (and paused
while it holds more than its share of the clients: ``AcceptGate``), and reports to the master through
its heartbeat file every second (``prefork.state``). Signals from the master:
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
import functools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from typing import Any, NoReturn  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402
from gevent.pool import Pool  # noqa: E402
from gevent.server import StreamServer  # noqa: E402
from gevent.socket import socket as green_socket  # noqa: E402

from prefork import logs  # noqa: E402
from prefork.config.appload import AppLoadError, import_app  # noqa: E402
from prefork.config.errors import ConfigError  # noqa: E402
from prefork.exits import EXIT_BOOT, EXIT_FAILURE, EXIT_OK  # noqa: E402
from prefork.handoff import HANDOFF_TIMEOUT_S, adopt, channel_name  # noqa: E402
from prefork.interface import (  # noqa: E402
    WorkerInfo,
    accepts_line_ids,
    close_of,
    line_ids_refused,
    readiness_of,
    setup_of,
    stats_of,
)
from prefork.privileges import drop as drop_privileges  # noqa: E402
from prefork.privileges import file_owner  # noqa: E402
from prefork.proctitle import set_title  # noqa: E402
from prefork.protocol.allow import EVERYONE  # noqa: E402
from prefork.protocol.connection import LineConnection, ProtocolSettings  # noqa: E402
from prefork.protocol.counters import Counters  # noqa: E402
from prefork.protocol.door import REFUSED_PER_WAKE, Door, door_for  # noqa: E402
from prefork.protocol.framers import acks  # noqa: E402
from prefork.protocol.proxy import client_address  # noqa: E402
from prefork.protocol.replies import StopReading  # noqa: E402
from prefork.protocol.tlsaccept import TlsListener  # noqa: E402
from prefork.signals import reset_master_handlers  # noqa: E402
from prefork.state import beat, iso  # noqa: E402
from prefork.workerspec import WorkerSpec  # noqa: E402

HEARTBEAT_INTERVAL = 1.0
MAX_APP_STATS_BYTES = 64 << 10  # of an app's stats() as JSON, well within what the master reads of a state
MAX_NOT_READY = 300  # characters of the app's reason for not being ready: /readyz answers it on one line

# Accept balancing (AcceptGate below; the shared counts are prefork.state.AcceptTable).
# Clients a worker may hold above the least loaded accepting worker before it pauses: 2, or 1/16 of that
# worker's clients when more. The share keeps the spread within about 6% at any scale while sparing the
# pauses of a large burst (two workers taking 5,000 clients leapfrog in steps of the slack: with 2 alone,
# some 850 pauses made accepting them take 1.7x as long; with the share, 90 pauses and no measurable cost).
ACCEPT_SLACK = 2
ACCEPT_SLACK_PART = 16
ACCEPT_STAMP_S = 0.25  # how often an accepting worker stamps its slot
ACCEPT_STALE_NS = 1_000_000_000  # a worker not stamped for 1 s has a blocked loop: the others stop waiting for it
# How long a worker ahead of the others leaves the backlog to them before it looks again: 0.2 ms after an
# accept, doubling while it stays ahead, up to 5 ms. Short, because two workers leapfrog each other through a
# burst and each one's pause may hold up the other's turn (100 clients at once: 1 ms pauses added 10-15 ms);
# growing, because a worker kept ahead (the others busy, or one with a blocked loop not yet left out) would
# otherwise wake thousands of times a second.
ACCEPT_PAUSE_S = (0.0002, 0.005)
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
    """One gevent worker: app, servers, heartbeat, stop."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.cfg = spec.config
        self.pid = os.getpid()
        self.started_at = time.time()
        self.app: Any = None
        self.servers: list[Any] = []
        self.gate = AcceptGate(spec.accept_table, spec.accept_slot, self.cfg.server.worker_connections)
        self.connections: set[Any] = set()
        self.tls: list[TlsListener | None] = []  # each listener's TLS context (server.tls_cert), None: plaintext
        # Greenlets of connections still reading their PROXY header (server.proxy_protocol) or in their TLS
        # handshake: not clients yet, so not in `connections`, but a graceful stop must end them too.
        self.handshakes: set[gevent.Greenlet] = set()
        self.draining = False  # a graceful stop began: a connection that becomes a client now is stopped at once
        self.read_until = 0.0  # once draining: the event loop's time at which every connection stops reading
        self.handoff_to: str | None = None  # a reload's stop: the new generation's channel (prefork.handoff)
        self.adopter: Any = None  # the server adopting connections handed off by the previous generation
        self.pool: Any = None
        self.ready = False
        self.loop_lag_ms = 0.0
        self.max_requests = 0
        self._early_stop: str | None = None  # "graceful" or "quick": a stop signal that came during boot
        self._bad_stats_logged = False
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
        self._start_servers()
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

    def _start_servers(self) -> None:
        # One connection pool across all listeners: worker_connections is per worker. When it is full
        # the servers stop accepting and further clients wait in the listen backlog.
        pool = self.pool = Pool(self.cfg.server.worker_connections)
        modes = self.spec.proxy_modes or ["off"] * len(self.spec.listeners)
        allows = self.spec.allow_from or [EVERYONE] * len(self.spec.listeners)
        tls = self.tls or [None] * len(self.spec.listeners)
        listening = zip(self.spec.listeners, modes, self.settings, allows, tls, strict=True)
        for sock, mode, settings, allow, tls_listener in listening:
            listener = green_socket(sock.family, sock.type, sock.proto, fileno=sock.detach())
            balancers = None if mode == "off" else self.cfg.server.proxy_allow_from
            door = door_for(listener, allow, balancers, self.counters)
            if mode == "off" and tls_listener is None:
                handle = functools.partial(self._handle, settings)
            else:
                handle = functools.partial(self._handle_proxied, mode, tls_listener, settings, door=door)
            server = GatedStreamServer(listener, handle, spawn=pool)
            server.gate = self.gate
            server.door = door
            server.start()
            self.servers.append(server)
            self.gate.servers.append(server)
        channel = self.spec.handoff_channel
        if channel is not None:
            listener = green_socket(channel.family, channel.type, channel.proto, fileno=channel.detach())
            self.adopter = StreamServer(listener, self._adopt)
            self.adopter.start()
        self.gate.open()

    # -- serving ------------------------------------------------------------------------------------

    def _handle_proxied(
        self,
        mode: str,
        tls: TlsListener | None,
        settings: ProtocolSettings,
        sock: Any,
        addr: Any,
        door: Door | None = None,
    ) -> None:
        # A balancer's header first (server.proxy_protocol): the client it names is the one served. The wait
        # for it (up to HEADER_TIMEOUT, or that long to tell a direct client) is cut short by a graceful stop.
        # Then, on a TLS listener, the handshake (HAProxy in TCP mode passes TLS through after its header),
        # with its deadline, cut short by a graceful stop too.
        me = gevent.getcurrent()
        self.handshakes.add(me)
        try:
            client = None if self.draining else client_address(sock, addr, mode, self.cfg.server.proxy_allow_from)
            if client is not None and door is not None and not door.after_header(sock, addr, client):
                client = None  # outside server.allow_from: closed, counted, logged (before any TLS is spent on it)
            if client is not None and tls is not None:
                peer = "unix" if sock.family == socket.AF_UNIX else str(client[0])
                tls_sock = tls.accept(sock, peer, self.counters)
                if tls_sock is None:
                    client = None
                else:
                    sock = tls_sock
        except StopReading:
            client = None  # thrown by _graceful_stop: no line was read, the peer sees a close
        finally:
            self.handshakes.discard(me)
        if client is None:
            sock.close()
            self.gate.released()
            return
        self._handle(settings, sock, client)

    def _adopt(self, channel: Any, _addr: Any) -> None:
        """A connection handed off by a worker of the previous generation at a reload (prefork.handoff):
        served as if accepted here, its carried bytes first."""
        channel.settimeout(HANDOFF_TIMEOUT_S)
        try:
            adopted = adopt(channel)
        finally:
            channel.close()
        if adopted is None:
            return
        fd, addr, carried, state = adopted
        sock = green_socket(fileno=fd)
        self.counters.handoffs["in"] += 1
        self.gate.accepted()
        self.pool.spawn(self._handle, self._settings_of(sock), sock, addr, carried, state)

    def _settings_of(self, sock: Any) -> ProtocolSettings:
        """The settings of the listener an adopted connection came in on: the one whose address is its local
        address (a wildcard bind matches by port), the first listener's if none does."""
        local = sock.getsockname()
        for server, settings in zip(self.servers, self.settings, strict=False):
            bound = server.socket.getsockname()
            if bound == local:
                return settings
            if isinstance(bound, tuple) and isinstance(local, tuple) and bound[1] == local[1]:
                if bound[0] in ("0.0.0.0", "::"):
                    return settings
        return self.settings[0]

    def _handle(
        self, settings: ProtocolSettings, sock: Any, addr: Any, carried: bytes = b"", state: dict | None = None
    ) -> None:
        try:
            conn = LineConnection(sock, addr, self.app, settings, self.counters)
            self.connections.add(conn)
            if self.draining:
                # A client the stop did not see (its header came, or its greenlet ran, after the stop went
                # through `connections`): stopped as those were, once its reader waits.
                gevent.spawn(conn.stop, self.read_until, self.handoff_to)
            try:
                conn.serve(carried, state)
            finally:
                self.connections.discard(conn)
        finally:
            self.gate.released()

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
            "app": self._app_stats(),
            "not_ready": self._app_not_ready(),
        }
        beat(self.spec.heartbeat_fd, state)

    def _app_stats(self) -> Any:
        """The app's stats() as JSON-ready data, or None when it has none or they cannot be reported.

        Whatever the shape, the heartbeat goes out (a missed one would get this worker killed as hung):
        stats that strict JSON cannot hold, or that are too large for the master to read, are left out
        and said so once. How status and /metrics use them is theirs to decide (prefork.status)."""
        stats = stats_of(self.app)
        if stats is None:
            return None
        try:
            value = stats()
            size = len(json.dumps(value, separators=(",", ":"), allow_nan=False))
        except Exception as exc:  # the app's own bug, or data JSON cannot hold
            self._bad_stats(f"{type(exc).__name__}: {exc}")
            return None
        if size > MAX_APP_STATS_BYTES:
            self._bad_stats(f"{size} bytes of JSON, more than {MAX_APP_STATS_BYTES}")
            return None
        return value

    def _app_not_ready(self) -> str | None:
        """Why the app says it cannot serve now (its optional ``readiness()``), or None: the master's
        /readyz answers 503 with it. A hook that raises counts as not ready, saying so."""
        readiness = readiness_of(self.app)
        if readiness is None or not self.ready:
            return None
        try:
            reason = readiness()
        except Exception as exc:  # the app's own bug: not ready, and the heartbeat still goes out
            reason = f"the app's readiness() failed: {type(exc).__name__}: {exc}"
        return " ".join(str(reason).split())[:MAX_NOT_READY] if reason else None

    def _bad_stats(self, why: str) -> None:
        if not self._bad_stats_logged:
            log.warning("the app's stats() cannot be reported (%s); reporting without them", why)
            self._bad_stats_logged = True

    # -- stopping -----------------------------------------------------------------------------------

    def _serve_backlog(self, server: StreamServer) -> None:
        """Accept what the listen backlog holds (connections the kernel completed that no worker accepted
        yet), waiting for room as clients leave, then close the listener in this process. The last close of
        a listener resets the connections still queued on it: accepted, they are served through the stop
        like the others. Bounded by the stop's reading time."""
        server.stop_accepting()
        clock = gevent.get_hub().loop
        try:
            while (left := self.read_until - clock.now()) > 0:
                if server.pool is not None and not server.pool.wait_available(timeout=left):
                    break
                try:
                    accepted = server.do_read()
                except OSError:
                    break
                if not accepted:
                    if server.refused_only:
                        continue  # refused ones (server.allow_from) were all it took: look again
                    break  # the backlog is empty
                server.do_handle(*accepted)
        finally:
            server.close()

    def _on_term(self) -> None:
        self._stop_event.set()

    def _on_quick(self) -> None:
        self._quick = True
        self._stop_event.set()

    def _graceful_stop(self) -> None:
        """Stop accepting, stop reading, answer every line already read, close clients, close the app."""
        graceful = self.cfg.server.graceful_timeout
        deadline = time.monotonic() + graceful
        self.gate.close()  # first: the other workers stop comparing themselves with this one
        self.read_until = gevent.get_hub().loop.now() + graceful * STOP_READ_SHARE
        if self.adopter is not None:
            self.adopter.close()  # this generation takes no more connections from the one before
        serving = self.spec.handoff_board.get() if self.spec.handoff_board is not None else 0
        if serving != 0 and (serving != self.spec.generation or self.spec.handoff_channel is not None):
            # The server goes on (a reload, or this worker alone stops: max_requests, TTOU): the listeners
            # stay open for the workers that go on, and the connections move to them (the serving
            # generation's; this worker no longer adopts).
            self.handoff_to = channel_name(self.spec.master_pid, serving)
        final = serving == 0
        if not final:
            # The listeners stay open in the master for the workers that go on: what waits in the backlog
            # is theirs.
            for server in self.servers:
                server.close()  # stops accepting; the listening socket closes in this process only
        self.draining = True
        for conn in list(self.connections):
            conn.stop(self.read_until, self.handoff_to)
        for handshake in list(self.handshakes):
            handshake.kill(StopReading, block=False)
        if final:  # the last close of a listener resets what its backlog holds: serve that first
            backlogs = [gevent.spawn(self._serve_backlog, server) for server in self.servers]
            gevent.joinall(backlogs, timeout=max(0.0, deadline - time.monotonic()))
        pools = {server.pool for server in self.servers}
        for pool in pools:
            pool.join(timeout=max(0.0, deadline - time.monotonic()))
        self._write_state()
        close = close_of(self.app)
        if close is not None:
            try:
                close(max(0.0, deadline - time.monotonic()))
            except Exception:
                log.exception("app close failed")
        gevent.sleep(0)


class AcceptGate:
    """Keeps this worker from holding more than its share of the clients.

    All workers accept on the same listeners, and whichever wakes first takes what the backlog holds:
    without this, one of 2 workers took all of 100 clients connecting at once, and with clients that stay
    connected for hours the other worker stayed idle. So before each accept the worker compares its clients
    with the fewest held by any accepting worker with room (prefork.state.AcceptTable). More than the slack
    above it (ACCEPT_SLACK, or 1/ACCEPT_SLACK_PART of those fewest), it leaves the connection in the
    kernel's backlog for a worker with fewer clients: it stops accepting for a moment (ACCEPT_PAUSE_S, or
    until one of its own clients leaves), then waits for the listeners again and looks again if a connection
    is still waiting. So a worker that is ahead looks again only while the others have connections to take,
    and sleeps otherwise. The least loaded worker never pauses, so some worker always accepts; a worker
    whose loop is blocked stops stamping its slot and is left out within ACCEPT_STALE_NS. Counts change only
    at accept and close: nothing is done per line.
    """

    def __init__(self, table: Any, slot: int | None, capacity: int):
        self.table = table if slot is not None else None  # no slot (table full): accept as gevent does
        self.slot = slot
        self.capacity = capacity
        self.servers: list[Any] = []
        self.clients = 0
        self._pause: Any = None  # the timer of a pause
        self._pause_s = ACCEPT_PAUSE_S[0]  # the length of the next one
        self._stamper: Any = None

    def open(self) -> None:
        """This worker accepts from now on."""
        if self.table is None:
            return
        self.table.open(self.slot, os.getpid(), self.capacity)
        self._stamper = gevent.get_hub().loop.timer(ACCEPT_STAMP_S, ACCEPT_STAMP_S, ref=False)
        self._stamper.start(self.table.stamp, self.slot)

    def close(self) -> None:
        """This worker stops accepting (graceful stop)."""
        if self.table is None:
            return
        self.table.close(self.slot)
        for timer in (self._stamper, self._pause):
            if timer is not None:
                timer.stop()
                timer.close()
        self._stamper = self._pause = None
        self.table = None

    def admit(self) -> bool:
        """Whether to accept one more connection now; if not, pause accepting for a moment."""
        if self.table is None or not self._ahead():
            return True
        for server in self.servers:
            server.stop_accepting()
        if self._pause is None:  # else paused already (gevent restarted a server as a client left)
            self._pause = gevent.get_hub().loop.timer(self._pause_s, ref=False)
            self._pause.start(self._resume)
            self._pause_s = min(self._pause_s * 2, ACCEPT_PAUSE_S[1])
        return False

    def accepted(self) -> None:
        self._pause_s = ACCEPT_PAUSE_S[0]
        self.clients += 1
        if self.table is not None:
            self.table.set_clients(self.slot, self.clients)

    def released(self) -> None:
        self.clients -= 1
        if self.table is not None:
            self.table.set_clients(self.slot, self.clients)
            if self._pause is not None and not self._ahead():
                # No longer ahead: accept again now. Waiting out the pause could leave nobody accepting
                # (the others may have paused meanwhile, ahead of this worker's new count).
                self._pause.stop()
                self._resume()

    def _ahead(self) -> bool:
        assert self.table is not None and self.slot is not None  # only asked of a worker with a slot
        fewest = self.table.fewest_clients(self.slot, ACCEPT_STALE_NS)
        return self.clients > fewest + max(ACCEPT_SLACK, fewest // ACCEPT_SLACK_PART)

    def _resume(self) -> None:
        self._pause.close()
        self._pause = None
        for server in self.servers:
            if server.started:
                server.start_accepting()


class GatedStreamServer(StreamServer):
    """A StreamServer that asks its worker's AcceptGate before each accept, and closes at once a peer its
    Door refuses (server.allow_from): no greenlet, no client slot, no count in the gate."""

    gate: AcceptGate
    door: Door | None = None
    refused_only = False  # the last do_read refused REFUSED_PER_WAKE connections and accepted none: more may wait

    def do_read(self) -> Any:
        # Called by gevent's accept loop (up to max_accept times per wake-up); None ends the loop.
        self.refused_only = False
        for _ in range(REFUSED_PER_WAKE):
            if not self.gate.admit():
                return None
            accepted = super().do_read()
            if not accepted:
                return accepted
            if self.door is None or self.door.at_accept(*accepted):
                self.gate.accepted()
                return accepted
        self.refused_only = True  # the loop's other watchers get their turn, then accepting goes on
        return None


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
