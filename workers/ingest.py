"""``workers.ingest:app``: every line becomes a row, group-committed; ``OK`` only once it is committed.

Lines from all clients of a worker join the open batch; up to ``ingest.flushers`` transactions at a time
each take the oldest batch (at most ``ingest.batch_size`` rows), write it with multi-row INSERTs plus a
marker row, COMMIT, and only then release the batch's replies. There is no artificial delay: under light
load a line is committed at once, under heavy load batches grow while the flushers are busy.

Failures (SPEC section 6):

- A batch that fails (disconnect, deadlock, database down) is retried through the pool with capped
  backoff; the pool discards broken connections. Lines not committed within ``ingest.commit_timeout`` of
  their arrival get ``ERR unavailable``; a line never gets ``OK`` unless its row is committed.
- When the connection breaks during COMMIT the outcome is unknown. The worker reconnects, makes sure the
  old session is gone (so its COMMIT cannot still land), and looks up the batch's marker: found means
  committed (``OK``), missing means not (retry, or ``ERR`` past the deadline). So a retry never stores a
  line twice and ``ERR`` always means not stored.
- With ``ingest.max_pending`` lines waiting, ``handle`` blocks its reader: the worker stops reading from
  clients until batches drain, and memory stays bounded however long the outage.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import gevent
import pymysql
from gevent.event import Event

from prefork.app import Client, WorkerInfo
from prefork.pool import Pool, PoolError, is_disconnect
from workers.schema import MARKER_TABLE, ensure_table, quote_identifier

log = logging.getLogger("workers.ingest")

OK = "OK"
ERR_UNAVAILABLE = "ERR unavailable"
# Split a batch's INSERT well below max_allowed_packet (16 MiB by default): a character is at most 4 bytes
# of UTF-8, and escaping can double it.
STATEMENT_CHARS = 1_000_000
RETRY_DELAY_MIN = 0.05
RETRY_DELAY_MAX = 2.0
MARKER_RETENTION_S = 3600.0
PRUNE_INTERVAL_S = 60.0
RETRYABLE_CODES = frozenset({1205, 1213})  # lock wait timeout, deadlock
NO_SUCH_TABLE = 1146
UNKNOWN_THREAD = 1094


class Batch:
    """Rows committed together; also the future of each of its lines' reply."""

    __slots__ = ("rows", "taken", "first_at", "reply", "_done")

    def __init__(self) -> None:
        self.rows: list[tuple[float, str, str]] = []  # (received_at epoch, client address, line)
        self.taken = False  # a flusher owns it: no more rows join
        self.first_at = time.monotonic()
        self.reply: str | None = None
        self._done = Event()

    def get(self, block: bool = True, timeout: float | None = None) -> str:
        """The reply of every line of this batch, once known."""
        if self.reply is not None:
            return self.reply
        self._done.wait(timeout)
        return self.reply or ERR_UNAVAILABLE

    def ready(self) -> bool:
        return self.reply is not None

    def resolve(self, reply: str) -> None:
        self.reply = reply
        self._done.set()


class UnknownOutcome(Exception):
    """The connection broke during COMMIT: the batch may or may not be stored."""

    def __init__(self, thread_id: int | None):
        super().__init__(thread_id)
        self.thread_id = thread_id


