"""Upgrades (USR2): the master's side, in the old master and in the new one it starts.

The old master moves its pidfile aside (``PIDFILE.oldbin``) and starts a new master, re-executed from the
installed code, on its listeners (``prefork.upgrade``: the command line, the handover pipe, the record).
Until the new master says its workers serve, the old one serves on, and it keeps serving if the new
master exits first or overruns ``max(server.timeout, 10)`` seconds (its pidfile renamed back). Once the
new master serves, the old one stops its workers gracefully and exits. The new master, once its workers
serve, writes the pidfile, becomes systemd's main process and tells the old one (``take_over``).

The ``Upgrader`` is owned by the ``prefork.master.Master`` and called from its loop and signal handler;
the pidfile, the listeners and the workers stay the master's.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import TYPE_CHECKING

from prefork import pidfile, sockets
from prefork.exits import EXIT_BOOT, EXIT_USAGE, HaltServer
from prefork.upgrade import EXEC_FAILED, FAILED, OLDBIN, SERVING, Handover, Upgrade, UpgradeRecord, spawn
from prefork.upgrade import command_line as upgrade_command

if TYPE_CHECKING:
    from prefork.master import Master

log = logging.getLogger("prefork.master")  # the master's lines, wherever its code lives


class Upgrader:
    """The upgrades of one master: the new master it started (at most one), or the old one it replaces."""

    def __init__(self, master: Master, handover: Handover | None = None):
        self.master = master
        self.upgrade: Upgrade | None = None  # a new master started by USR2, not yet serving
        self.record = UpgradeRecord()  # what became of the USR2s (`prefork upgrade`)
        self.handover = handover  # set when USR2 started this master: the old one waits for it
        self.handed_over = False  # a new master serves: this one only stops its workers and exits

    def usr2(self) -> None:
        """A USR2: start a new master, unless an upgrade or a reload is under way."""
        if self.upgrade is not None:
            log.info("USR2: an upgrade is under way (new master %s): ignored", self.upgrade.pid)
            return
        if self.handover is not None:
            log.info("USR2: this master is not serving alone yet (upgrading from %s): ignored", self.handover.old_pid)
            return
        if self.master.reloader.under_way:  # its listeners are not settled yet
            self.not_started("a reload is under way: upgrade once it is over")
            return
        self.start()

    def not_started(self, reason: str) -> None:
        log.error("USR2: upgrade not started: %s", reason)
        self.record.refuse(reason)

    def start(self) -> None:
        """Move the pidfile aside (PIDFILE.oldbin) and start the new master on this one's listeners."""
        m = self.master
        log.info("USR2: upgrading: starting a new master (%s)", " ".join(upgrade_command()))
        path = m.cfg.server.pidfile
        if path and pidfile.read_pid(path) == m.pid:
            try:
                os.rename(path, path + OLDBIN)  # the lock moves with the file: it stays held by this master
                m.pidfile_path = path + OLDBIN
            except OSError as exc:
                self.not_started(f"cannot rename the pidfile {path}: {exc}")
                return
        try:
            self.upgrade = spawn(m.listeners, m.start_dir)
        except OSError as exc:
            self.restore_pidfile()
            self.not_started(str(exc))
            return
        self.upgrade.deadline = time.monotonic() + max(m.cfg.server.timeout, 10.0)
        self.record.begin(self.upgrade.pid)
        log.info("New master %s starting; this master (%s) serves until it is ready", self.upgrade.pid, m.pid)

    def check(self) -> None:
        """Hand over once the new master says it serves; give up on one that overran its time."""
        upgrade = self.upgrade
        if upgrade is None:
            return
        upgrade.read()
        if upgrade.ready:
            self.upgrade = None
            upgrade.close()
            self.record.finish(SERVING)
            self.handed_over = True
            for sock in self.master.listeners.values():
                sockets.adopt(sock, upgrade=True)  # the new master's now: closing must not remove its file
            self.master.reporter.write()  # the outcome, for `prefork upgrade`, before the drain
            raise HaltServer(f"upgraded: new master {upgrade.pid} serves, stopping the old workers")
        if time.monotonic() > upgrade.deadline:
            bound = max(self.master.cfg.server.timeout, 10.0)
            self.failed(f"new master {upgrade.pid} was not ready within {bound:g}s (sent TERM)", signal.SIGTERM)

    def reaped(self, pid: int, status: int) -> bool:
        """Whether a reaped child was the new master (which exited before it served: the upgrade failed)."""
        if self.upgrade is None or pid != self.upgrade.pid:
            return False
        code = os.waitstatus_to_exitcode(status)
        said = self.upgrade.read().strip()
        how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        why = {EXIT_BOOT: "its workers could not boot", EXIT_USAGE: "a usage, config or bind error"}.get(code, "")
        if code == EXEC_FAILED and said.startswith("error "):
            why = said.removeprefix("error ")
        detail = f": {why}" if why else ""
        self.failed(f"new master {self.upgrade.pid} exited ({how}){detail}; see its log lines above")
        return True

    def failed(self, reason: str, signum: int | None = None) -> None:
        """Keep serving: the pidfile back in place, one line with the reason."""
        upgrade = self.upgrade
        if upgrade is None:
            return
        self.upgrade = None
        if signum is not None:
            self.master.kill_worker(upgrade.pid, signum)  # reaped by reap_workers (an unknown pid by then)
        upgrade.close()
        self.restore_pidfile()
        self.record.finish(FAILED, reason)
        log.error("upgrade failed: %s; this master (%s) keeps serving", reason, self.master.pid)

    def restore_pidfile(self) -> None:
        m = self.master
        path = m.cfg.server.pidfile
        if path and m.pidfile_path == path + OLDBIN:
            try:
                os.rename(path + OLDBIN, path)
                m.pidfile_path = path
            except OSError as exc:
                log.error("cannot rename %s back to %s: %s", path + OLDBIN, path, exc)

    def take_over(self) -> None:
        """In a new master started by USR2, once its workers serve: write the pidfile, become systemd's main
        process, and tell the old master, which then stops its workers and exits."""
        m = self.master
        assert self.handover is not None
        m.write_pidfile()
        m.notify.send(f"MAINPID={m.pid}", "READY=1", f"STATUS={m.reporter.summary()}")
        log.info("Serving: telling the old master %s to stop its workers", self.handover.old_pid)
        self.handover.ready(m.pid)
        self.handover = None

    @property
    def stops_service(self) -> bool:
        """Whether this master's stop is the service's (systemd is told STOPPING): not after a handover
        (systemd follows the new master: MAINPID=), nor from a new master that never took over (the old one
        serves on: with NotifyAccess=all, systemd would take the service as stopping)."""
        return not self.handed_over and self.handover is None

    def stopping(self, reason: str) -> None:
        """This master stops: a new master it started goes too; a handover it waited to make is closed."""
        if self.upgrade is not None:
            self.failed(f"this master was stopped ({reason})", signal.SIGTERM)
        if self.handover is not None:
            self.handover.close()

    def waits_on(self) -> list[int]:
        """What the main loop also waits on: the new master's word (hand over at once)."""
        return [self.upgrade.pipe] if self.upgrade is not None else []

    def fds(self) -> list[int]:
        """Descriptors a new worker must close: the new master's pipe, the old master's."""
        fds = []
        if self.upgrade is not None:
            fds.append(self.upgrade.pipe)
        if self.handover is not None and self.handover.fd >= 0:
            fds.append(self.handover.fd)
        return fds
