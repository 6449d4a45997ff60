"""The hosts of a multi-host DSN (a Galera cluster's nodes, say), as the pool opens new connections to them.

Which host: the one in use while it answers and is ready, else the others in the DSN's order; the first
that does becomes the one in use. So every connection of a pool goes to one node, and after a failover
stays on the new node even when the old one is back (two nodes written at once would only make
certification conflicts).

How long: with several hosts, each attempt gets its own bounded time to connect, read the server's
greeting and log in: ``min(connect_timeout, pool.timeout / number of hosts)``, so the whole list is walked
within one acquire timeout. Without it a host that accepts TCP but never greets (a hung server, a
half-dead proxy) held every acquire until its deadline and the next host was never tried. A host that
failed by not answering in time is tried last for ``HUNG_HOST_PENALTY`` seconds (it would cost its whole
share again on each new connection); a host that refused is not, as refusing costs nothing.

TLS: the hosts share one SSLContext (``DSN.targets``), and each is checked against its own name (with
``ssl_mode=verify_identity``): a host whose certificate does not name it fails like one that refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent

from prefork.config.address import format_host_port
from prefork.db.dsn import DSN

HUNG_HOST_PENALTY = 30.0  # seconds a host that did not answer in time is tried after the others


class HostTimeout(TimeoutError):
    """A host did not connect, greet and log in within its share of the acquire timeout."""


def timed_out(exc: BaseException) -> bool:
    """Tell whether a connect failure is a host not answering in time (rather than refusing)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TimeoutError):  # socket.timeout (the driver wraps it) or HostTimeout
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class HostList:
    """The (host, port) targets of one pool: the order to try them in and each attempt's bound."""

    def __init__(
        self,
        targets: list[dict[str, Any]],
        open_connection: Callable[..., Any],
        ready: Callable[[Any], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``targets`` are ``open_connection`` keyword arguments, one dict per host, in the DSN's order;
        ``ready(conn)`` tells whether a host that answered may be used (a Galera node in sync)."""
        self.targets = targets
        self._open_connection = open_connection
        self._ready = ready
        self._clock = clock
        self.current = 0
        self.share: float | None = None  # seconds per attempt; None: the acquire deadline alone
        self.penalized: dict[int, float] = {}  # host index -> until when it is tried last
        self.failures: list[str] = []  # "host:port: error" of each host the last connect() tried in vain

    @classmethod
    def of(cls, dsn: DSN, open_connection: Callable[..., Any], ready: Callable[[Any], bool]) -> HostList:
        """The hosts of a parsed DSN, in its order (``open_connection`` and ``ready`` as for the constructor),
        sharing one SSLContext when the DSN asks for TLS."""
        return cls(dsn.targets(), open_connection, ready)

    def walk_within(self, acquire_timeout: float) -> None:
        """Bound each attempt so that every host is tried within one acquire of ``acquire_timeout``."""
        if len(self.targets) > 1:
            self.share = acquire_timeout / len(self.targets)

    def order(self) -> list[int]:
        """Host indexes in the order to try: the one in use, the others in the DSN's, penalized ones last."""
        now = self._clock()
        self.penalized = {i: until for i, until in self.penalized.items() if until > now}
        first = [self.current, *(i for i in range(len(self.targets)) if i != self.current)]
        return [i for i in first if i not in self.penalized] + [i for i in first if i in self.penalized]

    def connect(self) -> Any:
        """Open a connection to the first host of ``order()`` that answers (and is ready); raise the last
        host's error when none does."""
        import pymysql

        order = self.order()
        self.failures = []
        for n, i in enumerate(order):
            last = n == len(order) - 1
            try:
                conn = self._attempt(i)
            except (pymysql.err.OperationalError, pymysql.err.InterfaceError, OSError) as exc:
                self.failures.append(f"{self.where(i)}: {exc}")
                if self.share is not None and timed_out(exc):
                    self.penalized[i] = self._clock() + HUNG_HOST_PENALTY
                if last:
                    raise
                continue
            if last or len(self.targets) == 1 or self._ready(conn):
                self.current = i
                return conn
            self.failures.append(f"{self.where(i)}: not ready (a Galera node out of sync)")
            conn.close()
        raise AssertionError("unreachable")

    def where(self, i: int) -> str:
        """``host:port`` of host ``i``."""
        kwargs = self.targets[i]
        return format_host_port(str(kwargs.get("host")), int(kwargs.get("port") or 0))

    def _attempt(self, i: int) -> Any:
        """Connect to host ``i`` within its share: the socket's own timeouts bound each step (the driver
        reads the greeting with connect_timeout, see prefork.db.connection), the timer bounds the sum."""
        kwargs = self.targets[i]
        if self.share is None:
            return self._open_connection(**kwargs)
        share = min(self.share, kwargs.get("connect_timeout") or self.share)
        timer = gevent.Timeout(share)
        timer.start()
        try:
            return self._open_connection(**{**kwargs, "connect_timeout": share})
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            raise HostTimeout(f"{self.where(i)} did not connect, greet and log in within {share:g}s") from None
        finally:
            timer.close()