class IngestApp:
    """Store each line as a row of ``ingest.table``."""

    def setup(self, worker: WorkerInfo) -> None:
        """Build this worker's pool (it connects lazily) and start the flushers."""
        cfg = worker.config
        self.pid = worker.pid
        self.table = cfg.ingest.table
        self.batch_size = cfg.ingest.batch_size
        self.commit_timeout = cfg.ingest.commit_timeout
        self.max_pending = cfg.ingest.max_pending
        p = cfg.pool
        self.pool = Pool.from_dsn(
            p.dsn,
            min_size=p.min_size,
            max_size=p.max_size,
            timeout=p.timeout,
            max_uses=p.max_uses,
            max_idle=p.max_idle,
            max_lifetime=p.max_lifetime,
            ping_interval=p.ping_interval,
            leak_timeout=p.leak_timeout,
        )
        quoted = quote_identifier(self.table)
        self._insert_head = f"INSERT INTO {quoted} (received_at, client_addr, worker_pid, payload) VALUES "
        self._batches: deque[Batch] = deque()
        self._work = Event()
        self._room = Event()
        self._room.set()
        self.pending = 0  # lines accepted and not yet answered
        self._stopping = False
        self._last_prune = time.monotonic()
        self._stamp_secs = -1
        self._stamp_text = ""
        self.batches_committed = 0
        self.rows_committed = 0
        self._flushers = [gevent.spawn(self._flush_loop) for _ in range(cfg.ingest.flushers)]
        gevent.spawn(self._ensure_tables_quietly)

    # -- the hot path -------------------------------------------------------------------------------

    def handle(self, line: str, client: Client) -> Batch:
        """Queue one line; return its batch, whose get() is the reply once the batch is committed."""
        while self.pending >= self.max_pending:
            # Backpressure: this reader waits, so the worker stops reading from clients.
            self._room.clear()
            self._room.wait()
        batches = self._batches
        batch = batches[-1] if batches else None
        if batch is None or batch.taken or len(batch.rows) >= self.batch_size:
            batch = Batch()
            batches.append(batch)
        batch.rows.append((time.time(), client.addr, line))
        self.pending += 1
        if not self._work.is_set():
            self._work.set()
        return batch

    def _flush_loop(self) -> None:
        while True:
            if not self._batches:
                if self._stopping:
                    return
                self._work.clear()
                self._work.wait()
                continue
            batch = self._batches.popleft()
            batch.taken = True
            try:
                reply = self._commit(batch)
            except Exception:
                log.exception("ingest: batch of %d lines failed", len(batch.rows))
                reply = ERR_UNAVAILABLE
            batch.resolve(reply)
            self.pending -= len(batch.rows)
            if not self._room.is_set() and self.pending < self.max_pending:
                self._room.set()
            self._maybe_prune()

    # -- committing a batch -------------------------------------------------------------------------

    def _commit(self, batch: Batch) -> str:
        """Store the batch exactly once if at all possible before its deadline; return the reply."""
        deadline = batch.first_at + self.commit_timeout
        marker = os.urandom(16)
        delay = RETRY_DELAY_MIN
        failures = 0
        while True:
            try:
                self._write(batch, marker, deadline)
                self.batches_committed += 1
                self.rows_committed += len(batch.rows)
                if failures:
                    log.info("ingest: batch of %d lines committed after %d failed tries", len(batch.rows), failures)
                return OK
            except UnknownOutcome as unknown:
                if self._resolve_unknown(marker, unknown.thread_id):
                    return OK
            except Exception as exc:
                if not self._retryable(exc):
                    raise
                if failures == 0:
                    log.warning("ingest: batch of %d lines failed, retrying: %s", len(batch.rows), exc)
            failures += 1
            if time.monotonic() + delay >= deadline:
                log.error(
                    "ingest: %d lines not committed within commit_timeout (%gs): ERR unavailable",
                    len(batch.rows),
                    self.commit_timeout,
                )
                return ERR_UNAVAILABLE
            gevent.sleep(delay)
            delay = min(RETRY_DELAY_MAX, delay * 2)

    def _write(self, batch: Batch, marker: bytes, deadline: float) -> None:
        timeout = max(0.05, min(self.pool.timeout, deadline - time.monotonic()))
        thread_id: int | None = None
        try:
            with self.pool.connection(timeout=timeout) as conn:
                cur = conn.cursor()
                for sql in self._statements(conn, batch):
                    cur.execute(sql)
                cur.execute(f"INSERT INTO `{MARKER_TABLE}` (batch_id) VALUES (%s)", (marker,))
                thread_id = conn.thread_id()
                conn.commit()
        except Exception as exc:
            # Only here, outside the block, does the error become UnknownOutcome: the pool must see the
            # disconnect itself to discard the connection rather than roll it back and reuse it.
            if thread_id is not None and is_disconnect(exc):
                raise UnknownOutcome(thread_id) from exc
            raise

    def _statements(self, conn: Any, batch: Batch) -> Iterator[str]:
        """Multi-row INSERTs of the batch, each under STATEMENT_CHARS of payload.

        Values go through the driver's own parameter escaping (``conn.escape``, which is what
        ``cursor.execute(sql, params)`` applies, and which honours NO_BACKSLASH_ESCAPES); building the
        statement here skips the driver's per-value type dispatch and %-formatting of 4 parameters per
        row, the largest cost of the ingest path. No value is ever formatted into SQL unescaped.
        """
        escape = conn.escape
        stamp = self._stamp
        addrs: dict[str, str] = {}
        pid = self.pid
        values: list[str] = []
        size = 0
        for received, addr, line in batch.rows:
            quoted_addr = addrs.get(addr)
            if quoted_addr is None:
                quoted_addr = addrs[addr] = escape(addr)
            if size + len(line) > STATEMENT_CHARS and values:
                yield self._insert_head + ",".join(values)
                values, size = [], 0
            values.append(f"({stamp(received)},{quoted_addr},{pid},{escape(line)})")
            size += len(line)
        if values:
            yield self._insert_head + ",".join(values)

    def _stamp(self, ts: float) -> str:
        """A DATETIME(6) literal in UTC for an epoch timestamp (the second's text is cached)."""
        secs = int(ts)
        if secs != self._stamp_secs:
            self._stamp_secs = secs
            self._stamp_text = "'" + time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(secs))
        return f"{self._stamp_text}.{int((ts - secs) * 1e6):06d}'"

    def _retryable(self, exc: Exception) -> bool:
        if isinstance(exc, PoolError) or is_disconnect(exc):
            return True
        if isinstance(exc, pymysql.err.MySQLError) and exc.args:
            if exc.args[0] == NO_SUCH_TABLE:
                self._ensure_tables_quietly()
                return True
            return exc.args[0] in RETRYABLE_CODES
        return False

    def _resolve_unknown(self, marker: bytes, thread_id: int | None) -> bool:
        """After a COMMIT whose reply was lost: True if the batch is stored, False if it is not.

        Keeps asking until the database answers, however long that takes: replying ERR for a batch
        that may be stored would break the promise that ERR means not stored.
        """
        delay = RETRY_DELAY_MIN
        while True:
            try:
                with self.pool.connection() as conn:
                    cur = conn.cursor()
                    if thread_id:
                        self._wait_session_gone(cur, thread_id)
                    cur.execute(f"SELECT 1 FROM `{MARKER_TABLE}` WHERE batch_id = %s", (marker,))
                    found = cur.fetchone() is not None
                    conn.rollback()
                log.warning(
                    "ingest: COMMIT outcome was unknown; the marker says %s", "committed" if found else "not committed"
                )
                return found
            except Exception as exc:
                if not self._retryable(exc):
                    log.warning("ingest: resolving a COMMIT outcome failed, retrying: %s", exc)
            gevent.sleep(delay)
            delay = min(RETRY_DELAY_MAX, delay * 2)

    @staticmethod
    def _wait_session_gone(cur: Any, thread_id: int) -> None:
        """Kill the broken session if the server still has it, and wait until it is gone."""
        try:
            cur.execute(f"KILL {int(thread_id)}")
        except pymysql.err.MySQLError as exc:
            if not exc.args or exc.args[0] != UNKNOWN_THREAD:
                raise
        for _ in range(200):
            cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s", (thread_id,))
            if cur.fetchone()[0] == 0:
                return
            gevent.sleep(0.05)
        raise pymysql.err.OperationalError(2013, f"session {thread_id} is still alive after KILL")

    # -- tables and housekeeping --------------------------------------------------------------------

    def ensure_tables(self) -> None:
        """Create the ingest table and the marker table if they are missing."""
        with self.pool.connection() as conn:
            ensure_table(conn, self.table)

    def _ensure_tables_quietly(self) -> None:
        try:
            self.ensure_tables()
        except Exception as exc:
            log.warning("ingest: cannot create the tables yet (%s); lines wait and batches retry", exc)

    def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < PRUNE_INTERVAL_S:
            return
        self._last_prune = now
        try:
            with self.pool.connection() as conn:
                conn.cursor().execute(
                    f"DELETE FROM `{MARKER_TABLE}` WHERE created_at < NOW() - INTERVAL %s SECOND LIMIT 10000",
                    (int(max(MARKER_RETENTION_S, 10 * self.commit_timeout)),),
                )
                conn.commit()
        except Exception as exc:
            log.info("ingest: pruning old markers failed: %s", exc)

    # -- lifecycle ----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Pool figures and batch counters for `prefork status`."""
        return {
            "pool": self.pool.stats(),
            "pending": self.pending,
            "batches": self.batches_committed,
            "rows": self.rows_committed,
        }

    def close(self, timeout: float) -> None:
        """Finish every queued batch (within timeout), then close the pool."""
        self._stopping = True
        self._work.set()
        gevent.joinall(self._flushers, timeout=timeout)
        self.pool.close()


app = IngestApp()
