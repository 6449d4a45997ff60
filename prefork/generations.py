"""Reloads (HUP): the master's side, from the new config to its generation serving alone.

A reload is ready-gated: the config is read again (and, when the app's sections have values, checked by
the app's probe, ``prefork.config.probe``, since the master never imports the app); the new generation is
started beside the old one, and only when every new worker reports ready are the old ones stopped
gracefully. Listeners stay open throughout, so no client is refused. A config that fails to load, a
listener that fails to bind or a generation that fails to boot is logged, and the old workers keep
serving. The old workers hand their connections, open, to the new generation (``prefork.handoff``): a
reload closes no client connection. A HUP that comes during a reload is answered by another one once it
is over. What became of each HUP is kept in a ``prefork.reloads.ReloadRecord``.

The ``Reloader`` is owned by the ``prefork.master.Master`` and called from its loop; it works on the
master's workers, listeners and config, which stay the master's.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prefork import logs, sockets
from prefork.config.appload import AppLoadError
from prefork.config.errors import ConfigError
from prefork.config.loader import Config
from prefork.config.probe import Probe, needs_probe
from prefork.privileges import file_owner
from prefork.proctitle import set_title
from prefork.reloads import ABANDONED, REFUSED, SERVING, ReloadRecord
from prefork.tls import check_config as check_tls_files
from prefork.tls import warn_expiring

if TYPE_CHECKING:
    from prefork.master import Master

log = logging.getLogger("prefork.master")  # the master's lines, wherever its code lives


@dataclass
class PendingReload:
    """A new generation being started by a HUP, not yet serving alone."""

    generation: int
    config: Config
    listeners: dict[str, socket.socket]
    opened: list[str]  # listeners this reload opened (closed again if it fails)
    deadline: float
    failure: str | None = None  # how a new worker died, the reason given if the reload is abandoned


class Reloader:
    """The reloads of one master: at most one under way (its app probe, then its generation)."""

    def __init__(self, master: Master):
        self.master = master
        self.pending: PendingReload | None = None
        self.probing: Probe | None = None  # a reload's app probe, checking the new config (see check_probe)
        self.queued = False  # a HUP came during a reload: reload again once it is over
        self.last_generation = 1  # never reused, even when a reload is abandoned
        self.counts = {"ok": 0, "failed": 0}  # master.json's ``reloads``
        self.record = ReloadRecord()  # which HUPs were answered, and how (`prefork reload --wait`)

    @property
    def under_way(self) -> bool:
        """Whether a reload is probing its app or starting its generation (the listeners are not settled)."""
        return self.pending is not None or self.probing is not None

    def hup(self) -> None:
        """A HUP: reload now, or once the reload under way is over."""
        log.info("Hang up: reloading")
        self.record.hup()
        self.reload()

    def reload(self) -> None:
        """Re-read the config; start a new generation with it (check_generation stops the old one when it is
        ready), after the app's probe approved it when the app's sections have values (check_probe)."""
        if self.under_way:
            what = f"generation {self.pending.generation}" if self.pending else "checking the app's settings"
            log.info("reload already in progress (%s): reloading again after it", what)
            self.queued = True
            return
        self.record.begin()
        try:
            cfg = self.master.cfg.reload()
            # The new generation reads the certificate files afresh: an unreadable or mismatched pair, or an
            # expired certificate, keeps the old generation serving with the files it loaded.
            warn_expiring(check_tls_files(cfg))
        except ConfigError as exc:
            self.failed(exc)
            return
        if needs_probe(cfg):  # the app's sections have values: check them with the new code, in a probe
            app_dir = cfg.server.chdir or self.master.start_dir
            self.probing = Probe(cfg, app_dir, timeout=cfg.server.timeout, identity=self.master.identity)
            return
        self.start_generation(cfg)

    def check(self) -> None:
        """Go on with a reload: its probe's report (check_probe), then its generation (check_generation)."""
        self.check_probe()
        self.check_generation()

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
            self.failed(probe.timed_out())
            return
        self.probing = None
        try:
            cfg = probe.result()
        except (ConfigError, AppLoadError) as exc:
            self.failed(exc)
            return
        self.start_generation(cfg)

    def failed(self, exc: Exception) -> None:
        """Keep the old config and generation after a reload that cannot go on."""
        log.error("reload failed, keeping the old config: %s", exc)
        self.counts["failed"] += 1
        self.record.finish(REFUSED, self.master.generation, str(exc))
        self.queued_now()

    def queued_now(self) -> None:
        """Run the reload a HUP asked for while another was under way, now that that one is over."""
        if self.queued:
            self.queued = False
            log.info("Hang up (queued during the reload): reloading")
            self.reload()

    def start_generation(self, cfg: Config) -> None:
        """Open the new config's listeners and fork its generation beside the running one."""
        m = self.master
        listeners: dict[str, socket.socket] = {}
        opened: list[str] = []
        try:
            for address in cfg.server.bind:
                key = str(address)
                if key in m.listeners:
                    listeners[key] = m.listeners[key]
                else:
                    listeners[key] = sockets.bind(address, **sockets.bind_options(cfg.server))
                    opened.append(key)
                    log.info("Listening at: %s", sockets.address_of(listeners[key]))
        except sockets.BindError as exc:
            for key in opened:
                sockets.close(listeners[key])
            self.failed(exc)
            return
        self.last_generation += 1
        generation = self.last_generation
        self.pending = PendingReload(
            generation, cfg, listeners, opened, time.monotonic() + max(cfg.server.timeout, 10.0)
        )
        m.notify.reloading()
        for _ in range(cfg.server.workers):
            m.spawn_worker(generation, cfg, listeners)

    def check_generation(self) -> None:
        """Finish a pending reload once its workers are all ready, or abandon it if they fail to boot."""
        m, pending = self.master, self.pending
        if pending is None:
            return
        new = [w for w in m.workers.values() if w.generation == pending.generation]
        if len(new) == pending.config.server.workers and all(w.ready for w in new):
            old = [w for w in m.workers.values() if w.generation != pending.generation]
            for key, sock in m.listeners.items():
                if key not in pending.listeners:
                    sockets.close(sock)
            m.cfg, m.listeners, m.generation = pending.config, pending.listeners, pending.generation
            m.target = pending.config.server.workers
            self.pending = None
            server, owner = m.cfg.server, file_owner(m.identity)
            logs.setup(server.log_level, server.log_file, server.log_format, owner=owner)
            set_title(f"prefork: master [{m.cfg.server.name}]")  # server.name may have changed
            m.handoff_board.set(m.generation)  # before the stop: the old workers' connections come here
            m.close_channels()
            for w in old:
                m.stop_worker(w, "reload")
            log.info("Reloaded: generation %d serving, %d old workers stopping", m.generation, len(old))
            self.counts["ok"] += 1
            self.record.finish(SERVING, m.generation)
        elif len(new) < pending.config.server.workers or time.monotonic() > pending.deadline:
            log.error("reload failed: generation %d did not boot; the old workers keep serving", pending.generation)
            self.counts["failed"] += 1
            boot_s = max(pending.config.server.timeout, 10.0)
            why = pending.failure or f"its workers were not all ready within {boot_s:g}s"
            self.record.finish(ABANDONED, m.generation, f"generation {pending.generation} failed: {why}")
            # New workers that already serve have clients: drain them like any stopping worker.
            for w in new:
                m.stop_worker(w, "reload")
            for key in pending.opened:
                sockets.close(pending.listeners[key])
            self.pending = None
            m.close_channels()
        else:
            return
        m.notify.ready(m.reporter.summary())
        self.queued_now()

    def abandon(self) -> list[socket.socket]:
        """At a final stop: kill a reload's probe, forget its generation; return that generation's listeners
        (the caller closes them with the running ones, which they may share)."""
        if self.probing is not None:
            self.probing.kill()
            log.info("reload abandoned: stopped while importing %s to check its settings", self.probing.cfg.server.app)
            self.probing = None
        if self.pending is None:
            return []
        listeners = list(self.pending.listeners.values())
        self.pending = None
        return listeners
