"""The line-application interface: what an application is, and what it sees of prefork.

An application is any object with these methods (only ``handle`` is required)::

    class MyApp:
        def setup(self, worker: WorkerInfo) -> None:
            '''Called once in each worker after the fork, before it accepts clients. Create pools here
            (or lazily on first use): nothing created in the master may be shared across the fork.'''

        def handle(self, line: str, client: Client) -> str | Future:
            '''Called for each valid line, in the order a client sent them. Return the reply text
            (without the newline), or a future whose ``get()`` returns it: the protocol writes replies
            in order as they resolve, so an app can hold many pipelined lines of one connection at once
            (the ingest app group-commits them). May block its greenlet to apply backpressure.'''

        def handle_lines(self, lines: list[str], client: Client) -> list[str | Future]:
            '''Optional, and used instead of ``handle`` when present: all the valid lines of one read of
            one client at once, in order. Return a list of one reply (text or future) per line; the list
            then belongs to the framework. Consecutive places may hold the same future: it is resolved
            once, and its ``get()`` may return one reply for all of those places or a list with one reply
            per place. Saves a call per line (the echo and ingest apps use it).'''

        def close(self, timeout: float) -> None:
            '''Called once at worker stop, after every client is answered or closed.'''

        def stats(self) -> dict:
            '''Optional: extra figures for `prefork status` (the ingest app reports its pool here).'''

        def check(self, worker: WorkerInfo) -> str:
            '''Optional: what `prefork check` runs after importing the app (not in a worker: the pid is the
            command's, the generation 0). Return a short report; raise to fail the check (exit 2, the
            exception's message on one line). The ingest app connects and looks for its table.'''

        def initdb(self, worker: WorkerInfo) -> str:
            '''Optional: what `prefork initdb` runs (the ingest app creates its tables). Same rules.'''

A future is anything with ``get()`` (blocking the calling greenlet until the reply is known) and
``ready()``; ``gevent.event.AsyncResult`` is one. A future that also has ``rawlink(callback)`` (as
AsyncResult does) gets its reply sent from that callback, with no greenlet waiting in ``get()`` for it;
a future without it costs a greenlet while it is pending. A reply that is not one line of text (``None``, a number,
a string holding a LF), and an exception from ``handle``, ``handle_lines`` or a future's ``get()``, become
``ERR unavailable`` for that line, with a log line naming the app; the connection's other lines go on.

Line ids (``server.line_ids = on``): an app opts in with the class attribute ``accepts_line_ids = True``
and a ``handle_lines(lines, client, ids=None)``; it then gets ``ids``, a list of one client-chosen id (str)
or None per line, the ``@ID `` already taken off the line, and must store each id at most once (a line
whose id is already stored gets ``OK`` without being stored again: resends become exactly-once). With
``server.line_ids`` off it is called as before, without ``ids``. With it on, a worker whose app has not
opted in does not boot.

``server.app`` names the application as ``module:attribute`` (prefork.config.appload imports it). The
master never imports the application: each worker imports it after the fork, so a SIGHUP's new
generation runs new code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from prefork.config.loader import Config

# The reply for a line that cannot be answered now (the app failed, or could not store it in time): the
# framework's and the apps' own.
ERR_UNAVAILABLE = "ERR unavailable"


@runtime_checkable
class Future(Protocol):
    """A reply that is not known yet."""

    def get(self, block: bool = True, timeout: float | None = None) -> str: ...

    def ready(self) -> bool: ...


@dataclass
class WorkerInfo:
    """What an application learns of the worker it runs in."""

    pid: int
    generation: int  # 0 outside a worker (prefork check / initdb)
    config: Config  # cfg.server, cfg.pool; the app's own sections: config.section(MySettings)


@dataclass
class Client:
    """One connected client, as the application sees it."""

    addr: str  # peer IP address, or "unix"
    id: int
    data: dict[str, Any] = field(default_factory=dict)  # free for the application's per-client state
