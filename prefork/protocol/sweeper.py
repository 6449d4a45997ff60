"""``client_timeout`` without a timer per read: one sweeper per event loop ends the reads of clients that
have sent no complete line for that long.

A reader that waited in recv with the socket's timeout made, started and cancelled a timer for every read:
thousands of reads a second per worker, for a limit that is minutes long and almost never reached. Instead
each connection keeps its deadline (moved on by each complete line) and waits for data with no timer; a
repeating timer of the event loop looks at the connections a few times per ``client_timeout`` (at most once
a SWEEP_MAX_S) and throws TimeoutError into the readers past their deadline, as recv's own timeout would
(no data is taken from the socket). A client is so closed between ``client_timeout`` and that plus one
interval after its last complete line.

The throw happens in the loop's own callback, as ``LineConnection.stop`` interrupts a reader: a greenlet
thrown into from the hub switches back to the hub when it next blocks.
"""

from __future__ import annotations

from typing import Any, Protocol

import gevent

SWEEP_MAX_S = 1.0  # the longest interval between two looks (client_timeout of 10 s and more)
SWEEP_MIN_S = 0.01  # the shortest (a tiny client_timeout in a test)
SWEEPS_PER_TIMEOUT = 10  # looks per client_timeout: a client is closed at most a tenth of it late


class Sweepable(Protocol):
    """What the sweeper asks of a connection."""

    def expire_if_due(self, now: float) -> None:
        """End the read if the client's deadline (event loop time) has passed and it waits in recv."""


class Sweeper:
    """The connections of one event loop whose reads have a deadline, and the timer that enforces it."""

    def __init__(self, hub: Any) -> None:
        self._loop = hub.loop
        self._watched: set[Sweepable] = set()
        self._interval = SWEEP_MAX_S
        self._timer: Any = None

    def watch(self, conn: Sweepable, timeout: float) -> None:
        """Enforce ``conn``'s deadline from now on; ``timeout`` is its client_timeout (sets how often)."""
        self._watched.add(conn)
        interval = min(SWEEP_MAX_S, max(SWEEP_MIN_S, timeout / SWEEPS_PER_TIMEOUT))
        if self._timer is not None and interval < self._interval:
            self._timer.close()  # a shorter client_timeout than any so far: look more often
            self._timer = None
        if self._timer is None:
            self._interval = min(self._interval, interval)
            self._timer = self._loop.timer(self._interval, self._interval)
            self._timer.start(self._sweep)

    def unwatch(self, conn: Sweepable) -> None:
        """``conn`` reads no more (or is closing): forget it; the timer stops with the last one."""
        self._watched.discard(conn)
        if not self._watched and self._timer is not None:
            self._timer.close()
            self._timer = None
            self._interval = SWEEP_MAX_S

    def _sweep(self) -> None:
        now = self._loop.now()
        for conn in list(self._watched):
            conn.expire_if_due(now)


def sweeper() -> Sweeper:
    """The sweeper of the current thread's event loop (made at first use)."""
    hub = gevent.get_hub()
    found: Sweeper | None = _SWEEPERS.get(id(hub))
    if found is None or found._loop is not hub.loop:
        found = _SWEEPERS[id(hub)] = Sweeper(hub)
    return found


_SWEEPERS: dict[int, Sweeper] = {}
