"""A green MySQL connection pool: one per worker process, created lazily after the fork.

Usage::

    pool = Pool.from_dsn("mysql://app:secret@db:3306/app", max_size=10, timeout=5)
    with pool.connection() as conn:          # waits at most `timeout` seconds, else PoolTimeout
        cur = conn.cursor()
        cur.execute("INSERT INTO t (x) VALUES (%s)", (42,))
        conn.commit()                        # an uncommitted transaction is rolled back on return

Parameters (all keyword-only, with their defaults):

``min_size=1``
    Connections kept open once the pool is first used. Nothing is opened before the first acquire.
``max_size=10``
    Hard upper bound of open (or opening) connections.
``timeout=10``
    Seconds one acquire may take in all: waiting for a slot, connecting and pinging. Then ``PoolTimeout``,
    whose message gives the pool's state. With several hosts in the DSN, each host gets
    ``min(connect_timeout, timeout / number of hosts)`` to connect, greet and log in, so that every host is
    tried within one acquire; a host that did not answer in time is tried last for the next 30 s
    (``prefork.db.hosts``).
``max_uses=0``
    Close a connection after this many checkouts (0 = unlimited).
``max_idle=300``
    Close connections idle this long, down to min_size.
``max_lifetime=3600``
    Close a connection this old (less a small random jitter) at its next return.
``ping_interval=30``
    Ping a connection on checkout when it was idle longer than this; a dead one is replaced, never handed out.
``leak_timeout=0``
    Log one warning, with the stack that acquired it, for a checkout held longer than this (0 = off).

Rules the pool keeps whatever fails:

- Waiters are served first come, first served; a returned connection or a freed slot is handed straight to
  the oldest waiter. Waiting blocks only the waiting greenlet (gevent events); the pool also works from
  plain threads.
- A slot is never lost: a failed connect, a ``gevent.Timeout``, ``greenlet.kill()`` or KeyboardInterrupt
  at any point of an acquire or a checkout frees it or hands it on. (A pool built on ``queue.Queue`` leaks
  exactly there under gevent.)
- A block that raised a disconnect error, or was interrupted by something that is not an ordinary
  exception (timeout, kill), may have left the protocol mid-reply: its connection is closed, not reused.
  So is a connection whose socket the driver closed itself (``conn.open`` is false).
- A connection goes back to the pool with no transaction open: it is rolled back on return unless the
  driver's last reply was an OK packet saying no transaction is open. A block that raised is always
  rolled back: after an error reply PyMySQL's ``server_status`` still says what an earlier reply said,
  and a failed INSERT leaves its transaction (locks, read view) open.
- The pool never re-runs a statement: retrying is the caller's decision (a retried INSERT whose reply was
  lost stores the row twice).
- Used from a process other than the one that created it, the pool raises ``PoolForkError`` at once;
  inherited connections are dropped, never closed (closing would send QUIT on the parent's socket).
"""

from __future__ import annotations

import logging
import os
import random
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gevent
import pymysql
from gevent.event import Event
from gevent.monkey import get_original

from prefork.db.connection import Connection, open_connection, transaction_closed
from prefork.db.dsn import DSN, parse_dsn
from prefork.db.errors import is_disconnect
from prefork.db.hosts import HostList
from prefork.db.server import node_ready

log = logging.getLogger("prefork.pool")

# A real OS lock, whether or not threading is monkey-patched: it guards only short sections that never
# yield or do I/O, so greenlets never contend for it and plain threads stay correct.
_Lock = get_original("threading", "Lock")

CLOSE_REASONS = ("max_uses", "max_idle", "max_lifetime", "broken", "closed")
_LIFETIME_JITTER = 0.05  # up to 5% shorter, so connections opened together do not retire together
_MAINTENANCE_INTERVAL = 1.0


class PoolError(Exception):
    """Base class of the pool's errors."""


class PoolTimeout(PoolError):
    """No connection could be had within the acquire timeout."""


class PoolClosed(PoolError):
    """The pool was closed."""


class PoolForkError(PoolError):
    """The pool was used in a process other than the one that created it."""


class PoolConnectError(PoolError):
    """Opening a new connection failed; ``__cause__`` holds the driver's error."""


