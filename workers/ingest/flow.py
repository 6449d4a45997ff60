"""The ingest app (``IngestApp``): lines in (``workers.ingest.pending``), flushers out
(``workers.ingest.commit``), the tables, and the hooks prefork calls. The promise it keeps and how is in
``workers.ingest``'s docstring."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import gevent
import pymysql

from prefork.config.loader import Config
from prefork.interface import ERR_UNAVAILABLE, Peer, WorkerInfo
from prefork.pool import Pool, connect_once, transport
from prefork.settings import Section
from workers.ingest.batch import Share, Source
from workers.ingest.commit import Committer
from workers.ingest.encoding import PAYLOAD, ROW_HEAD, Encoder, RowShape
from workers.ingest.pending import Pending
from workers.ingest.readiness import DatabaseReadiness
from workers.ingest.settings import IngestSettings
from workers.ingest.write import Rejected, Writer, session_setup
from workers.schema import (
    CLIENT_CERT_CHARS,
    CLIENT_CERT_COLUMN,
    LINE_ID_COLUMN,
    MARKER_TABLE,
    create_table_sql,
    ensure_table,
    has_line_id,
    missing_columns,
    table_exists,
)

log = logging.getLogger("workers.ingest")

MARKER_RETENTION_S = 3600.0
PRUNE_INTERVAL_S = 60.0
MARKERS_PRUNED_PER_TRY = 10000  # old markers deleted per statement: a short transaction, however many


class IngestApp:
    """Store each line as a row of ``ingest.table``.

    The instance exists before any worker (``workers.ingest:app`` is imported by the master and by
    ``prefork check``, which never call ``setup``): its per-worker state is declared here, and each
    attribute is set once, in ``setup``.

    Another app stores its lines through the same path by overriding ``table_of`` (its table's name),
    ``row_shape`` (the columns a line fills and their values) and ``table_sql`` (its CREATE TABLE), as
    ``workers.syslog`` does; batching, retries and replies stay this class's, set by ``[ingest]``.
    """

    settings: ClassVar[type[Section] | Sequence[type[Section]]] = IngestSettings
    accepts_line_ids: ClassVar[bool] = True  # handle_lines takes the ids; each is stored once (server.line_ids)

    table: str  # ingest.table
    line_ids: bool  # server.line_ids: the table has a line id column
    client_cert: bool  # ingest.client_cert: the table has a client certificate column
    pool: Pool  # this worker's connections (lazily made)
    pending: Pending  # lines not yet answered: the batch queue, backpressure, expiry
    writer: Writer  # one try at storing lines (LOAD DATA or INSERT, ingest.method)
    committer: Committer  # retries, unknown outcomes, bisection; the counters of what is stored
    _flushers: list[gevent.Greenlet]  # ingest.flushers of them, each committing one batch at a time
    _expirer: gevent.Greenlet  # answers queued lines past their deadline
    _readiness: DatabaseReadiness  # whether the database could be reached lately (/readyz)
    _checker: gevent.Greenlet  # keeps _readiness current
    _marker_retention_s: int  # markers older than this are pruned (outlasting any retry of their batch)
    _last_prune: float  # monotonic time of the last pruning of old markers

    def setup(self, worker: WorkerInfo) -> None:
        """Build this worker's pool (it connects lazily) and start the flushers."""
        cfg = worker.config
        ingest = cfg.section(IngestSettings)
        self.table = self.table_of(cfg)
        self.line_ids = cfg.server.line_ids
        self.client_cert = ingest.client_cert
        self.pool = Pool.from_config(cfg.pool, on_connect=session_setup)
        self.pending = Pending(ingest.batch_size, ingest.commit_timeout, ingest.max_pending, ingest.max_pending_bytes)
        encoder = Encoder(self.table, worker.pid, self.row_shape(cfg), self.client_cert)
        self.writer = Writer(self.pool, encoder, ingest.method)
        # A column the workers add (line_id, client_cert) may be missing when a batch is written: then the
        # committer has the tables made again and retries.
        added = self.line_ids or self.client_cert
        self.committer = Committer(self.pool, self.writer, ingest.commit_timeout, added, self._ensure_tables_quietly)
        self._marker_retention_s = int(max(MARKER_RETENTION_S, 10 * ingest.commit_timeout))
        self._last_prune = time.monotonic()
        self._flushers = [gevent.spawn(self._flush_loop) for _ in range(ingest.flushers)]
        self._expirer = gevent.spawn(self.pending.expire_loop)
        self._readiness = DatabaseReadiness(self.pool, ingest.ready_within, lambda: self.committer.batches_committed)
        self._checker = gevent.spawn(self._readiness.run)
        gevent.spawn(self._ensure_tables_quietly)

    # -- what the rows are (overridden by an app that stores lines its own way) ----------------------

    def table_of(self, cfg: Config) -> str:
        """The name of the table the lines go to: ``ingest.table``."""
        return cfg.section(IngestSettings).table

    def row_shape(self, cfg: Config) -> RowShape:
        """The columns a line fills after received_at, client_addr and worker_pid: the payload."""
        return PAYLOAD

    def table_sql(self, table: str) -> str:
        """The CREATE TABLE (IF NOT EXISTS) of the table."""
        return create_table_sql(table)

    # -- the hot path -------------------------------------------------------------------------------

    def handle(self, line: str, client: Peer) -> Share:
        """Queue one line; return the future of its reply, known once its batch is committed."""
        return self.pending.add([line], self._source(client), None)[0]

    def handle_lines(self, lines: list[str], client: Peer, ids: list[str | None] | None = None) -> list[Share]:
        """Queue the lines of one read; return the futures of their replies, one per line (lines that join
        the same batch share one). ``ids`` (server.line_ids): each line's id or None."""
        return self.pending.add(lines, self._source(client), ids)

    def _source(self, client: Peer) -> Source:
        """Where a client's lines come from, as the rows say: its address, and with ingest.client_cert on
        the subject of its verified certificate (None without one)."""
        if not self.client_cert:
            return client.addr
        return client.addr, client.tls.subject[:CLIENT_CERT_CHARS] if client.tls is not None else None

    def _flush_loop(self) -> None:
        pending = self.pending
        committer = self.committer
        while True:
            batch = pending.take()
            if batch is None:
                return
            started = time.monotonic()
            try:
                reply = committer.commit(functools.partial(pending.unexpired, batch))
            except Rejected as exc:
                rows = batch.rows()
                batch.replies = [ERR_UNAVAILABLE] * len(rows)
                # Its parts are given up at the latest deadline of its lines, so that no line gets ERR
                # unavailable before its own (a rejected value is rare: the others may get theirs late).
                reply = committer.bisect(batch, rows, batch.shares[-1].due, exc)
            except Exception:
                log.exception("ingest: batch of %d lines failed", len(batch.texts))
                reply = ERR_UNAVAILABLE
            pending.settle(batch, reply)
            pending.done(time.monotonic() - started)
            self._maybe_prune()

    # -- tables and housekeeping --------------------------------------------------------------------

    def check(self, worker: WorkerInfo) -> str:
        """``prefork check``: connect to the database and look for the table, its columns (and, with line
        ids on, its line id column)."""
        cfg = worker.config
        table = self.table_of(cfg)
        conn = connect_once(cfg.pool.dsn)
        try:
            via = transport(conn)
            found = table_exists(conn, table)
            ids_missing = found and cfg.server.line_ids and not has_line_id(conn, table)
            cert_on = cfg.section(IngestSettings).client_cert
            cert_missing = found and cert_on and bool(missing_columns(conn, table, (CLIENT_CERT_COLUMN,)))
            absent = missing_columns(conn, table, ROW_HEAD + tuple(self.row_shape(cfg).columns)) if found else []
        finally:
            conn.close()
        state = "exists" if found else "is missing (the workers create it at start, `prefork initdb` now)"
        if absent:
            # The workers create a missing table, but never alter a table someone else made.
            raise RuntimeError(f"table `{table}` in {cfg.pool.dsn.redacted} has no column {', '.join(absent)}")
        if ids_missing:
            state += f" without its unique {LINE_ID_COLUMN} column (the workers add it at start, `prefork initdb` now)"
        if cert_missing:
            state += f" without its {CLIENT_CERT_COLUMN} column (the workers add it at start, `prefork initdb` now)"
        if via != "plaintext":
            via += f", ssl_mode={cfg.pool.dsn.tls.mode}"
        return f"database {cfg.pool.dsn.redacted} answers ({via}), table `{table}` {state}"

    def initdb(self, worker: WorkerInfo) -> str:
        """``prefork initdb``: create the table (and the marker tables) if missing; with server.line_ids on,
        add the line id column and its unique key if missing."""
        cfg = worker.config
        table = self.table_of(cfg)
        conn = connect_once(cfg.pool.dsn)
        try:
            ensure_table(
                conn,
                table,
                line_ids=cfg.server.line_ids,
                create_sql=self.table_sql(table),
                client_cert=cfg.section(IngestSettings).client_cert,
            )
        except pymysql.err.MySQLError as exc:
            raise RuntimeError(f"cannot create table `{table}` in {cfg.pool.dsn.redacted}: {exc}") from None
        finally:
            conn.close()
        return f"table `{table}` ready in {cfg.pool.dsn.redacted}"

    def ensure_tables(self) -> None:
        """Create the ingest table and the marker table if they are missing (and the line id column, with
        server.line_ids on)."""
        with self.pool.connection() as conn:
            ensure_table(
                conn,
                self.table,
                line_ids=self.line_ids,
                create_sql=self.table_sql(self.table),
                client_cert=self.client_cert,
            )

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
                    f"DELETE FROM `{MARKER_TABLE}` WHERE created_at < NOW() - INTERVAL %s SECOND "
                    f"LIMIT {MARKERS_PRUNED_PER_TRY}",
                    (self._marker_retention_s,),
                )
                conn.commit()
        except Exception as exc:
            log.info("ingest: pruning old markers failed: %s", exc)

    # -- lifecycle ----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Pool figures and batch counters for `prefork status`."""
        committer = self.committer
        return {
            "pool": self.pool.stats(),
            "pending": self.pending.lines,
            "pending_bytes": self.pending.nbytes,
            "batches": committer.batches_committed,
            "rows": committer.rows_committed,
            "rejected": committer.rejected,
            "already_stored": committer.already_stored,
            # Where a line's time goes before its OK (summed; make bench divides): waiting in the queue for
            # a flusher, per line; then per batch taken, sending its rows and committing them.
            "taken": self.pending.taken,
            "taken_lines": self.pending.taken_lines,
            "queued_s": round(self.pending.queued_s, 6),
            "write_s": round(self.writer.write_s, 6),
            "commit_s": round(self.writer.commit_s, 6),
        }

    def readiness(self) -> str | None:
        """``/readyz``: None while a database connection could be had within ``ingest.ready_within``."""
        return self._readiness.reason()

    def close(self, timeout: float) -> None:
        """Finish every queued batch (within timeout), then close the pool."""
        self._checker.kill(block=False)
        self.pending.close()
        gevent.joinall(self._flushers, timeout=timeout)
        self._expirer.kill(block=False)
        self.pool.close()
