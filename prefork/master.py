"""The master: binds the listeners, forks the workers and keeps them alive.

Signal handlers only queue the signal and wake the main loop (self-pipe through ``signal.set_wakeup_fd``);
the loop waits for a signal or a scrape, pops the queue and dispatches to a small ``handle_*`` method,
serves /metrics, then reaps (a reaped worker is retired: its last counts join the lasting totals), polls
(heartbeats, readiness, workers stopping by themselves), goes on with a reload (its app probe, then its
generation) and an upgrade, murders (heartbeat timeouts, overdue stops), manages (spawns or stops workers
toward the target), announces readiness once, writes the status file and keeps systemd current.

This module holds the loop, the signal handlers, stopping and the workers' lives (spawn, reap, poll,
murder). The master owns one object per other concern, each in its own module and working on it:

- ``Reloader`` (``prefork.generations``): reloads (HUP), ready-gated: a new generation beside the old
  one, which stops only once the new one serves; a reload that fails keeps the old workers serving.
- ``Upgrader`` (``prefork.master_upgrade``): upgrades (USR2): a new master, re-executed from the installed
  code, inherits the listeners; once its workers serve, this one stops its own gracefully and exits.
- ``Reporter`` (``prefork.master_status``): master.json, /readyz's reason, systemd's status line.

The master never imports the application, gevent or the database driver, and never opens a database
connection: workers import the app after the fork, so a HUP's new generation runs new code.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import select
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefork import logs, pidfile, sockets
from prefork.config.appload import start_directory
from prefork.config.loader import Config
from prefork.exits import EXIT_BOOT, EXIT_FAILURE, EXIT_USAGE, HaltServer
from prefork.generations import Reloader
from prefork.handoff import HandoffBoard, open_channel
from prefork.master_status import Reporter
from prefork.master_upgrade import Upgrader
from prefork.metrics import MetricsServer, carry
from prefork.privileges import Identity, file_owner
from prefork.proctitle import set_title
from prefork.protocol.allow import EVERYONE
from prefork.signals import MASTER_SIGNALS, handler_name
from prefork.state import (
    PIDFILE_STATE_SUFFIX,
    AcceptTable,
    Heartbeat,
    StateDirError,
    prepare_state_dir,
    runtime_dir,
    state_dir_for,
)
from prefork.systemd import Notifier
from prefork.tls import of_config as tls_of_config
from prefork.upgrade import Handover
from prefork.workerspec import WorkerSpec

log = logging.getLogger("prefork.master")

FD_MARGIN = 128  # descriptors a worker needs beside its clients: pool, listeners, logs, state files
BOOT_ATTEMPTS = 3  # quick boot failures at start before the master gives up (never a fork loop)
LOOP_INTERVAL = 0.25  # seconds between two passes of the main loop when no signal arrives
QUICK_STOP_TIMEOUT = 2.0
ABORT_GRACE = 1.0  # seconds a timed-out worker gets to dump its stack after SIGABRT before SIGKILL
MAX_RESPAWN_DELAY = 10.0


@dataclass
class WorkerProc:
    """What the master knows of one worker process."""

    pid: int
    generation: int
    graceful_timeout: float  # of the config it was started with: a reload does not change it
    heartbeat: Heartbeat
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    silent_s: float = 0.0  # since its last heartbeat
    stop_deadline: float | None = None  # set once the worker was told to stop, or stops by itself
    abort_deadline: float | None = None  # sent SIGABRT (stack dump) for a missed heartbeat: SIGKILL then
    stop_reason: str | None = None  # why it was told to stop (or stopped by itself): reload, max_requests, ...
    slot: int | None = None  # its slot in the accept table (client counts that balance accepting)


class Master:
    """Supervise the workers of one server."""

    def __init__(
        self,
        config: Config,
        listeners: dict[str, socket.socket],
        metrics: MetricsServer | None = None,
        identity: Identity | None = None,
        handover: Handover | None = None,
    ):
        """``handover``: set when a USR2 started this master (``prefork.upgrade.take``): the old master
        waits for it to serve."""
        self.cfg = config
        self.listeners = listeners  # configured address -> bound socket
        self.metrics = metrics
        self.identity = identity  # who the workers and the app probe run as (server.user/group), or None
        self.pid = 0  # set by start(): daemon mode forks after the master is built
        self.generation = 1
        self.target = config.server.workers
        self.workers: dict[int, WorkerProc] = {}
        self.sig_queue: list[int] = []
        self.state_dir = Path()
        self._state_dir_ours = False  # created or taken over by this master: removed at exit
        self.started_at = time.time()
        self.booted = False  # some worker has reported ready
        self.boot_failures = 0
        self.quick_deaths = 0
        self.spawn_after = 0.0
        self._pipe: tuple[int, int] | None = None
        self.notify = Notifier()  # systemd, when it started us with Type=notify
        self._scrape_waiting = False
        self.notified_ready = False  # systemd was told READY (or the old master, after an upgrade)
        self._pidfile_fd: int | None = None  # the pidfile, locked while this master runs
        self.pidfile_path = config.server.pidfile  # where it is now: PIDFILE, or PIDFILE.oldbin during an upgrade
        # Each concern in its own module, working on this master: reloads (HUP), upgrades (USR2), reports.
        self.reloader = Reloader(self)
        self.upgrader = Upgrader(self, handover)
        self.reporter = Reporter(self)
        # Figures that outlive workers: the last counts of every retired worker, restarts.
        self.retired: dict[str, Any] = {
            "lines": 0,
            "ok": 0,
            "err_by_reason": {},
            "unread_clients": 0,
            "handoffs": {},
            "refused": {},
            "tls": {},
            "slots": {},  # per accept-table slot (as a string): what its per-slot counters carry (metrics.carry)
        }
        self.restarts: dict[str, int] = {}
        self.on_ready: list[Callable[[], None]] = []  # callbacks run once the first generation is serving (daemon mode)
        self.start_dir = start_directory()
        # Shared with every worker forked from here: each one's clients, so that none holds more than its
        # share of long-lived clients (see AcceptTable). Slots are given at fork and zeroed at reaping.
        self.accept_table = AcceptTable()
        # Reloads move connections, open, from the old generation to the new (prefork.handoff): each
        # generation's channel, opened before its first worker is forked, and the board that tells stopping
        # workers which generation serves now. The master never accepts on a channel.
        self.handoff_board = HandoffBoard()
        self.channels: dict[int, socket.socket] = {}

    # -- setup --------------------------------------------------------------------------------------

    def start(self) -> None:
        """Prepare the process: title, state dir, pidfile, signal handling."""
        self.pid = os.getpid()
        self.state_dir = state_dir_for(self.pid, runtime_dir(self.cfg.server.runtime_dir))
        set_title(f"prefork: master [{self.cfg.server.name}]")
        try:
            prepare_state_dir(self.state_dir)
        except (StateDirError, OSError) as exc:
            raise HaltServer(f"server.runtime_dir: cannot use {self.state_dir}: {exc}", EXIT_USAGE) from None
        self._state_dir_ours = True
        _raise_fd_limit(self.cfg.server.worker_connections + FD_MARGIN)
        if self.upgrader.handover is None:  # a new master started by USR2 writes the pidfile once it serves
            self.write_pidfile()
        self.handoff_board.set(self.generation)
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._pipe = (r, w)
        signal.set_wakeup_fd(w)
        for signum in MASTER_SIGNALS:
            signal.signal(signum, self._queue_signal)
        log.info("Starting prefork master %s (%s)", self.pid, self.cfg.server.name)
        for sock in self.listeners.values():
            log.info("Listening at: %s", sockets.described(sock))
        if self.metrics is not None:
            log.info("Metrics at: http://%s/metrics", self.metrics.address)
        log.info("Using app %s with %d workers", self.cfg.server.app, self.target)

    def write_pidfile(self) -> None:
        """Write and lock server.pidfile (if set), and note beside it where the state lives."""
        path = self.pidfile_path = self.cfg.server.pidfile
        if not path:
            return
        try:
            self._pidfile_fd = pidfile.acquire(path, self.pid)
        except pidfile.PidfileError as exc:
            raise HaltServer(str(exc), EXIT_USAGE) from None
        # Beside the pidfile, where the state lives: `status -c FILE` finds it whatever its environment.
        Path(path + PIDFILE_STATE_SUFFIX).write_text(f"{self.state_dir}\n")

    def _queue_signal(self, signum: int, frame: object) -> None:
        self.sig_queue.append(signum)  # no logging, just queue: the loop acts on it

    # -- main loop ----------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; return the exit status."""
        try:
            self.start()
            self.manage_workers()
            while True:
                self.wait_for_events()
                self.dispatch_signals()
                self.serve_metrics()
                self.reap_workers()
                self.poll_workers()
                self.reloader.check()
                self.upgrader.check()
                self.murder_workers()
                self.manage_workers()
                self.announce_ready()
                self.reporter.write()
                self.reporter.notify_systemd()
        except HaltServer as halt:
            return self.halt(halt.reason, halt.exit_status)
        except Exception:
            log.exception("unhandled error in the master")
            return self.halt("unhandled error", EXIT_FAILURE)

    def wait_for_events(self) -> None:
        """Sleep up to LOOP_INTERVAL, waking early for a signal, a metrics scrape, a probe's report or the
        word of a new master (upgrade)."""
        self._scrape_waiting = False
        if self.sig_queue:
            return
        assert self._pipe is not None  # start() made it
        wakeup = self._pipe[0]
        waiting: list[Any] = [wakeup, *(x for x in (self.metrics, self.reloader.probing) if x is not None)]
        waiting += self.upgrader.waits_on()  # the new master's word: hand over at once
        try:
            readable, _, _ = select.select(waiting, [], [], LOOP_INTERVAL)
        except InterruptedError:
            readable = []
        self._scrape_waiting = self.metrics is not None and self.metrics in readable
        try:
            while os.read(wakeup, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def serve_metrics(self) -> None:
        """Answer a waiting /metrics scrape."""
        if self._scrape_waiting and self.metrics is not None:
            self.metrics.serve_one()

    def dispatch_signals(self) -> None:
        """Handle every queued signal."""
        while self.sig_queue:
            signum = self.sig_queue.pop(0)
            getattr(self, f"handle_{handler_name(signum)}")()

    # -- signal handlers ----------------------------------------------------------------------------

    def handle_chld(self) -> None:
        """Reaping happens on every pass of the loop."""

    def handle_hup(self) -> None:
        """Reload: new config, new generation, then stop the old one (prefork.generations)."""
        self.reloader.hup()

    def handle_term(self) -> None:
        """Graceful stop."""
        raise HaltServer("TERM: graceful stop")

    def handle_int(self) -> None:
        """Quick stop."""
        self.stop(graceful=False)
        raise HaltServer("INT: quick stop")

    def handle_quit(self) -> None:
        """Quick stop."""
        self.stop(graceful=False)
        raise HaltServer("QUIT: quick stop")

    def handle_ttin(self) -> None:
        """One worker more."""
        self.target += 1
        log.info("TTIN: %d workers", self.target)

    def handle_ttou(self) -> None:
        """One worker fewer (never below one)."""
        self.target = max(1, self.target - 1)
        log.info("TTOU: %d workers", self.target)

    def handle_usr1(self) -> None:
        """Reopen log files, here and in every worker."""
        logs.reopen()
        self.signal_workers(signal.SIGUSR1)

    def handle_usr2(self) -> None:
        """Upgrade: start a new master from the installed code on the same listeners (prefork.master_upgrade)."""
        self.upgrader.usr2()

    # -- stopping -----------------------------------------------------------------------------------

    def halt(self, reason: str, exit_status: int) -> int:
        """Stop every worker (gracefully unless already done), clean up, return the exit status."""
        log.info("Shutting down: %s", reason)
        if self.upgrader.stops_service:
            self.notify.stopping()
        self.upgrader.stopping(reason)  # stopped while upgrading: the new master goes too
        self.stop(graceful=True)
        path = self.pidfile_path
        if path and path == self.cfg.server.pidfile and pidfile.read_pid(path) == self.pid:
            _remove(Path(path + PIDFILE_STATE_SUFFIX))  # after an upgrade it is the new master's
        if path:
            pidfile.release(path, self.pid, self._pidfile_fd)
            self._pidfile_fd = None
        if self._state_dir_ours:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        if self.metrics is not None:
            self.metrics.close()
        self.notify.close()
        if exit_status:
            log.error("Exiting with status %d: %s", exit_status, reason)
        logs.flush()
        return exit_status

    def stop(self, graceful: bool = True) -> None:
        """Close the listeners and stop every worker; kill those that outlive the timeout.

        An INT or QUIT that comes during a graceful stop turns it into a quick one.
        """
        self.handoff_board.set(0)  # a final stop: the workers hand off nothing, and serve their backlog
        reloading = self.reloader.abandon()
        # A reload shares the unchanged listeners with the running generation: close each socket once.
        distinct = {id(sock): sock for sock in [*self.listeners.values(), *reloading]}
        for sock in distinct.values():
            sockets.close(sock)
        self.listeners = {}
        timeout = max((w.graceful_timeout for w in self.workers.values()), default=0.0)
        if not graceful:
            timeout = QUICK_STOP_TIMEOUT
        deadline = time.monotonic() + timeout
        for worker in self.workers.values():
            worker.stop_deadline = deadline
            worker.stop_reason = "shutdown"
        self.signal_workers(signal.SIGTERM if graceful else signal.SIGQUIT)
        while self.workers and time.monotonic() < deadline:
            self.reap_workers()
            if graceful and any(sig in (signal.SIGINT, signal.SIGQUIT) for sig in self.sig_queue):
                log.info("quick stop requested during the graceful stop")
                self.sig_queue.clear()
                graceful, timeout = False, QUICK_STOP_TIMEOUT
                deadline = min(deadline, time.monotonic() + QUICK_STOP_TIMEOUT)
                self.signal_workers(signal.SIGQUIT)
            time.sleep(0.05)
        for pid in list(self.workers):
            log.warning("worker %s outlived the %gs stop timeout: killed", pid, timeout)
            self.kill_worker(pid, signal.SIGKILL)
        while self.workers:
            self.reap_workers()
            time.sleep(0.01)

    # -- worker management --------------------------------------------------------------------------

    def manage_workers(self) -> None:
        """Keep `target` workers in the current generation: spawn the missing, stop the extra (oldest first)."""
        current = [w for w in self.workers.values() if w.generation == self.generation and w.stop_deadline is None]
        missing = self.target - len(current)
        if missing > 0 and time.monotonic() >= self.spawn_after:
            for _ in range(missing):
                self.spawn_worker(self.generation, self.cfg, self.listeners)
        elif missing < 0:
            for w in sorted(current, key=lambda w: w.started)[:-missing]:
                self.stop_worker(w, "ttou")

    def announce_ready(self) -> None:
        """Say once that the server serves: when a first worker is ready, log it and run the ``on_ready``
        callbacks (daemon mode: the launcher returns 0); when every worker of the first generation is,
        tell systemd READY=1 (a reload's end tells it again: Reloader.check_generation)."""
        if not self.booted and any(w.ready for w in self.workers.values()):
            self.booted = True
            log.info("Workers are serving")
            for callback in self.on_ready:
                callback()
        if self.notified_ready:
            return
        current = [w for w in self.workers.values() if w.generation == self.generation and w.stop_deadline is None]
        if len(current) >= self.target and all(w.ready for w in current):
            self.notified_ready = True
            if self.upgrader.handover is not None:
                self.upgrader.take_over()
            else:
                self.notify.ready(self.reporter.summary())

    def spawn_worker(self, generation: int, cfg: Config, listeners: dict[str, socket.socket]) -> None:
        """Fork one worker; the child never returns from here."""
        heartbeat = Heartbeat(f"prefork-worker-gen{generation}", file_owner(self.identity))
        channel = self.open_channel(generation)
        close_fds = self._fds_not_for(listeners, generation)
        slot = self.accept_table.claim({w.slot for w in self.workers.values() if w.slot is not None})
        pid = os.fork()
        if pid:
            self.workers[pid] = WorkerProc(pid, generation, cfg.server.graceful_timeout, heartbeat, slot=slot)
            log.info("Booting worker %s (generation %d)", pid, generation)
            return
        # Until the worker has its own handlers, signals wait (blocked) instead of reaching the master's
        # handlers inherited by this child, which would swallow a TERM during the import below.
        signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
        try:
            from prefork.worker import run_worker  # patches with gevent: only ever in a forked child
        except BaseException:
            log.exception("worker failed to boot: cannot load prefork.worker")
            logs.flush()
            os._exit(EXIT_BOOT)
        run_worker(
            WorkerSpec(
                config=cfg,
                listeners=list(listeners.values()),
                proxy_modes=proxy_modes(cfg, listeners),
                framings=per_listener(cfg, listeners, cfg.server.framing, "lines"),
                acks=per_listener(cfg, listeners, cfg.server.ack, "auto"),
                tls=per_listener(cfg, listeners, tls_of_config(cfg), None),
                allow_from=per_listener(cfg, listeners, cfg.server.allow_from, EVERYONE),
                generation=generation,
                heartbeat_fd=heartbeat.fd,
                master_pid=self.pid,
                close_fds=close_fds,
                identity=self.identity,
                app_dir=cfg.server.chdir or self.start_dir,
                accept_table=self.accept_table,
                accept_slot=slot,
                handoff_channel=channel,
                handoff_board=self.handoff_board,
            )
        )

    def open_channel(self, generation: int) -> socket.socket | None:
        """The handoff channel of a generation (prefork.handoff), opened with its first worker; None if it
        cannot be opened: that generation's workers then adopt nothing, and reloads close connections."""
        channel = self.channels.get(generation)
        if channel is None:
            try:
                channel = self.channels[generation] = open_channel(self.pid, generation)
            except OSError as exc:
                log.warning("no connection handoff to generation %d: %s", generation, exc)
        return channel

    def close_channels(self) -> None:
        """Close the handoff channels of every generation but the serving one and a pending reload's."""
        pending = self.reloader.pending
        keep = {self.generation, *([pending.generation] if pending else [])}
        for generation in [g for g in self.channels if g not in keep]:
            self.channels.pop(generation).close()

    def _fds_not_for(self, listeners: dict[str, socket.socket], generation: int) -> list[int]:
        """Descriptors a new worker must close: the master's own, and listeners of the other generation
        (a worker holding a removed listener open would keep it accepting into a backlog nobody serves)
        and its handoff channel (a worker adopts only for its own generation)."""
        fds = [*(self._pipe or ()), *([self.metrics.fileno()] if self.metrics else [])]
        fds += [channel.fileno() for g, channel in self.channels.items() if g != generation]
        fds += [w.heartbeat.fd for w in self.workers.values()]  # each worker writes only its own
        fds += self.notify.filenos()
        if self._pidfile_fd is not None:  # a worker holding the lock would outlive a killed master
            fds.append(self._pidfile_fd)
        fds += self.upgrader.fds()
        probing, pending = self.reloader.probing, self.reloader.pending
        if probing is not None:  # a worker reading the probe's report would leave the master half of it
            fds.append(probing.fileno())
        others = [*self.listeners.values(), *(pending.listeners.values() if pending else [])]
        mine = {id(sock) for sock in listeners.values()}
        fds += {sock.fileno() for sock in others if id(sock) not in mine}
        return fds

    def reap_workers(self) -> None:
        """Collect dead workers; count boot failures; plan respawns with capped backoff."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            probing = self.reloader.probing
            if probing is not None and pid == probing.pid:
                probing.reaped = True  # Reloader.check_probe reads its report; it must not wait for it again
                continue
            if self.upgrader.reaped(pid, status):  # the new master, exited before it served
                continue
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            self.retire(worker, os.waitstatus_to_exitcode(status))
            self.worker_exited(worker, status)

    def retire(self, worker: WorkerProc, code: int) -> None:
        """Take a reaped worker off the books: its last counts join the lasting totals (``retired``), and
        why it went the restart counts. (Stopping a live worker is ``stop_worker``.)"""
        last = worker.heartbeat.read()
        worker.heartbeat.close()
        self.accept_table.release(worker.slot)  # a dead worker's clients no longer hold the others back
        self.retired["lines"] += last.get("lines_in") or 0
        self.retired["ok"] += last.get("ok") or 0
        self.retired["unread_clients"] += last.get("unread_clients") or 0
        by_reason = self.retired["err_by_reason"]
        for reason, n in (last.get("err_by_reason") or {}).items():
            by_reason[reason] = by_reason.get(reason, 0) + n
        for key in ("handoffs", "refused", "tls"):
            kept = self.retired[key]
            for name, n in (last.get(key) or {}).items():
                kept[name] = kept.get(name, 0) + n
        carry(self.retired["slots"], worker.slot, last)
        # Exit 0 unasked: it stopped by itself (max_requests) before the master saw it stopping.
        reason = worker.stop_reason or ("max_requests" if code == 0 else "crash")
        if reason != "shutdown":
            self.restarts[reason] = self.restarts.get(reason, 0) + 1

    def worker_exited(self, worker: WorkerProc, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        if worker.stop_deadline is not None:  # told to stop: never a boot failure nor a crash to respawn for
            if code in (0, -signal.SIGKILL):
                log.info("Worker %s exited", worker.pid)
            else:
                log.warning("Worker %s exited while stopping (%s)", worker.pid, how)
            return
        pending = self.reloader.pending
        if pending is not None and worker.generation == pending.generation:
            log.error("new worker %s died during reload (%s)", worker.pid, how)
            pending.failure = pending.failure or f"new worker {worker.pid} died ({how})"
            return  # Reloader.check_generation abandons the reload
        if not self.booted and (code == EXIT_BOOT or not worker.ready):
            # Any exit before serving at start is a boot failure: sys.exit() in the app's import, a
            # segfault, an import that hung past `timeout`. Counted, so a broken app never fork-loops.
            self.boot_failures += 1
            log.error(
                "worker %s failed to boot (%s; %d of %d tries)", worker.pid, how, self.boot_failures, BOOT_ATTEMPTS
            )
            if self.boot_failures >= BOOT_ATTEMPTS:
                raise HaltServer("workers failed to boot", EXIT_BOOT)
        elif code == 0:
            log.info("Worker %s exited (restart)", worker.pid)
        else:
            log.error("Worker %s died (%s)", worker.pid, how)
        # A worker that dies soon after its start is crash-looping: back off, capped.
        if time.monotonic() - worker.started < 5.0 and code != 0:
            self.quick_deaths += 1
            delay = min(MAX_RESPAWN_DELAY, 0.1 * 2 ** (self.quick_deaths - 1))
            self.spawn_after = time.monotonic() + delay
        else:
            self.quick_deaths = 0

    def poll_workers(self) -> None:
        """Read each worker's heartbeat and state: how long it has been silent, whether it is ready,
        whether it is stopping by itself (max_requests, master gone: it then gets its graceful_timeout)."""
        now = time.monotonic()
        for w in self.workers.values():
            w.silent_s = w.heartbeat.silent_s()
            state = w.heartbeat.read()
            if not w.ready:
                w.ready = bool(state.get("ready"))
            if state.get("stopping") and w.stop_deadline is None:
                log.info("Worker %s is stopping by itself", w.pid)
                w.stop_deadline = now + w.graceful_timeout
                w.stop_reason = "max_requests"

    def murder_workers(self) -> None:
        """Kill workers overdue in stopping; make a worker silent past `timeout` dump its stack (SIGABRT),
        then kill it."""
        now = time.monotonic()
        for w in list(self.workers.values()):
            if w.abort_deadline is not None:
                if now > w.abort_deadline:
                    self.kill_worker(w.pid, signal.SIGKILL)
                continue
            if w.stop_deadline is not None:
                if now > w.stop_deadline:
                    log.warning("worker %s did not stop within graceful_timeout: killed", w.pid)
                    self.kill_worker(w.pid, signal.SIGKILL)
                    w.stop_deadline = float("inf")  # killed once; reaped on the next pass
                continue
            pending = self.reloader.pending
            timeout = (pending.config if pending and w.generation == pending.generation else self.cfg).server.timeout
            if w.silent_s > timeout:
                log.error(
                    "worker %s timed out (no heartbeat for %.1fs): dumping its stack (SIGABRT), then killed",
                    w.pid,
                    w.silent_s,
                )
                w.abort_deadline = now + ABORT_GRACE
                w.stop_reason = "timeout"
                self.kill_worker(w.pid, signal.SIGABRT)

    def stop_worker(self, worker: WorkerProc, reason: str) -> None:
        """Ask one worker to stop gracefully; it is killed after its graceful_timeout."""
        worker.stop_deadline = time.monotonic() + worker.graceful_timeout
        worker.stop_reason = reason
        self.kill_worker(worker.pid, signal.SIGTERM)

    def signal_workers(self, signum: int) -> None:
        for pid in list(self.workers):
            self.kill_worker(pid, signum)

    def kill_worker(self, pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                return  # already gone: reaped on the next pass
            raise


def _raise_fd_limit(needed: int) -> None:
    """Raise the soft limit of open files toward the hard one: each client is a descriptor, and a worker
    at the default 1024 runs out before worker_connections (1000) plus its pool and listeners."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(hard, max(needed, soft))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open files limit to %d: %s", needed, exc)
        return
    if target < needed:
        log.warning("open files limit is %d (hard), below the %d that worker_connections needs", target, needed)


def proxy_modes(cfg: Config, listeners: dict[str, socket.socket]) -> list[str]:
    """server.proxy_protocol for each listener (keyed by its configured address), in the listeners' order."""
    return per_listener(cfg, listeners, cfg.server.proxy_protocol, "off")


def per_listener(cfg: Config, listeners: dict[str, socket.socket], values: tuple[Any, ...], default: Any) -> list[Any]:
    """A per-listener key's values (one for all, or one per server.bind address) for each listener, in the
    listeners' order; ``default`` for a listener the config does not name."""
    by_address = {str(a): values[i if len(values) > 1 else 0] for i, a in enumerate(cfg.server.bind)}
    return [by_address.get(key, default) for key in listeners]


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