def connect_once(dsn: str | DSN) -> Any:
    """One plain PyMySQL connection outside any pool, for a command such as an app's ``check`` or
    ``initdb`` hook; close it yourself. Its host is chosen as a pool's are (``prefork.db.hosts``: the first
    of the DSN's hosts that answers and is ready). PoolConnectError names the DSN (never its password), and
    each host tried with why it failed (a TLS failure included: a certificate not verified, no TLS)."""
    parsed = parse_dsn(dsn) if isinstance(dsn, str) else dsn
    hosts = HostList.of(parsed, Connection, node_ready)
    try:
        return hosts.connect()
    except pymysql.err.MySQLError as exc:
        raise PoolConnectError(f"cannot connect to {parsed.redacted}: {'; '.join(hosts.failures)}") from exc


class _Record:
    """A long-lived slot: one DB-API connection and its history."""

    __slots__ = ("conn", "created_at", "last_used", "uses", "retire_at")

    def __init__(self, conn: Any, max_lifetime: float):
        now = time.monotonic()
        self.conn = conn
        self.created_at = now
        self.last_used = now
        self.uses = 0
        self.retire_at = now + max_lifetime * (1 - random.random() * _LIFETIME_JITTER) if max_lifetime else 0.0


class _Checkout:
    """What the pool knows of one connection that is lent out."""

    __slots__ = ("record", "since", "stack", "warned")

    def __init__(self, record: _Record, stack: list[str] | None):
        self.record = record
        self.since = time.monotonic()
        self.stack = stack
        self.warned = False


_SLOT = object()  # grant: permission to open a new connection (the slot is already counted)
_CLOSED = object()  # grant: the pool was closed while waiting


class _Waiter:
    __slots__ = ("event", "grant")

    def __init__(self) -> None:
        # One event per waiter, created by the waiter itself: a gevent Event belongs to one thread's hub.
        self.event = Event()
        self.grant: Any = None


# The keys of the [pool] config section that are constructor arguments of the same name (all but dsn).
POOL_SETTINGS = (
    "min_size", "max_size", "timeout", "max_uses", "max_idle", "max_lifetime", "ping_interval", "leak_timeout",
)  # fmt: skip


