"""``workers.lookup:app``: each line is a key; the reply is its value from a table, looked up in batches.

A second real application, built only from what prefork offers any app: its own settings section
(``[lookup]``), the worker's pool, future replies, and ``check`` / ``initdb`` hooks. Keys from all the
clients of a worker wait in one queue; up to ``lookup.lookers`` greenlets each take up to
``lookup.batch_size`` of them and answer them with one ``SELECT ... WHERE k IN (...)``. No artificial
delay: a lone key is looked up at once, and under load batches grow while the lookers are busy.

Replies, one line each:

- the value, with backslash, LF and CR written as ``\\\\``, ``\\n`` and ``\\r`` (a reply is one line);
- ``ERR not-found`` when the table has no such key;
- ``ERR unavailable`` when the database did not answer within ``lookup.timeout`` (failed queries are
  retried with backoff until then).

``prefork initdb workers.lookup:app`` creates the table::

    CREATE TABLE lookup_values (k VARCHAR(255) PRIMARY KEY, v MEDIUMTEXT NOT NULL)  -- utf8mb4, binary

With ``lookup.max_pending`` keys waiting, ``handle`` blocks: the worker stops reading from its clients
until the lookers catch up, so memory stays bounded while the database is slow or down.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import gevent
from gevent.event import AsyncResult, Event

from prefork.interface import ERR_UNAVAILABLE, Peer, WorkerInfo
from prefork.pool import Pool, connect_once
from prefork.settings import Section, option, positive_int, positive_seconds, table_name
from workers.schema import quote_identifier, table_exists

log = logging.getLogger("workers.lookup")

ERR_NOT_FOUND = "ERR not-found"
RETRY_DELAY_MIN = 0.05
RETRY_DELAY_MAX = 2.0


# fmt: off
class LookupSettings(Section, name="lookup"):
    """``[lookup]``: where the values are and how keys are batched."""

    table: str = option(
        "lookup_values", table_name, "table of keys (column k) and values (column v)", flag="--lookup-table")
    batch_size: int = option("500", positive_int, "most keys per SELECT", flag="--lookup-batch")
    lookers: int = option("2", positive_int, "concurrent SELECTs per worker")
    timeout: float = option(
        "10", positive_seconds, "reply ERR unavailable to a key not looked up within this many seconds")
    max_pending: int = option(
        "10000", positive_int, "keys waiting per worker before it stops reading from clients")
# fmt: on


def create_table_sql(table: str) -> str:
    """The CREATE TABLE statement of the lookup table (keys compared byte for byte)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {quote_identifier(table)} ("
        "k VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY, "
        "v MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL) ENGINE=InnoDB"
    )


def escape(value: str) -> str:
    """A value as a one-line reply: backslash, LF and CR escaped."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


class LookupApp:
    """Answer each key with its value from ``lookup.table``."""

    settings = LookupSettings

    def setup(self, worker: WorkerInfo) -> None:
        """Read [lookup], build this worker's pool (it connects lazily) and start the lookers."""
        self.conf = worker.config.section(LookupSettings)
        self.pool = Pool.from_config(worker.config.pool)
        self.select = f"SELECT k, v FROM {quote_identifier(self.conf.table)} WHERE k IN "
        self.queue: deque[tuple[str, AsyncResult, float]] = deque()  # key, its reply, its deadline
        self.work = Event()
        self.room = Event()
        self.room.set()
        self.stopping = False
        self.looked_up = self.found = self.failures = 0
        self.lookers = [gevent.spawn(self._look_loop) for _ in range(self.conf.lookers)]

    def handle(self, line: str, client: Peer) -> AsyncResult:
        """Queue the key; its reply is a future the lookers fill. Blocks while the queue is full."""
        while len(self.queue) >= self.conf.max_pending:
            self.room.clear()
            self.room.wait()
        reply = AsyncResult()
        self.queue.append((line, reply, time.monotonic() + self.conf.timeout))
        self.work.set()
        return reply

    def _look_loop(self) -> None:
        delay = RETRY_DELAY_MIN
        while True:
            if not self.queue:
                if self.stopping:
                    return
                self.work.clear()
                self.work.wait()
                continue
            batch = [self.queue.popleft() for _ in range(min(len(self.queue), self.conf.batch_size))]
            self.room.set()
            try:
                values = self._select({key for key, _, _ in batch})
            except Exception as exc:
                self.failures += 1
                log.warning("lookup: a SELECT of %d keys failed, retrying: %s", len(batch), exc)
                self._requeue_or_give_up(batch)
                gevent.sleep(delay)
                delay = min(RETRY_DELAY_MAX, delay * 2)
                continue
            delay = RETRY_DELAY_MIN
            self.looked_up += len(batch)
            for key, reply, _ in batch:
                value = values.get(key)
                if value is not None:
                    self.found += 1
                reply.set(ERR_NOT_FOUND if value is None else escape(value))

    def _select(self, keys: set[str]) -> dict[str, str]:
        # Every key is a query parameter; the pool times out, retires and replaces connections for us.
        with self.pool.connection() as conn:
            cur = conn.cursor()
            cur.execute(self.select + "(" + ",".join(["%s"] * len(keys)) + ")", sorted(keys))
            return dict(cur.fetchall())

    def _requeue_or_give_up(self, batch: list[tuple[str, AsyncResult, float]]) -> None:
        now = time.monotonic()
        for item in reversed(batch):  # back at the front, in their order
            if item[2] <= now:
                item[1].set(ERR_UNAVAILABLE)
            else:
                self.queue.appendleft(item)

    def stats(self) -> dict[str, Any]:
        """Figures for ``prefork status``."""
        return {
            "pool": self.pool.stats(),
            "pending": len(self.queue),
            "looked_up": self.looked_up,
            "found": self.found,
            "failures": self.failures,
        }

    def close(self, timeout: float) -> None:
        """Answer every queued key (within ``timeout``; the rest get ERR unavailable), close the pool."""
        self.stopping = True
        self.work.set()
        gevent.joinall(self.lookers, timeout=timeout)
        gevent.killall(self.lookers)
        while self.queue:
            self.queue.popleft()[1].set(ERR_UNAVAILABLE)
        self.pool.close()

    # -- hooks of prefork check / prefork initdb -----------------------------------------------------

    def check(self, worker: WorkerInfo) -> str:
        """Connect and look for the table."""
        conf, dsn = worker.config.section(LookupSettings), worker.config.pool.dsn
        conn = connect_once(dsn)
        try:
            found = table_exists(conn, conf.table)
        finally:
            conn.close()
        if not found:
            raise RuntimeError(f"table `{conf.table}` is missing in {dsn.redacted} (run prefork initdb)")
        return f"table `{conf.table}` found in {dsn.redacted}"

    def initdb(self, worker: WorkerInfo) -> str:
        """Create the table if it is missing."""
        conf, dsn = worker.config.section(LookupSettings), worker.config.pool.dsn
        conn = connect_once(dsn)
        try:
            conn.cursor().execute(create_table_sql(conf.table))
        finally:
            conn.close()
        return f"table `{conf.table}` ready in {dsn.redacted}"


app = LookupApp()
