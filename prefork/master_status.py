"""What the master reports of itself: master.json, /readyz's answer and systemd's status line.

The master writes its state (its own figures and every worker's last heartbeat state) to master.json on
every pass of its loop, for `prefork status` (``prefork.status``) and ``/metrics`` (``prefork.metrics``,
which also serves it directly); a failure to write it is logged once, and the workers keep serving.
``readiness`` is why the server is not ready, for ``/readyz``. Under systemd (``Type=notify``) the loop
pings the watchdog and keeps the status line current (``prefork.systemd``).

The ``Reporter`` is owned by the ``prefork.master.Master``; it only reads the master's figures.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from prefork import sockets
from prefork.state import MASTER_FILE, StateDirError, iso, prepare_state_dir, write_json

if TYPE_CHECKING:
    from prefork.master import Master

log = logging.getLogger("prefork.master")  # the master's lines, wherever its code lives

READY_SILENCE_S = 5.0  # a worker silent longer (heartbeats come each second) makes /readyz answer 503


class Reporter:
    """The reports of one master."""

    def __init__(self, master: Master):
        self.master = master
        self._status_error: str | None = None  # the last failure to write master.json, logged once

    def write(self) -> None:
        """Write master.json for `prefork status` and /metrics."""
        state_dir = self.master.state_dir
        try:
            write_json(state_dir / MASTER_FILE, self.state())
        except FileNotFoundError:
            # The directory was removed (a tmp cleaner, logind at logout): make it again. Heartbeats do
            # not depend on it, so no worker is harmed meanwhile.
            self._status_failed("the state directory was removed; recreating it")
            try:
                prepare_state_dir(state_dir)
            except (StateDirError, OSError) as exc:
                self._status_failed(f"cannot recreate the state directory {state_dir}: {exc}")
        except OSError as exc:  # a full disk, ...
            self._status_failed(f"cannot write the status file: {exc}")
        else:
            if self._status_error is not None:
                log.info("status file written again")
                self._status_error = None

    def _status_failed(self, message: str) -> None:
        if message != self._status_error:  # logged once, not every pass
            log.warning("%s (workers keep serving)", message)
            self._status_error = message

    def notify_systemd(self) -> None:
        """Keep systemd current: the watchdog ping (the loop runs), and the status line once the server was
        announced ready, except during a reload (whose end sends READY with it)."""
        m = self.master
        if not m.notify.enabled:
            return
        m.notify.watchdog()
        if m.notified_ready and m.reloader.pending is None:
            m.notify.status(self.summary())

    def summary(self) -> str:
        """One line for systemd's status: workers, generation, clients."""
        m = self.master
        current = [w for w in m.workers.values() if w.generation == m.generation]
        clients = sum(w.heartbeat.last.get("clients") or 0 for w in m.workers.values())
        return f"{len(current)} workers, gen {m.generation}, {clients:,} clients"

    def state(self) -> dict:
        """The master's figures and its workers' last states: what `status` and `/metrics` show."""
        m = self.master
        now = time.time()
        return {
            "pid": m.pid,
            "name": m.cfg.server.name,
            "generation": m.generation,
            "started_at": iso(m.started_at),
            "uptime_s": round(now - m.started_at, 3),
            "workers_target": m.target,
            "listeners": [sockets.address_of(s) for s in m.listeners.values()],
            "workers": [{**w.heartbeat.last, "slot": w.slot} for _, w in sorted(m.workers.items()) if w.heartbeat.last],
            "written_ts": now,
            "started_ts": m.started_at,
            "retired": m.retired,
            "restarts": m.restarts,
            "reloads": m.reloader.counts,
            "reload": m.reloader.record.as_dict(),
            "upgrade": m.upgrader.record.as_dict(),
            "not_ready": self.readiness(),
        }

    def readiness(self) -> str | None:
        """Why the server is not ready (``/readyz`` answers 503 with it), or None when it is: the workers
        of the current generation serve, each one's heartbeat came within READY_SILENCE_S, and none of
        their apps says it is not ready (an app's optional ``readiness()``, reported in its heartbeat: the
        ingest app's database). At start every worker must serve; later a worker being replaced (a crash,
        max_requests) does not count while others serve: a routine restart must not take the host out of
        its balancer, which would close every client's connection."""
        m = self.master
        current = [w for w in m.workers.values() if w.generation == m.generation and w.stop_deadline is None]
        serving = sorted((w for w in current if w.ready), key=lambda w: (w.slot is None, w.slot or 0, w.pid))
        if not serving or (len(serving) < m.target and not m.notified_ready):
            return f"{len(serving)} of {m.target} workers serving"
        for w in serving:
            if w.silent_s > READY_SILENCE_S:  # hung (killed only at server.timeout): not serving meanwhile
                return f"worker {w.pid} (slot {w.slot}): no heartbeat for {w.silent_s:.0f}s"
            reason = w.heartbeat.last.get("not_ready")
            if reason:
                return f"worker {w.pid} (slot {w.slot}): {reason}"
        return None
