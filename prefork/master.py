"""The master: binds the listeners, forks the workers and keeps them alive.

Signal handlers only queue the signal and wake the main loop (self-pipe through ``signal.set_wakeup_fd``);
the loop waits for a signal or a scrape, pops the queue and dispatches to a small ``handle_*`` method,
serves /metrics, then reaps (a reaped worker is retired: its last counts join the lasting totals), polls
(heartbeats, readiness, workers stopping by themselves), goes on with a reload (its app probe, then its
generation), murders (heartbeat timeouts, overdue stops), manages (spawns or stops workers toward the
target), announces readiness once, writes the status file and keeps systemd current.

The master never imports the application, gevent or the database driver, and never opens a database
connection: workers import the app after the fork, so a HUP's new generation runs new code.

Reload (HUP) is ready-gated: the new generation is started beside the old one, and only when every new
worker reports ready are the old ones stopped gracefully. Listeners stay open throughout, so no client is
refused. A config that fails to load, a listener that fails to bind or a generation that fails to boot
is logged, and the old workers keep serving. The old workers hand their connections, open, to the new
generation (``prefork.handoff``): a reload closes no client connection.

Upgrade (USR2, ``prefork.upgrade``): a new master, re-executed from the installed code, inherits the
listeners; once its workers serve, this one stops its own gracefully and exits. Until then it serves
on, and keeps serving if the new master fails.
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
from prefork.config.appload import AppLoadError, start_directory
from prefork.config.errors import ConfigError
from prefork.config.loader import Config
from prefork.config.probe import Probe, needs_probe
from prefork.exits import EXIT_BOOT, EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from prefork.handoff import HandoffBoard, open_channel
from prefork.metrics import MetricsServer, carry
from prefork.privileges import Identity, file_owner
from prefork.proctitle import set_title
from prefork.protocol.allow import EVERYONE
from prefork.reloads import ABANDONED, REFUSED, SERVING, ReloadRecord
from prefork.signals import MASTER_SIGNALS, handler_name
from prefork.state import (
    MASTER_FILE,
    PIDFILE_STATE_SUFFIX,
    AcceptTable,
    Heartbeat,
    StateDirError,
    iso,
    prepare_state_dir,
    runtime_dir,
    state_dir_for,
    write_json,
)
from prefork.systemd import Notifier
from prefork.tls import check_config as check_tls_files
from prefork.tls import of_config as tls_of_config
from prefork.tls import warn_expiring
from prefork.upgrade import EXEC_FAILED, FAILED, OLDBIN, Handover, Upgrade, UpgradeRecord, spawn
from prefork.upgrade import command_line as upgrade_command
from prefork.workerspec import WorkerSpec

log = logging.getLogger("prefork.master")

FD_MARGIN = 128  # descriptors a worker needs beside its clients: pool, listeners, logs, state files
BOOT_ATTEMPTS = 3  # quick boot failures at start before the master gives up (never a fork loop)
LOOP_INTERVAL = 0.25  # seconds between two passes of the main loop when no signal arrives
QUICK_STOP_TIMEOUT = 2.0
ABORT_GRACE = 1.0  # seconds a timed-out worker gets to dump its stack after SIGABRT before SIGKILL
MAX_RESPAWN_DELAY = 10.0
READY_SILENCE_S = 5.0  # a worker silent longer (heartbeats come each second) makes /readyz answer 503


class HaltServer(Exception):
    """Stop the master with this reason and exit status."""

    def __init__(self, reason: str, exit_status: int = EXIT_OK):
        super().__init__(reason)
        self.reason = reason
        self.exit_status = exit_status


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


@dataclass
class PendingReload:
    """A new generation being started by a HUP, not yet serving alone."""

    generation: int
    config: Config
    listeners: dict[str, socket.socket]
    opened: list[str]  # listeners this reload opened (closed again if it fails)
    deadline: float
    failure: str | None = None  # how a new worker died, the reason given if the reload is abandoned


class Master:
    """Supervise the workers of one server."""

    def __init__(
        self,
        config: Config,
        listeners: dict[str, socket.socket],
        metrics: MetricsServer | None = None,
        identity: Identity | None = None,
    ):
        self.cfg = config
        self.listeners = listeners  # configured address -> bound socket
        self.metrics = metrics
        self.identity = identity  # who the workers and the app probe run as (server.user/group), or None
        self.pid = 0  # set by start(): daemon mode forks after the master is built
        self.generation = 1
        self.last_generation = 1  # never reused, even when a reload is abandoned
        self.target = config.server.workers
        self.workers: dict[int, WorkerProc] = {}
        self.pending: PendingReload | None = None
        self.probing: Probe | None = None  # a reload's app probe, checking the new config (see check_probe)
        self.reload_queued = False  # a HUP came during a reload: reload again once it is over
        self.sig_queue: list[int] = []
        self.state_dir = Path()
        self._state_dir_ours = False  # created or taken over by this master: removed at exit
        self._status_error: str | None = None  # the last failure to write master.json, logged once
        self.started_at = time.time()
        self.booted = False  # some worker has reported ready
        self.boot_failures = 0
        self.quick_deaths = 0
        self.spawn_after = 0.0
        self._pipe: tuple[int, int] | None = None
        self.notify = Notifier()  # systemd, when it started us with Type=notify
        self._scrape_waiting = False
        self._notified_ready = False
        self._pidfile_fd: int | None = None  # the pidfile, locked while this master runs
        self._pidfile_path = config.server.pidfile  # where it is now: PIDFILE, or PIDFILE.oldbin during an upgrade
        self.upgrade: Upgrade | None = None  # a new master started by USR2, not yet serving
        self.upgrade_record = UpgradeRecord()  # what became of the USR2s (`prefork upgrade`)
        self.handover: Handover | None = None  # set when USR2 started this master: the old one waits for it
        self.handed_over = False  # a new master serves: this one only stops its workers and exits
        # Figures that outlive workers: the last counts of every retired worker, restarts, reloads.
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
        self.reloads = {"ok": 0, "failed": 0}
        self.reload_record = ReloadRecord()  # which HUPs were answered, and how (`prefork reload --wait`)
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
        if self.handover is None:  # a new master started by USR2 writes the pidfile once it serves
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
        path = self._pidfile_path = self.cfg.server.pidfile
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
                self.check_reload()
                self.check_upgrade()
                self.murder_workers()
                self.manage_workers()
                self.announce_ready()
                self.write_status()
                self.notify_systemd()
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
        waiting: list[Any] = [wakeup, *(x for x in (self.metrics, self.probing) if x is not None)]
        if self.upgrade is not None:  # the new master's word: hand over at once
            waiting.append(self.upgrade.pipe)
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
        """Reload: new config, new generation, then stop the old one."""
        log.info("Hang up: reloading")
        self.reload_record.hup()
        self.reload()

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
        """Upgrade: start a new master from the installed code on the same listeners (prefork.upgrade)."""
        if self.upgrade is not None:
            log.info("USR2: an upgrade is under way (new master %s): ignored", self.upgrade.pid)
            return
        if self.handover is not None:
            log.info("USR2: this master is not serving alone yet (upgrading from %s): ignored", self.handover.old_pid)
            return
        if self.pending is not None or self.probing is not None:  # its listeners are not settled yet
            self.upgrade_not_started("a reload is under way: upgrade once it is over")
            return
        self.start_upgrade()

    def upgrade_not_started(self, reason: str) -> None:
        log.error("USR2: upgrade not started: %s", reason)
        self.upgrade_record.refuse(reason)

    # -- stopping -----------------------------------------------------------------------------------

    def halt(self, reason: str, exit_status: int) -> int:
        """Stop every worker (gracefully unless already done), clean up, return the exit status."""
        log.info("Shutting down: %s", reason)
        # Not after a handover (systemd follows the new master: MAINPID=), nor from a new master that never
        # took over (the old one serves on): with NotifyAccess=all, systemd would take the service as stopping.
        if not self.handed_over and self.handover is None:
            self.notify.stopping()
        if self.upgrade is not None:  # stopped while upgrading: the new master goes too
            self.upgrade_failed(f"this master was stopped ({reason})", signal.SIGTERM)
        if self.handover is not None:
            self.handover.close()
        self.stop(graceful=True)
        path = self._pidfile_path
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
        if self.probing is not None:
            self.probing.kill()
            log.info("reload abandoned: stopped while importing %s to check its settings", self.probing.cfg.server.app)
            self.probing = None
        # A reload shares the unchanged listeners with the running generation: close each socket once.
        distinct = {id(sock): sock for sock in self.listeners.values()}
        if self.pending is not None:
            distinct.update((id(sock), sock) for sock in self.pending.listeners.values())
            self.pending = None
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

    # -- reload -------------------------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the config; start a new generation with it (check_reload stops the old one when it is
        ready), after the app's probe approved it when the app's sections have values (check_probe)."""
        if self.pending is not None or self.probing is not None:
            what = f"generation {self.pending.generation}" if self.pending else "checking the app's settings"
            log.info("reload already in progress (%s): reloading again after it", what)
            self.reload_queued = True
            return
        self.reload_record.begin()
        try:
            cfg = self.cfg.reload()
            # The new generation reads the certificate files afresh: an unreadable or mismatched pair, or an
            # expired certificate, keeps the old generation serving with the files it loaded.
            warn_expiring(check_tls_files(cfg))
        except ConfigError as exc:
            self.reload_failed(exc)
            return
        if needs_probe(cfg):  # the app's sections have values: check them with the new code, in a probe
            app_dir = cfg.server.chdir or self.start_dir
            self.probing = Probe(cfg, app_dir, timeout=cfg.server.timeout, identity=self.identity)
            return
        self.start_generation(cfg)

    def check_probe(self) -> None:
        """Go on with a reload once its probe reported; refuse it if the probe failed or overran
        server.timeout. Meanwhile the loop goes on: workers are reaped and replaced, /metrics answers."""
        probe = self.probing
        if probe is None:
            return
        if not probe.poll():
            if not probe.overdue():
                return
            probe.kill()
            self.probing = None
            self.reload_failed(probe.timed_out())
            return
        self.probing = None
        try:
            cfg = probe.result()
        except (ConfigError, AppLoadError) as exc:
            self.reload_failed(exc)
            return
        self.start_generation(cfg)

    def reload_failed(self, exc: Exception) -> None:
        """Keep the old config and generation after a reload that cannot go on."""
        log.error("reload failed, keeping the old config: %s", exc)
        self.reloads["failed"] += 1
        self.reload_record.finish(REFUSED, self.generation, str(exc))
        self.reload_queued_now()

    def reload_queued_now(self) -> None:
        """Run the reload a HUP asked for while another was under way, now that that one is over."""
        if self.reload_queued:
            self.reload_queued = False
            log.info("Hang up (queued during the reload): reloading")
            self.reload()

    def start_generation(self, cfg: Config) -> None:
        """Open the new config's listeners and fork its generation beside the running one."""
        listeners: dict[str, socket.socket] = {}
        opened: list[str] = []
        try:
            for address in cfg.server.bind:
                key = str(address)
                if key in self.listeners:
                    listeners[key] = self.listeners[key]
                else:
                    listeners[key] = sockets.bind(address, **sockets.bind_options(cfg.server))
                    opened.append(key)
                    log.info("Listening at: %s", sockets.address_of(listeners[key]))
        except sockets.BindError as exc:
            for key in opened:
                sockets.close(listeners[key])
            self.reload_failed(exc)
            return
        self.last_generation += 1
        generation = self.last_generation
        self.pending = PendingReload(
            generation, cfg, listeners, opened, time.monotonic() + max(cfg.server.timeout, 10.0)
        )
        self.notify.reloading()
        for _ in range(cfg.server.workers):
            self.spawn_worker(generation, cfg, listeners)

    def check_reload(self) -> None:
        """Go on with a reload: its probe's report (check_probe), then its generation (check_generation)."""
        self.check_probe()
        self.check_generation()

    def check_generation(self) -> None:
        """Finish a pending reload once its workers are all ready, or abandon it if they fail to boot."""
        pending = self.pending
        if pending is None:
            return
        new = [w for w in self.workers.values() if w.generation == pending.generation]
        if len(new) == pending.config.server.workers and all(w.ready for w in new):
            old = [w for w in self.workers.values() if w.generation != pending.generation]
            for key, sock in self.listeners.items():
                if key not in pending.listeners:
                    sockets.close(sock)
            self.cfg, self.listeners, self.generation = pending.config, pending.listeners, pending.generation
            self.target = pending.config.server.workers
            self.pending = None
            server, owner = self.cfg.server, file_owner(self.identity)
            logs.setup(server.log_level, server.log_file, server.log_format, owner=owner)
            set_title(f"prefork: master [{self.cfg.server.name}]")  # server.name may have changed
            self.handoff_board.set(self.generation)  # before the stop: the old workers' connections come here
            self.close_channels()
            for w in old:
                self.stop_worker(w, "reload")
            log.info("Reloaded: generation %d serving, %d old workers stopping", self.generation, len(old))
            self.reloads["ok"] += 1
            self.reload_record.finish(SERVING, self.generation)
        elif len(new) < pending.config.server.workers or time.monotonic() > pending.deadline:
            log.error("reload failed: generation %d did not boot; the old workers keep serving", pending.generation)
            self.reloads["failed"] += 1
            boot_s = max(pending.config.server.timeout, 10.0)
            why = pending.failure or f"its workers were not all ready within {boot_s:g}s"
            self.reload_record.finish(ABANDONED, self.generation, f"generation {pending.generation} failed: {why}")
            # New workers that already serve have clients: drain them like any stopping worker.
            for w in new:
                self.stop_worker(w, "reload")
            for key in pending.opened:
                sockets.close(pending.listeners[key])
            self.pending = None
            self.close_channels()
        else:
            return
        self.notify.ready(self.summary())
        self.reload_queued_now()

    # -- upgrade (USR2) -----------------------------------------------------------------------------

    def start_upgrade(self) -> None:
        """Move the pidfile aside (PIDFILE.oldbin) and start the new master on this one's listeners."""
        log.info("USR2: upgrading: starting a new master (%s)", " ".join(upgrade_command()))
        path = self.cfg.server.pidfile
        if path and pidfile.read_pid(path) == self.pid:
            try:
                os.rename(path, path + OLDBIN)  # the lock moves with the file: it stays held by this master
                self._pidfile_path = path + OLDBIN
            except OSError as exc:
                self.upgrade_not_started(f"cannot rename the pidfile {path}: {exc}")
                return
        try:
            self.upgrade = spawn(self.listeners, self.start_dir)
        except OSError as exc:
            self.restore_pidfile()
            self.upgrade_not_started(str(exc))
            return
        self.upgrade.deadline = time.monotonic() + max(self.cfg.server.timeout, 10.0)
        self.upgrade_record.begin(self.upgrade.pid)
        log.info("New master %s starting; this master (%s) serves until it is ready", self.upgrade.pid, self.pid)

    def check_upgrade(self) -> None:
        """Hand over once the new master says it serves; give up on one that overran its time."""
        upgrade = self.upgrade
        if upgrade is None:
            return
        upgrade.read()
        if upgrade.ready:
            self.upgrade = None
            upgrade.close()
            self.upgrade_record.finish(SERVING)
            self.handed_over = True
            for sock in self.listeners.values():
                sockets.adopt(sock, upgrade=True)  # the new master's now: closing must not remove its file
            self.write_status()  # the outcome, for `prefork upgrade`, before the drain
            raise HaltServer(f"upgraded: new master {upgrade.pid} serves, stopping the old workers")
        if time.monotonic() > upgrade.deadline:
            bound = max(self.cfg.server.timeout, 10.0)
            self.upgrade_failed(f"new master {upgrade.pid} was not ready within {bound:g}s (sent TERM)", signal.SIGTERM)

    def new_master_exited(self, status: int) -> None:
        """The new master exited before it served: the upgrade failed."""
        assert self.upgrade is not None
        code = os.waitstatus_to_exitcode(status)
        said = self.upgrade.read().strip()
        how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        why = {EXIT_BOOT: "its workers could not boot", EXIT_USAGE: "a usage, config or bind error"}.get(code, "")
        if code == EXEC_FAILED and said.startswith("error "):
            why = said.removeprefix("error ")
        detail = f": {why}" if why else ""
        self.upgrade_failed(f"new master {self.upgrade.pid} exited ({how}){detail}; see its log lines above")

    def upgrade_failed(self, reason: str, signum: int | None = None) -> None:
        """Keep serving: the pidfile back in place, one line with the reason."""
        upgrade = self.upgrade
        if upgrade is None:
            return
        self.upgrade = None
        if signum is not None:
            self.kill_worker(upgrade.pid, signum)  # reaped by reap_workers (an unknown pid by then)
        upgrade.close()
        self.restore_pidfile()
        self.upgrade_record.finish(FAILED, reason)
        log.error("upgrade failed: %s; this master (%s) keeps serving", reason, self.pid)

    def restore_pidfile(self) -> None:
        path = self.cfg.server.pidfile
        if path and self._pidfile_path == path + OLDBIN:
            try:
                os.rename(path + OLDBIN, path)
                self._pidfile_path = path
            except OSError as exc:
                log.error("cannot rename %s back to %s: %s", path + OLDBIN, path, exc)

    def take_over(self) -> None:
        """In a new master started by USR2, once its workers serve: write the pidfile, become systemd's main
        process, and tell the old master, which then stops its workers and exits."""
        assert self.handover is not None
        self.write_pidfile()
        self.notify.send(f"MAINPID={self.pid}", "READY=1", f"STATUS={self.summary()}")
        log.info("Serving: telling the old master %s to stop its workers", self.handover.old_pid)
        self.handover.ready(self.pid)
        self.handover = None

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
        tell systemd READY=1 (a reload's end tells it again: check_generation)."""
        if not self.booted and any(w.ready for w in self.workers.values()):
            self.booted = True
            log.info("Workers are serving")
            for callback in self.on_ready:
                callback()
        if self._notified_ready:
            return
        current = [w for w in self.workers.values() if w.generation == self.generation and w.stop_deadline is None]
        if len(current) >= self.target and all(w.ready for w in current):
            self._notified_ready = True
            if self.handover is not None:
                self.take_over()
            else:
                self.notify.ready(self.summary())

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
        keep = {self.generation, *([self.pending.generation] if self.pending else [])}
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
        if self.upgrade is not None:
            fds.append(self.upgrade.pipe)
        if self.handover is not None and self.handover.fd >= 0:
            fds.append(self.handover.fd)
        if self.probing is not None:  # a worker reading the probe's report would leave the master half of it
            fds.append(self.probing.fileno())
        others = [*self.listeners.values(), *(self.pending.listeners.values() if self.pending else [])]
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
            if self.probing is not None and pid == self.probing.pid:
                self.probing.reaped = True  # check_probe reads its report; it must not wait for it again
                continue
            if self.upgrade is not None and pid == self.upgrade.pid:
                self.new_master_exited(status)
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
        if self.pending is not None and worker.generation == self.pending.generation:
            log.error("new worker %s died during reload (%s)", worker.pid, how)
            self.pending.failure = self.pending.failure or f"new worker {worker.pid} died ({how})"
            return  # check_reload abandons the reload
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
            pending = self.pending is not None and w.generation == self.pending.generation
            timeout = (self.pending.config if pending and self.pending else self.cfg).server.timeout
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

    # -- status -------------------------------------------------------------------------------------

    def write_status(self) -> None:
        """Write master.json for `prefork status` and /metrics."""
        try:
            write_json(self.state_dir / MASTER_FILE, self.state())
        except FileNotFoundError:
            # The directory was removed (a tmp cleaner, logind at logout): make it again. Heartbeats do
            # not depend on it, so no worker is harmed meanwhile.
            self._status_failed("the state directory was removed; recreating it")
            try:
                prepare_state_dir(self.state_dir)
            except (StateDirError, OSError) as exc:
                self._status_failed(f"cannot recreate the state directory {self.state_dir}: {exc}")
        except OSError as exc:  # a full disk, ...
            self._status_failed(f"cannot write the status file: {exc}")
        else:
            if self._status_error is not None:
                log.info("status file written again")
                self._status_error = None

    def notify_systemd(self) -> None:
        """Keep systemd current: the watchdog ping (the loop runs), and the status line once the server was
        announced ready, except during a reload (whose end sends READY with it)."""
        if not self.notify.enabled:
            return
        self.notify.watchdog()
        if self._notified_ready and self.pending is None:
            self.notify.status(self.summary())

    def _status_failed(self, message: str) -> None:
        if message != self._status_error:  # logged once, not every pass
            log.warning("%s (workers keep serving)", message)
            self._status_error = message

    def summary(self) -> str:
        """One line for systemd's status: workers, generation, clients."""
        current = [w for w in self.workers.values() if w.generation == self.generation]
        clients = sum(w.heartbeat.last.get("clients") or 0 for w in self.workers.values())
        return f"{len(current)} workers, gen {self.generation}, {clients:,} clients"

    def state(self) -> dict:
        """The master's figures and its workers' last states: what `status` and `/metrics` show."""
        now = time.time()
        return {
            "pid": self.pid,
            "name": self.cfg.server.name,
            "generation": self.generation,
            "started_at": iso(self.started_at),
            "uptime_s": round(now - self.started_at, 3),
            "workers_target": self.target,
            "listeners": [sockets.address_of(s) for s in self.listeners.values()],
            "workers": [
                {**w.heartbeat.last, "slot": w.slot} for _, w in sorted(self.workers.items()) if w.heartbeat.last
            ],
            "written_ts": now,
            "started_ts": self.started_at,
            "retired": self.retired,
            "restarts": self.restarts,
            "reloads": self.reloads,
            "reload": self.reload_record.as_dict(),
            "upgrade": self.upgrade_record.as_dict(),
            "not_ready": self.readiness(),
        }

    def readiness(self) -> str | None:
        """Why the server is not ready (``/readyz`` answers 503 with it), or None when it is: the workers
        of the current generation serve, each one's heartbeat came within READY_SILENCE_S, and none of
        their apps says it is not ready (an app's optional ``readiness()``, reported in its heartbeat: the
        ingest app's database). At start every worker must serve; later a worker being replaced (a crash,
        max_requests) does not count while others serve: a routine restart must not take the host out of
        its balancer, which would close every client's connection."""
        current = [w for w in self.workers.values() if w.generation == self.generation and w.stop_deadline is None]
        serving = sorted((w for w in current if w.ready), key=lambda w: (w.slot is None, w.slot or 0, w.pid))
        if not serving or (len(serving) < self.target and not self._notified_ready):
            return f"{len(serving)} of {self.target} workers serving"
        for w in serving:
            if w.silent_s > READY_SILENCE_S:  # hung (killed only at server.timeout): not serving meanwhile
                return f"worker {w.pid} (slot {w.slot}): no heartbeat for {w.silent_s:.0f}s"
            reason = w.heartbeat.last.get("not_ready")
            if reason:
                return f"worker {w.pid} (slot {w.slot}): {reason}"
        return None


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
