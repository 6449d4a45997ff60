"""The ingest app's readiness (``/readyz``): whether a database connection could be had lately.

A worker whose lines cannot reach the database still accepts them (they wait, and get ``ERR unavailable``
at ``ingest.commit_timeout``), so a load balancer asking ``/readyz`` learns of an outage here instead of
from failed lines. A batch committed counts as a connection had; when none was for half of
``ingest.ready_within``, a greenlet takes a connection from the pool and pings it (a cheap round trip,
counted in the pool's figures like any acquire). ``readiness()`` itself only reads the outcome: it is asked
from the heartbeat and must never wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import gevent

from prefork.pool import Pool


class DatabaseReadiness:
    """Ready while a database connection was had within the last ``window`` seconds."""

    def __init__(self, pool: Pool, window: float, progress: Callable[[], int]):
        self.pool = pool
        self.window = window
        self.progress = progress  # batches committed so far: each one proves the database reachable
        self.last_ok: float | None = None  # monotonic time a connection was last had
        self.error = ""  # why the last try failed
        self._seen = 0

    def run(self) -> None:
        """Check forever (a greenlet of the worker): note commits, ping when there were none lately."""
        while True:
            now = time.monotonic()
            done = self.progress()
            if done != self._seen:
                self._seen, self.last_ok = done, now
            elif self.last_ok is None or now - self.last_ok >= self.window / 2:
                self._ping()
            gevent.sleep(min(1.0, self.window / 4))

    def _ping(self) -> None:
        try:
            with self.pool.connection(timeout=self.window / 2) as conn:
                conn.ping(reconnect=False)
        except Exception as exc:  # down, refused, timed out: the reason /readyz gives
            self.error = " ".join(str(exc).split()) or type(exc).__name__
        else:
            self.last_ok, self.error = time.monotonic(), ""

    def reason(self) -> str | None:
        """None when ready, else why not (one line)."""
        if self.last_ok is None:
            return f"no database connection yet{': ' + self.error if self.error else ''}"
        age = time.monotonic() - self.last_ok
        if age > self.window:
            return f"no database connection for {age:.0f}s: {self.error or 'no answer'}"
        return None
