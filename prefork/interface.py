"""The application interface: what prefork asks of an app, what it hands one, and how it asks.

An application is any object with ``handle`` (``App``); every other member is optional, each with its
own protocol below, so that a type checker holds an app to the signatures it chose to have::

    class MyApp:
        def setup(self, worker: WorkerInfo) -> None:                                   # HasSetup
            '''Called once in each worker after the fork, before it accepts clients. Create pools here
            (or lazily on first use): nothing created in the master may be shared across the fork.'''

        def handle(self, line: str, client: Peer) -> str | Future:                     # App
            '''Called for each valid line, in the order a client sent them. Return the reply text
            (without the newline), or a future whose ``get()`` returns it: the protocol writes replies
            in order as they resolve, so an app can hold many pipelined lines of one connection at once
            (the ingest app group-commits them). May block its greenlet to apply backpressure.'''

        def handle_lines(self, lines: list[str], client: Peer) -> list[str | Future]:  # HandlesLines
            '''Used instead of ``handle`` when present: all the valid lines of one read of one client at
            once, in order. Return a list of one reply (text or future) per line; the list then belongs
            to the framework. Consecutive places may hold the same future: it is resolved once, and its
            ``get()`` may return one reply for all of those places or a list with one reply per place.
            Saves a call per line (the echo and ingest apps use it).'''

        def close(self, timeout: float) -> None:                                       # HasClose
            '''Called once at worker stop, after every client is answered or closed.'''

        def stats(self) -> dict:                                                       # HasStats
            '''Extra figures for `prefork status` (the ingest app reports its pool here).'''

        def readiness(self) -> str | None:                                             # HasReadiness
            '''Why this worker's app cannot serve now (one line), or None when it can: asked once a
            second, from the heartbeat, so it must answer at once (look at what is known, never wait on
            the network). ``/readyz`` answers 503 with the reason while any worker gives one. The ingest
            app: no database connection could be had for ``ingest.ready_within`` seconds.'''

        def check(self, worker: WorkerInfo) -> str:                                    # HasCheck
            '''What `prefork check` runs after importing the app (not in a worker: the pid is the
            command's, the generation 0). Return a short report; raise to fail the check (exit 2, the
            exception's message on one line). The ingest app connects and looks for its table.'''

        def initdb(self, worker: WorkerInfo) -> str:                                   # HasInitdb
            '''What `prefork initdb` runs (the ingest app creates its tables). Same rules.'''

        settings = MySettings  # HasSettings: a Section class (or a sequence of them): the app's keys

A future is anything with ``get()`` (blocking the calling greenlet until the reply is known) and
``ready()``; ``gevent.event.AsyncResult`` is one. A future that also has ``rawlink(callback)`` (as
AsyncResult does) gets its reply sent from that callback, with no greenlet waiting in ``get()`` for it;
a future without it costs a greenlet while it is pending. A reply that is not one line of text (``None``, a
number, a string holding a LF), and an exception from ``handle``, ``handle_lines`` or a future's ``get()``,
become ``ERR unavailable`` for that line, with a log line naming the app; the connection's other lines go
on.

Line ids (``server.line_ids = on``): an app opts in with the class attribute ``accepts_line_ids = True``
and a ``handle_lines(lines, client, ids=None)`` (``AcceptsLineIds``); it then gets ``ids``, a list of one
client-chosen id (str) or None per line, the ``@ID `` already taken off the line, and must store each id
at most once (a line whose id is already stored gets ``OK`` without being stored again: resends become
exactly-once). With ``server.line_ids`` off it is called as before, without ``ids``. With it on, a worker
whose app has not opted in does not boot.

The framework asks for an optional member only through the functions at the end of this module
(``setup_of``, ``stats_of``, ...): one place that knows what "optional" means. The bundled apps are checked
against these protocols by mypy (``workers/__init__.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from prefork.config.loader import Config
    from prefork.settings import Section

# The reply for a line that cannot be answered now (the app failed, or could not store it in time): the
# framework's and the apps' own.
ERR_UNAVAILABLE = "ERR unavailable"


@runtime_checkable
class Future(Protocol):
    """A reply that is not known yet."""

    def get(self, block: bool = True, timeout: float | None = None) -> str | list[str]: ...

    def ready(self) -> bool: ...


Reply = str | Future  # what handle gives for one line; handle_lines gives a sequence of them


@dataclass
class WorkerInfo:
    """What an application learns of the worker it runs in."""

    pid: int
    generation: int  # 0 outside a worker (prefork check / initdb)
    config: Config  # cfg.server, cfg.pool; the app's own sections: config.section(MySettings)


@dataclass(frozen=True)
class TlsIdentity:
    """The verified client certificate of a connection on a mutual-TLS listener (``server.tls_client_ca``)."""

    subject: str  # RFC 4514, most specific first: "CN=client1,O=Example"
    common_name: str  # the subject's CN, or ""
    sans: tuple[str, ...] = ()  # subjectAltName entries as "DNS:client1.example", "IP Address:10.0.0.7", ...

    def dns_names(self) -> tuple[str, ...]:
        """The DNS names among the SANs."""
        return tuple(san[4:] for san in self.sans if san.startswith("DNS:"))


@dataclass
class Peer:
    """One connected client, as the application sees it (the sending library is ``prefork.client``)."""

    addr: str  # peer IP address, or "unix"
    id: int
    data: dict[str, Any] = field(default_factory=dict)  # free for the application's per-client state
    tls: TlsIdentity | None = None  # a client certificate verified by a TLS listener's client CA, else None


# -- the protocols: App is required, each of the others is one optional capability ------------------------


class App(Protocol):
    """What every application has."""

    def handle(self, line: str, client: Peer) -> Reply: ...


class HandlesLines(Protocol):
    """An app that takes all the lines of one read at once."""

    def handle_lines(self, lines: list[str], client: Peer) -> Sequence[Reply]: ...


class AcceptsLineIds(Protocol):
    """An app that opted in to line ids: it stores each id at most once."""

    @property
    def accepts_line_ids(self) -> bool: ...

    def handle_lines(self, lines: list[str], client: Peer, ids: list[str | None] | None = None) -> Sequence[Reply]: ...


class HasSetup(Protocol):
    def setup(self, worker: WorkerInfo) -> None: ...


class HasClose(Protocol):
    def close(self, timeout: float) -> None: ...


class HasStats(Protocol):
    def stats(self) -> dict[str, Any]: ...


class HasReadiness(Protocol):
    def readiness(self) -> str | None: ...


class HasCheck(Protocol):
    def check(self, worker: WorkerInfo) -> str | None: ...


class HasInitdb(Protocol):
    def initdb(self, worker: WorkerInfo) -> str | None: ...


class HasSettings(Protocol):
    @property
    def settings(self) -> type[Section] | Sequence[type[Section]]: ...


# -- asking an app for its optional members -----------------------------------------------------------------

Hook = Literal["check", "initdb"]


def is_app(obj: object) -> bool:
    """Whether ``obj`` can serve at all: it has a callable ``handle``."""
    return callable(getattr(obj, "handle", None))


def handle_lines_of(app: object) -> Callable[..., Sequence[Reply]] | None:
    """The app's ``handle_lines``, or None: the framework then calls ``handle`` for each line."""
    return getattr(app, "handle_lines", None)