class Pool:
    """A bounded, FIFO-fair, fork-safe pool of DB-API connections for one process."""

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 10.0,
        max_uses: int = 0,
        max_idle: float = 300.0,
        max_lifetime: float = 3600.0,
        ping_interval: float = 30.0,
        leak_timeout: float = 0.0,
        name: str = "pool",
        on_connect: Callable[[Any], None] | None = None,
    ):
        """``connect()`` opens one DB-API connection. The other defaults are those of the ``[pool]``
        section (a test holds them equal); ``on_connect(conn)`` runs once on each new connection before
        it is first lent (session variables, time zone): if it raises, the connection is closed and the
        acquire fails with PoolConnectError."""
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, not {max_size}")
        if not 0 <= min_size <= max_size:
            raise ValueError(f"min_size must be between 0 and max_size ({max_size}), not {min_size}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self._connect = connect
        self._on_connect = on_connect
        self.min_size = min_size
        self.max_size = max_size
        self.timeout = timeout
        self.max_uses = max_uses
        self.max_idle = max_idle
        self.max_lifetime = max_lifetime
        self.ping_interval = ping_interval
        self.leak_timeout = leak_timeout
        self.name = name

        self._pid = os.getpid()
        self._lock = _Lock()
        self._idle: deque[_Record] = deque()  # LIFO: the right end is the most recently returned
        self._waiters: deque[_Waiter] = deque()
        self._in_use: dict[int, _Checkout] = {}
        self._size = 0  # open connections plus slots being opened
        self._closed = False
        self._maintainer: gevent.Greenlet | None = None
        self._checked_wait_timeout = False  # the first connection reads @@wait_timeout
        # statistics
        self._created = 0
        self._closed_by = dict.fromkeys(CLOSE_REASONS, 0)
        self._acquires = 0
        self._timeouts = 0
        self._wait_total = 0.0
        self._wait_max = 0.0

    @classmethod
    def from_dsn(cls, dsn: str | DSN, **kwargs: Any) -> Pool:
        """Create a pool of PyMySQL connections to ``dsn`` (a string or a parsed DSN)."""
        parsed = parse_dsn(dsn) if isinstance(dsn, str) else dsn
        hosts = HostList.of(parsed, open_connection, node_ready)
        kwargs.setdefault("name", parsed.redacted)
        pool = cls(hosts.connect, **kwargs)
        hosts.walk_within(pool.timeout)
        return pool

    @classmethod
    def from_config(cls, pool_config: Any, **kwargs: Any) -> Pool:
        """Create a pool from a ``[pool]`` config section (``cfg.pool``): its DSN and every limit.

        ``kwargs`` (``on_connect``, ``name``, or a limit to override) go to the constructor.
        """
        settings = {field: getattr(pool_config, field) for field in POOL_SETTINGS}
        return cls.from_dsn(pool_config.dsn, **{**settings, **kwargs})

    # -- public API ---------------------------------------------------------------------------------

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Any]:
        """Lend a connection for the block; return it (rolled back) or discard it (broken) on exit."""
        record = self._acquire(self.timeout if timeout is None else timeout)
        try:
            yield record.conn
        except Exception as exc:
            self._release(record, "broken" if is_disconnect(exc) else None, dirty=True)
            raise
        except BaseException:
            # gevent.Timeout, GreenletExit, KeyboardInterrupt: possibly mid-reply, so never reuse.
            self._release(record, "broken")
            raise
        else:
            self._release(record, None)

    def stats(self) -> dict[str, Any]:
        """Return a snapshot of the pool's state and counters."""
        with self._lock:
            in_use = len(self._in_use)
            return {
                "size": self._size,
                "idle": len(self._idle),
                "in_use": in_use,
                "waiting": len(self._waiters),
                "max_size": self.max_size,
                "created": self._created,
                "closed": dict(self._closed_by),
                "acquires": self._acquires,
                "timeouts": self._timeouts,
                "wait_total_s": round(self._wait_total, 6),
                "wait_max_s": round(self._wait_max, 6),
            }

    def close(self) -> None:
        """Close idle connections now and in-use ones at their return; fail every waiter with PoolClosed."""
        foreign = os.getpid() != self._pid
        with self._lock:
            self._closed = True
            idle, self._idle = list(self._idle), deque()
            waiters, self._waiters = list(self._waiters), deque()
            if not foreign:
                self._size -= len(idle)
                self._closed_by["closed"] += len(idle)
            for waiter in waiters:
                waiter.grant = _CLOSED
                waiter.event.set()
        if not foreign:  # inherited connections are dropped, never closed
            for record in idle:
                _close_quietly(record.conn)
        maintainer, self._maintainer = self._maintainer, None
        if maintainer is not None and not foreign:
            maintainer.kill(block=False)

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"<Pool {self.name} size={s['size']}/{s['max_size']} idle={s['idle']} "
            f"in_use={s['in_use']} waiting={s['waiting']}>"
        )

    # -- acquire ------------------------------------------------------------------------------------

    def _state(self) -> str:
        s = self.stats()
        return (
            f"pool {self.name}: size {s['size']} of max {s['max_size']}, idle {s['idle']}, "
            f"in use {s['in_use']}, waiting {s['waiting']}"
        )

    def _check_usable(self) -> None:
        if os.getpid() != self._pid:
            raise PoolForkError(
                f"pool {self.name} was created in process {self._pid} and cannot be used in process "
                f"{os.getpid()}: create the pool after the fork"
            )
        if self._closed:
            raise PoolClosed(f"pool {self.name} is closed")

    def _acquire(self, timeout: float) -> _Record:
        self._check_usable()
        started = time.monotonic()
        deadline = started + timeout
        self._ensure_maintainer()
        while True:
            grant = self._take_or_wait(deadline, timeout)
            record = self._make_ready(grant, deadline, timeout)
            if record is not None:
                break
        waited = time.monotonic() - started
        stack = traceback.format_stack()[:-3] if self.leak_timeout > 0 else None
        with self._lock:
            record.uses += 1
            self._in_use[id(record)] = _Checkout(record, stack)
            self._acquires += 1
            self._wait_total += waited
            if waited > self._wait_max:
                self._wait_max = waited
        return record

    def _take_or_wait(self, deadline: float, timeout: float) -> Any:
        """Return a grant: an idle record, or _SLOT to open a new connection. Waits FIFO if neither."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
            if self._size < self.max_size:
                self._size += 1
                return _SLOT
            waiter = _Waiter()
            self._waiters.append(waiter)
        try:
            waiter.event.wait(max(0.0, deadline - time.monotonic()))
        except BaseException:
            # Killed or timed out from outside while waiting: a grant that raced with it is passed on.
            grant = self._settle(waiter)
            if grant is _SLOT:
                self._free_slot()
            elif grant is not None and grant is not _CLOSED:
                self._put_back(grant)
            raise
        grant = self._settle(waiter)
        if grant is None:
            with self._lock:
                self._timeouts += 1
            raise PoolTimeout(f"no connection within {timeout:g}s; {self._state()}")
        if grant is _CLOSED:
            raise PoolClosed(f"pool {self.name} was closed while waiting")
        return grant

    def _settle(self, waiter: _Waiter) -> Any:
        """Take the waiter's grant, or remove it from the queue if it has none (under the lock)."""
        with self._lock:
            grant, waiter.grant = waiter.grant, None
            if grant is None:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
            return grant

    def _make_ready(self, grant: Any, deadline: float, timeout: float) -> _Record | None:
        """Turn a grant into a usable record within the deadline, or None to try again."""
        if grant is _SLOT:
            return self._open(deadline, timeout)
        record: _Record = grant
        now = time.monotonic()
        reason = self._expired(record, now, idle=True)
        if reason is None and self.ping_interval >= 0 and now - record.last_used > self.ping_interval:
            try:
                alive = self._ping(record, deadline)
            except BaseException:
                self._discard(record, "broken")  # interrupted mid-ping: its state is unknown
                raise
            if not alive:
                reason = "broken"
        if reason is not None:
            self._discard(record, reason)
            return None
        return record

    def _open(self, deadline: float, timeout: float) -> _Record:
        """Open a connection in a slot already counted in _size; free the slot if that fails."""
        conn = None
        ready = False
        try:
            with gevent.Timeout(max(0.001, deadline - time.monotonic()), False):
                conn = self._connect()
                if self._on_connect is not None:
                    self._on_connect(conn)
                if not self._checked_wait_timeout:
                    self._checked_wait_timeout = True
                    self._check_wait_timeout(conn)
                ready = True
            if not ready:
                with self._lock:
                    self._timeouts += 1
                raise PoolTimeout(f"connecting took longer than the {timeout:g}s acquire timeout; {self._state()}")
        except BaseException as exc:
            try:
                if conn is not None:
                    _close_quietly(conn)
            finally:
                self._free_slot()
            if isinstance(exc, Exception) and not isinstance(exc, PoolError):
                raise PoolConnectError(f"pool {self.name}: cannot open a connection: {exc}") from exc
            raise
        with self._lock:
            self._created += 1
        return _Record(conn, self.max_lifetime)

    def _ping(self, record: _Record, deadline: float) -> bool:
        ping = getattr(record.conn, "ping", None)
        if ping is None:
            return True
        ok = False
        with gevent.Timeout(max(0.001, deadline - time.monotonic()), False):
            try:
                ping(reconnect=False)
                ok = True
            except Exception as exc:
                log.info("pool %s: a connection failed its ping and is replaced: %s", self.name, exc)
        return ok

    def _check_wait_timeout(self, conn: Any) -> None:
        """Warn once when max_idle is not below the server's wait_timeout (it would close idle connections)."""
        try:
            cur = conn.cursor()
            cur.execute("SELECT @@wait_timeout")
            (wait_timeout,) = cur.fetchone()
            cur.close()
            conn.rollback()
        except Exception:
            return
        if self.max_idle and self.max_idle >= float(wait_timeout):
            log.warning(
                "pool %s: max_idle (%gs) is not below the server's wait_timeout (%ss): idle connections "
                "will be closed by the server first; lower max_idle",
                self.name,
                self.max_idle,
                wait_timeout,
            )

    # -- return and retirement ----------------------------------------------------------------------

    def _expired(self, record: _Record, now: float, idle: bool) -> str | None:
        """Name the rule that retires this record now, if any (max_idle only for an idle record)."""
        if self.max_uses and record.uses >= self.max_uses:
            return "max_uses"
        if record.retire_at and now >= record.retire_at:
            return "max_lifetime"
        if idle and self.max_idle and now - record.last_used > self.max_idle:
            return "max_idle"
        return None

    def _release(self, record: _Record, discard_reason: str | None, dirty: bool = False) -> None:
        with self._lock:
            self._in_use.pop(id(record), None)
        if os.getpid() != self._pid:
            return  # forked: drop it, never close it
        reason = discard_reason
        if reason is None and self._closed:
            reason = "closed"
        if reason is None and getattr(record.conn, "open", True) is False:
            reason = "broken"  # the driver closed its socket itself (lost connection, bad packet sequence)
        if reason is None:
            try:
                reason = self._reset(record, dirty)
            except BaseException:
                self._discard(record, "broken")  # interrupted mid-rollback
                raise
        if reason is None:
            reason = self._expired(record, time.monotonic(), idle=False)
        if reason is not None:
            self._discard(record, reason)
            return
        record.last_used = time.monotonic()
        self._put_back(record)

    def _put_back(self, record: _Record) -> None:
        """Hand a healthy record to the oldest waiter, or make it idle."""
        with self._lock:
            if self._waiters:
                self._hand_to_waiter(record)
            else:
                self._idle.append(record)

    def _reset(self, record: _Record, dirty: bool) -> str | None:
        """Roll back an open transaction; return "broken" when the connection could not be reset."""
        conn = record.conn
        # Skip the ROLLBACK only when the block did not raise and the driver vouches that its status is
        # from the last reply and says no transaction is open.
        if not dirty and transaction_closed(conn):
            return None
        try:
            conn.rollback()
        except Exception as exc:
            log.info("pool %s: rollback on return failed, connection discarded: %s", self.name, exc)
            return "broken"
        return None

    def _discard(self, record: _Record, reason: str) -> None:
        """Close a record's connection and free its slot (or hand the slot to a waiter)."""
        with self._lock:
            self._closed_by[reason] += 1
        try:
            _close_quietly(record.conn)
        finally:
            self._free_slot()

    def _free_slot(self) -> None:
        with self._lock:
            if self._waiters and not self._closed:
                # The slot stays counted: the waiter opens a connection in it.
                self._hand_to_waiter(_SLOT)
            else:
                self._size -= 1

    def _hand_to_waiter(self, grant: Any) -> None:
        """Give a record or a slot to the oldest waiter. Call with the lock held."""
        waiter = self._waiters.popleft()
        waiter.grant = grant
        waiter.event.set()

    # -- maintenance --------------------------------------------------------------------------------

    def _ensure_maintainer(self) -> None:
        if self._maintainer is None:
            self._maintainer = gevent.spawn(self._maintain)

    def _maintain(self) -> None:
        """Background greenlet: retire idle connections, keep min_size open, warn about leaks."""
        while not self._closed:
            try:
                self.maintain()
            except Exception:
                log.exception("pool %s: maintenance failed", self.name)
            gevent.sleep(_MAINTENANCE_INTERVAL)

    def maintain(self) -> None:
        """Run one round of maintenance now (the pool also runs it every second by itself)."""
        if os.getpid() != self._pid or self._closed:
            return
        now = time.monotonic()
        retire: list[tuple[_Record, str]] = []
        with self._lock:
            keep: deque[_Record] = deque()
            # Oldest-returned first; keep at least min_size connections open.
            for record in self._idle:
                reason = self._expired(record, now, idle=True)
                if reason == "max_idle" and self._size - len(retire) <= self.min_size:
                    reason = None
                if reason is not None:
                    retire.append((record, reason))
                else:
                    keep.append(record)
            self._idle = keep
            leaks = [c for c in self._in_use.values() if self._leaked(c, now)]
            for checkout in leaks:
                checkout.warned = True
        for record, reason in retire:
            self._discard(record, reason)
        for checkout in leaks:
            log.warning(
                "pool %s: a connection has been checked out for %.1fs (leak_timeout %gs); acquired at:\n%s",
                self.name,
                now - checkout.since,
                self.leak_timeout,
                "".join(checkout.stack or []),
            )
        self._fill()

    def _leaked(self, checkout: _Checkout, now: float) -> bool:
        return self.leak_timeout > 0 and not checkout.warned and now - checkout.since > self.leak_timeout

    def _fill(self) -> None:
        """Open connections up to min_size (only once the pool has been used, and without waiters)."""
        while True:
            with self._lock:
                if self._closed or self._created == 0 or self._size >= self.min_size or self._waiters:
                    return
                self._size += 1
            try:
                record = self._open(time.monotonic() + self.timeout, self.timeout)
            except PoolError as exc:
                log.info("pool %s: could not refill to min_size: %s", self.name, exc)
                return
            self._release(record, None)


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:
        pass