def accepts_line_ids(app: object) -> bool:
    """Whether ``app`` opted in to line ids: ``accepts_line_ids = True`` and a ``handle_lines`` to take them."""
    return getattr(app, "accepts_line_ids", False) is True and callable(handle_lines_of(app))


def line_ids_refused(app_spec: str) -> str:
    """The one line saying why an app that does not accept line ids cannot serve with them on."""
    return (
        f"server.line_ids is on, but the app {app_spec} does not accept line ids "
        "(it needs accepts_line_ids = True and handle_lines(lines, client, ids))"
    )


def setup_of(app: object) -> Callable[[WorkerInfo], object] | None:
    """The app's ``setup``, or None."""
    return getattr(app, "setup", None)


def close_of(app: object) -> Callable[[float], object] | None:
    """The app's ``close``, or None."""
    return getattr(app, "close", None)


def stats_of(app: object) -> Callable[[], object] | None:
    """The app's ``stats``, or None."""
    return getattr(app, "stats", None)


def readiness_of(app: object) -> Callable[[], object] | None:
    """The app's ``readiness``, or None: such an app is ready once its worker serves."""
    return getattr(app, "readiness", None)


def hook_of(app: object, name: Hook) -> Callable[[WorkerInfo], object] | None:
    """The app's ``check`` or ``initdb`` hook, or None."""
    return getattr(app, name, None)


def settings_of(app: object) -> object:
    """What the app declares in ``settings`` (Section classes, unchecked: prefork.settings.sections_of
    checks them), or None."""
    return getattr(app, "settings", None)
