"""The ingest app (``IngestApp``): lines in, batches queued, flushers committing them (the promise and
the mechanism are in ``workers.ingest``'s docstring)."""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pymysql
from gevent.event import Event

from prefork.app import ERR_UNAVAILABLE, Client, WorkerInfo
from prefork.pool import Pool, PoolError, connect_once, is_disconnect, set_session_variable
from prefork.settings import Section, choice, option, positive_int, positive_seconds, size, table_name
from workers.ingest.batch import Batch, Rows, Share
from workers.ingest.outcome import Session, marker_committed, server_of
from workers.schema import LINE_ID_COLUMN, MARKER_TABLE, ensure_table, has_line_id, quote_identifier, table_exists

log = logging.getLogger("workers.ingest")

OK = "OK"
ERR_REJECTED = "ERR rejected"
# Split a batch's INSERT well below max_allowed_packet (16 MiB by default): a character is at most 4 bytes
# of UTF-8, and escaping can double it.
STATEMENT_CHARS = 1_000_000
RETRY_DELAY_MIN = 0.05
RETRY_DELAY_MAX = 2.0
MARKER_RETENTION_S = 3600.0
PRUNE_INTERVAL_S = 60.0
EXPIRE_INTERVAL_S = 0.25
# Lock wait timeout, deadlock, and "failed to read auto-increment value": a wait for the table's AUTO-INC
# lock (which a LOAD holds for its whole statement) that timed out.
RETRYABLE_CODES = frozenset({1205, 1213, 1467})
# How long the server waits for a stalled worker of ours on ingest's connections, in a statement
# (net_read_timeout) and between the statements of a transaction (MariaDB's
# idle_write_transaction_timeout), before it drops the session and so rolls its transaction back. A worker
# that hangs (frozen, starved of CPU, cut off) would otherwise hold its locks for as long as it hangs:
# the table's AUTO-INC lock, which a LOAD holds until its last data packet (innodb_autoinc_lock_mode = 1,
# the default), and the row locks of its line ids, which the same lines resent elsewhere must wait for.
# The statements of a batch follow each other within milliseconds, and our data is in memory.
STALLED_CLIENT_S = 5
NO_SUCH_TABLE = 1146
# The server refuses LOAD DATA LOCAL INFILE: ER_NOT_ALLOWED_COMMAND (older servers), MariaDB's
# ER_LOAD_INFILE_CAPABILITY_DISABLED (local_infile = OFF), MySQL 8's "loading local data is disabled".
LOAD_REFUSED_CODES = frozenset({1148, 4166, 3948, 3950})
MARKER_INSERT = f"INSERT INTO `{MARKER_TABLE}` (batch_id) VALUES (%s)"
# The file of a LOAD: tab-separated fields, one row per LF, backslash escapes. Hex literals, so that the
# statement means the same under NO_BACKSLASH_ESCAPES.
LOAD_FORMAT = "CHARACTER SET utf8mb4 FIELDS TERMINATED BY x'09' ESCAPED BY x'5c' LINES TERMINATED BY x'0a'"
DUPLICATE_KEY = 1062
BAD_FIELD = 1054  # unknown column: line_id not added yet (line ids just turned on)
# A duplicate on the line id key ("for key 'line_id'", MySQL 8: "'table.line_id'"): the id was committed
# by another transaction meanwhile. An id never holds a quote, so the key's name is the last quoted part.
LINE_ID_TAKEN = re.compile(rf"for key '(?:[^']*\.)?{LINE_ID_COLUMN}'$")
ID_LOOKUP_CHUNK = 1000  # ids per SELECT ... IN (...), well below max_allowed_packet
# Errors about a value, which the same rows get every time: bad column value, cannot be NULL, duplicate
# key (a unique index an operator added), out of range, data too long, incorrect string value (charset),
# invalid characters, foreign key, CHECK constraint.
DATA_ERROR_CODES = frozenset({1048, 1062, 1264, 1292, 1300, 1366, 1367, 1406, 1452, 3819, 4025})


class UnknownOutcome(Exception):
    """The COMMIT itself failed: the lines may or may not be stored."""

    def __init__(self, session: Session):
        super().__init__(session)
        self.session = session


# fmt: off
class IngestSettings(Section, name="ingest"):
    """``[ingest]``: where and how the lines are stored."""

    table: str = option(
        "received_lines", table_name, "target table (always quoted with backticks in SQL)", flag="--table")
    batch_size: int = option("1000", positive_int, "most rows per transaction", flag="--batch-size")
    flushers: int = option("2", positive_int, "concurrent transactions per worker", flag="--flushers")
    commit_timeout: float = option(
        "30", positive_seconds, "give up on a line (reply ERR unavailable) after this many seconds",
        flag="--commit-timeout")
    max_pending: int = option(
        "100000", positive_int, "lines buffered per worker before it stops reading from clients",
        flag="--max-pending")
    max_pending_bytes: int = option(
        "64MiB", size,
        "memory of buffered lines per worker before it stops reading from clients (512K, 64MiB, 1G)",
        flag="--max-pending-bytes")
    method: str = option(
        "auto", choice("auto", "load", "insert"),
        "how batches are sent: load (LOAD DATA LOCAL INFILE from memory), insert (multi-row INSERT), "
        "auto (load, falling back to insert when the server refuses it)", flag="--ingest-method")
# fmt: on


class Rejected(Exception):
    """The database refused a value of these lines (DATA_ERROR_CODES): retrying them as they are is futile."""


class LineIdTaken(Exception):
    """Another transaction committed one of the batch's line ids meanwhile: try again, the lookup finds it."""


class IngestApp:
    """Store each line as a row of ``ingest.table``."""

    settings = IngestSettings
    accepts_line_ids = True  # handle_lines takes the ids; each is stored once (server.line_ids)

    def setup(self, worker: WorkerInfo) -> None:
        """Build this worker's pool (it connects lazily) and start the flushers."""
        cfg = worker.config
        ingest = cfg.section(IngestSettings)
        self.pid = worker.pid
        self.table = ingest.table
        self.batch_size = ingest.batch_size
        self.commit_timeout = ingest.commit_timeout
        self.max_pending = ingest.max_pending
        self.max_pending_bytes = ingest.max_pending_bytes
        self.method = ingest.method
        self.line_ids = cfg.server.line_ids
        self._use_load = self.method != "insert"
        self._unclean_loads = 0
        self.pool = Pool.from_config(cfg.pool, on_connect=_session_setup)
        quoted = quote_identifier(self.table)
        columns = "(received_at, client_addr, worker_pid, payload)"
        self._insert_head = f"INSERT INTO {quoted} {columns} VALUES "
        self._load_sql = f"LOAD DATA LOCAL INFILE 'prefork-batch' INTO TABLE {quoted} {LOAD_FORMAT} {columns}"
        # Rows with ids name the line id column too; rows without any keep the statements above, so that
        # with line ids off nothing differs from a table without the column.
        with_id = f"(received_at, client_addr, worker_pid, payload, {LINE_ID_COLUMN})"
        self._insert_head_ids = f"INSERT INTO {quoted} {with_id} VALUES "
        self._load_sql_ids = f"LOAD DATA LOCAL INFILE 'prefork-batch' INTO TABLE {quoted} {LOAD_FORMAT} {with_id}"
        self._id_lookup = f"SELECT {LINE_ID_COLUMN} FROM {quoted} WHERE {LINE_ID_COLUMN} IN "
        self._load_fields: dict[str, str] = {}  # client address -> its escaped field in a LOAD file
        self._batches: deque[Batch] = deque()
        self._work = Event()
        self._room = Event()
        self._room.set()
        self.pending = 0  # lines accepted and not yet answered
        self.pending_bytes = 0  # the memory their text holds
        self._stopping = False
        self._last_prune = time.monotonic()
        self._stamp_secs = -1
        self._stamp_text = ""
        self.batches_committed = 0
        self.rows_committed = 0
        self.rejected = 0
        self.already_stored = 0  # lines answered OK because their id was stored before
        self._flushers = [gevent.spawn(self._flush_loop) for _ in range(ingest.flushers)]
        self._expirer = gevent.spawn(self._expire_loop)
        gevent.spawn(self._ensure_tables_quietly)

    # -- the hot path -------------------------------------------------------------------------------

    def handle(self, line: str, client: Client) -> Share:
        """Queue one line; return the future of its reply, known once its batch is committed."""
        return self.handle_lines([line], client)[0]

    def handle_lines(self, lines: list[str], client: Client, ids: list[str | None] | None = None) -> list[Share]:
        """Queue the lines of one read; return the futures of their replies, one per line (lines that join
        the same batch share one). ``ids`` (server.line_ids): each line's id or None."""
        if ids is not None and ids.count(None) == len(ids):
            ids = None  # no line of this read has an id: nothing to keep per line
        while self.pending >= self.max_pending or self.pending_bytes >= self.max_pending_bytes:
            # Backpressure: this reader waits, so the worker stops reading from clients.
            self._room.clear()
            self._room.wait()
        received = time.time()
        due = time.monotonic() + self.commit_timeout  # these lines' own deadline, whichever batch they join
        addr = client.addr
        batches = self._batches
        replies: list[Share] = []
        done = 0
        while done < len(lines):
            batch = batches[-1] if batches else None
            if batch is None or batch.taken or len(batch.texts) >= self.batch_size:
                batch = Batch()
                batches.append(batch)
            count = min(len(lines) - done, self.batch_size - len(batch.texts))
            part = lines if count == len(lines) else lines[done : done + count]
            size = sum(map(sys.getsizeof, part))
            if ids is not None or batch.ids is not None:
                if batch.ids is None:
                    batch.ids = [None] * len(batch.texts)
                id_part = ids[done : done + count] if ids is not None else [None] * count
                batch.ids += id_part
                size += sum(map(sys.getsizeof, id_part))
            share = Share(batch, len(batch.texts), count, due, size)
            replies += [share] * count
            batch.texts += part
            batch.runs.append((received, addr, count))
            batch.shares.append(share)
            batch.nbytes += size
            self.pending += count
            self.pending_bytes += size
            done += count
        if not self._work.is_set():
            self._work.set()
        return replies

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
                reply = self._commit(functools.partial(self._unexpired, batch))
            except Rejected as exc:
                rows = batch.rows()
                batch.replies = [ERR_UNAVAILABLE] * len(rows)
                # Its parts are given up at the latest deadline of its lines, so that no line gets ERR
                # unavailable before its own (a rejected value is rare: the others may get theirs late).
                reply = self._bisect(batch, rows, batch.shares[-1].due, exc)
            except Exception:
                log.exception("ingest: batch of %d lines failed", len(batch.texts))
                reply = ERR_UNAVAILABLE
            self._settled(batch, reply)
            self._maybe_prune()

    def _settled(self, batch: Batch, reply: str) -> None:
        """Release a batch's replies and its room in the queue."""
        batch.resolve(reply)
        self._release(len(batch.texts), batch.nbytes)
        batch.texts = []  # answered: the texts are not needed any more
        batch.runs = []
        batch.shares = []
        batch.ids = None

    def _release(self, lines: int, nbytes: int) -> None:
        """Lines answered: their room in the queue is free (a reader waiting for it goes on)."""
        self.pending -= lines
        self.pending_bytes -= nbytes
        if not self._room.is_set() and self.pending < self.max_pending and self.pending_bytes < self.max_pending_bytes:
            self._room.set()

    def _unexpired(self, batch: Batch, now: float) -> tuple[Rows, float]:
        """A batch a flusher holds: answer ERR unavailable to its lines whose deadline has passed; return
        the others and their earliest deadline (no rows: none is left)."""
        lines, nbytes = batch.drop_expired(now)
        if lines:
            self._release(lines, nbytes)
            log.error(
                "ingest: %d lines not committed within commit_timeout (%gs): ERR unavailable",
                lines,
                self.commit_timeout,
            )
        if not batch.shares:
            return Rows([], []), now
        return batch.rows(), batch.due()

    def _expire_loop(self) -> None:
        """Answer ERR unavailable to queued lines past their commit_timeout: they were never sent to the
        database, so this is safe even while every flusher is stuck."""
        batches = self._batches
        while True:
            gevent.sleep(EXPIRE_INTERVAL_S)
            now = time.monotonic()
            expired = 0
            # Queued lines are in arrival order: the expired ones are the front of the first batches.
            while batches:
                batch = batches[0]
                lines, nbytes = batch.drop_expired(now)
                self._release(lines, nbytes)
                expired += lines
                if batch.shares:
                    break
                batches.popleft()
                batch.taken = True
            if expired:
                log.error(
                    "ingest: %d queued lines were not sent within commit_timeout (%gs), every flusher being "
                    "busy: ERR unavailable",
                    expired,
                    self.commit_timeout,
                )

    # -- committing a batch -------------------------------------------------------------------------

    def _commit(self, pick: Callable[[float], tuple[Rows, float]]) -> str:
        """Store some lines exactly once if at all possible, each before its own deadline; return their reply.

        ``pick(now)`` gives the lines still to store and the earliest of their deadlines, having answered
        those whose deadline has passed (no rows: none is left, the reply is ERR unavailable). It is asked
        again after each failed try, which never waits past that earliest deadline: a line gets its ERR
        when its own commit_timeout is over, neither with the first lines of its batch nor a backoff early.
        Raises Rejected when the database refuses one of their values.
        """
        lines, deadline = pick(time.monotonic())
        marker = os.urandom(16)
        delay = RETRY_DELAY_MIN
        failures = 0
        while len(lines):
            try:
                skipped = self._write(lines, marker, deadline)
                self.batches_committed += 1
                self.rows_committed += len(lines) - skipped
                self.already_stored += skipped
                if failures:
                    log.info("ingest: batch of %d lines committed after %d failed tries", len(lines), failures)
                return OK
            except LineIdTaken as exc:
                # Not a failure: the other transaction has committed (the INSERT waited for it), so the
                # next try's lookup finds the id. Each try finds at least one more id: no delay needed.
                log.debug("ingest: %s (%s); the batch is tried again", exc, exc.__cause__)
                if time.monotonic() < deadline:
                    continue
            except UnknownOutcome as unknown:
                if self._resolve_unknown(marker, unknown.session):
                    self.batches_committed += 1
                    self.rows_committed += len(lines)
                    return OK
            except Rejected:
                raise
            except Exception as exc:
                if not self._retryable(exc):
                    raise
                if failures == 0:
                    log.warning("ingest: batch of %d lines failed, retrying: %s", len(lines), exc)
            failures += 1
            gevent.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(RETRY_DELAY_MAX, delay * 2)
            remaining, deadline = pick(time.monotonic())
            if len(remaining) != len(lines):
                # Every try so far is known not to have committed; the lines that are left get a marker of
                # their own, so that no earlier try's marker could ever stand for them.
                lines, marker = remaining, os.urandom(16)
        return ERR_UNAVAILABLE

    def _bisect(self, batch: Batch, rows: Rows, deadline: float, exc: Rejected) -> str:
        """Store the rows of a rejected batch in halves until the offending lines are alone; give those
        ERR rejected. Sets each line's own reply in ``batch.replies``; returns the batch's reply."""
        replies = batch.replies
        assert replies is not None  # made by the caller before bisecting
        if len(rows) == 1:
            replies[rows.offset] = ERR_REJECTED
            self.rejected += 1
            log.warning("ingest: a line from %s was rejected by the database: %s", rows.runs[0][1], exc.__cause__)
            return ERR_REJECTED
        for part in rows.halves():
            try:
                reply = self._commit(functools.partial(self._until, part, deadline))
            except Rejected as part_exc:
                self._bisect(batch, part, deadline, part_exc)
                continue
            except Exception:
                log.exception("ingest: part of a rejected batch failed")
                reply = ERR_UNAVAILABLE
            replies[part.offset : part.offset + len(part)] = [reply] * len(part)
        return OK

    def _until(self, rows: Rows, deadline: float, now: float) -> tuple[Rows, float]:
        """Lines with one deadline for them all (a part of a rejected batch): all of them, or none once it
        has passed."""
        if now < deadline:
            return rows, deadline
        log.error(
            "ingest: %d lines not committed within commit_timeout (%gs): ERR unavailable",
            len(rows),
            self.commit_timeout,
        )
        return Rows([], []), deadline

    def _write(self, lines: Rows, marker: bytes, deadline: float) -> int:
        """One try at storing the lines with their marker; return how many were not written because their
        id was stored already (or earlier in the same lines)."""
        timeout = max(0.05, min(self.pool.timeout, deadline - time.monotonic()))
        session: Session | None = None  # known once the COMMIT is about to be sent
        try:
            with self.pool.connection(timeout=timeout) as conn:
                server = server_of(conn)
                cur = conn.cursor()
                try:
                    cur.execute(MARKER_INSERT, (marker,))
                except pymysql.err.IntegrityError as exc:
                    if exc.args and exc.args[0] == DUPLICATE_KEY:
                        return 0  # an earlier try of this batch did commit: stored once, done
                    raise
                rows = lines if lines.ids is None else self._unstored(conn, lines)
                if rows.texts and not self._load(conn, rows, marker):
                    for sql in self._statements(conn, rows):
                        cur.execute(sql)
                session = Session(server, conn.thread_id())
                try:
                    conn.commit()
                except BaseException:
                    # Whatever failed, the server may have committed, and this connection's protocol state
                    # is unknown: it must not serve another batch (nor be the session we KILL later).
                    _force_close(conn)
                    raise
        except Exception as exc:
            # Only here, outside the block, does the error become UnknownOutcome: the pool must see the
            # failure itself to discard the connection rather than roll it back and reuse it.
            if session is not None:
                raise UnknownOutcome(session) from exc
            if lines.ids is not None and _line_id_taken(exc):
                raise LineIdTaken(f"a line id of a batch of {len(lines)} lines was committed meanwhile") from exc
            if isinstance(exc, pymysql.err.MySQLError) and exc.args and exc.args[0] in DATA_ERROR_CODES:
                raise Rejected(f"{len(lines)} lines refused: {exc}") from exc
            raise
        return len(lines) - len(rows)

    def _unstored(self, conn: Any, lines: Rows) -> Rows:
        """The lines to write, in this transaction: not those whose id is stored already, nor a second line
        with the same id. A plain (consistent) read: an id another transaction has not committed yet is
        not seen, and the INSERT then waits for that transaction (LineIdTaken if it commits)."""
        ids = lines.ids
        assert ids is not None  # asked only of lines with ids
        wanted = list({ident for ident in ids if ident is not None})
        seen: set[str] = set()
        cur = conn.cursor()
        escape = conn.escape
        for start in range(0, len(wanted), ID_LOOKUP_CHUNK):
            listed = ",".join(map(escape, wanted[start : start + ID_LOOKUP_CHUNK]))
            cur.execute(f"{self._id_lookup}({listed})")
            seen.update(row[0].decode() if isinstance(row[0], bytes) else row[0] for row in cur.fetchall())
        keep = []
        for ident in ids:
            if ident is None:
                keep.append(True)
            elif ident in seen:
                keep.append(False)
            else:
                seen.add(ident)
                keep.append(True)
        return lines if all(keep) else lines.only(keep)

    def _load(self, conn: Any, lines: Rows, marker: bytes) -> bool:
        """Write the rows with LOAD DATA LOCAL INFILE if the method says so; True if they are written.

        False leaves the transaction as it was (the marker alone in it): the caller INSERTs the rows.
        """
        if not self._use_load:
            return False
        sql = self._load_sql if lines.ids is None else self._load_sql_ids
        try:
            stored, warnings = conn.load_local_data(sql, self._load_data(lines))
        except pymysql.err.MySQLError as exc:
            if not (exc.args and exc.args[0] in LOAD_REFUSED_CODES):
                raise
            if self.method == "load":
                log.error("ingest: ingest.method is load, but the server refuses LOAD DATA LOCAL INFILE: %s", exc)
                raise
            self._use_load = False
            log.warning("ingest: the server refuses LOAD DATA LOCAL INFILE (%s): batches go as INSERTs", exc)
            return False
        if stored == len(lines) and not warnings:
            return True
        # A value the table refused became a warning (and a truncated or missing row): undo the load, keep the
        # marker, and let INSERT report the error for the offending line.
        if self._unclean_loads == 0:
            log.warning(
                "ingest: a LOAD of %d lines stored %d rows with %d warnings (first: %s); such batches are sent "
                "again with INSERT (logged once)",
                len(lines),
                stored,
                warnings,
                _first_warning(conn),
            )
        self._unclean_loads += 1
        conn.rollback()
        conn.cursor().execute(MARKER_INSERT, (marker,))
        return False

    def _load_data(self, rows: Rows) -> bytes:
        """The rows as the file of a LOAD (LOAD_FORMAT): stamp, address, pid and payload per row.

        Built per run, not per line: the fields before the payload are the same for a whole run.
        """
        texts = rows.texts
        joined = "\n".join(texts)  # a payload never holds LF
        if "\\" in joined or "\t" in joined or "\0" in joined:
            texts = _escape_field(joined).split("\n")
        if rows.ids is not None:
            # One more field, the id (\N: NULL); ids hold no character that needs escaping.
            texts = [
                f"{text}\t{ident}" if ident is not None else f"{text}\t\\N"
                for text, ident in zip(texts, rows.ids, strict=True)
            ]
        parts = []
        done = 0
        for received, addr, count in rows.runs:
            head = f"{self._stamp(received)}\t{self._load_field(addr)}\t{self.pid}\t"
            parts.append(head)
            parts.append(("\n" + head).join(texts[done : done + count]))
            parts.append("\n")
            done += count
        return "".join(parts).encode()

    def _load_field(self, addr: str) -> str:
        field = self._load_fields.get(addr)
        if field is None:
            if len(self._load_fields) > 10000:
                self._load_fields.clear()
            field = self._load_fields[addr] = _escape_field(addr)
        return field

    def _statements(self, conn: Any, rows: Rows) -> Iterator[str]:
        """Multi-row INSERTs of the rows, each under STATEMENT_CHARS of payload.

        Values go through the driver's own parameter escaping (``conn.escape``, which is what
        ``cursor.execute(sql, params)`` applies, and which honours NO_BACKSLASH_ESCAPES); building the
        statement here skips the driver's per-value type dispatch and %-formatting of 4 parameters per
        row. No value is ever formatted into SQL unescaped.
        """
        escape = conn.escape
        values: list[str] = []
        size = 0
        texts = iter(rows.texts)
        if rows.ids is None:
            insert_head, ends = self._insert_head, None
        else:
            insert_head = self._insert_head_ids
            ends = iter([f",{escape(ident)})" if ident is not None else ",NULL)" for ident in rows.ids])
        for received, addr, count in rows.runs:
            head = f"('{self._stamp(received)}',{escape(addr)},{self.pid},"
            for _ in range(count):
                text = next(texts)
                if size + len(text) > STATEMENT_CHARS and values:
                    yield insert_head + ",".join(values)
                    values, size = [], 0
                values.append(f"{head}{escape(text)}{next(ends) if ends is not None else ')'}")
                size += len(text)
        if values:
            yield insert_head + ",".join(values)

    def _stamp(self, ts: float) -> str:
        """A DATETIME(6) value in UTC for an epoch timestamp (the second's text is cached)."""
        secs = int(ts)
        if secs != self._stamp_secs:
            self._stamp_secs = secs
            self._stamp_text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(secs))
        return f"{self._stamp_text}.{int((ts - secs) * 1e6):06d}"

    def _retryable(self, exc: Exception) -> bool:
        if isinstance(exc, PoolError) or is_disconnect(exc):
            return True
        if isinstance(exc, pymysql.err.MySQLError) and exc.args:
            if exc.args[0] == NO_SUCH_TABLE or (exc.args[0] == BAD_FIELD and self.line_ids):
                self._ensure_tables_quietly()
                return True
            return exc.args[0] in RETRYABLE_CODES
        return False

    def _resolve_unknown(self, marker: bytes, session: Session) -> bool:
        """After a failed COMMIT: True if the batch is stored, False if it is not.

        Keeps asking until the database answers, however long that takes: replying ERR for a batch
        that may be stored would break the promise that ERR means not stored.
        """
        delay = RETRY_DELAY_MIN
        while True:
            try:
                with self.pool.connection() as conn:
                    found = marker_committed(conn, marker, session)
                log.warning(
                    "ingest: COMMIT outcome was unknown; the marker says %s", "committed" if found else "not committed"
                )
                return found
            except Exception as exc:
                if not self._retryable(exc):
                    log.warning("ingest: resolving a COMMIT outcome failed, retrying: %s", exc)
            gevent.sleep(delay)
            delay = min(RETRY_DELAY_MAX, delay * 2)

    # -- tables and housekeeping --------------------------------------------------------------------

    def check(self, worker: WorkerInfo) -> str:
        """``prefork check``: connect to the database and look for the table (and, with line ids on, its
        line id column)."""
        cfg = worker.config
        table = cfg.section(IngestSettings).table
        conn = connect_once(cfg.pool.dsn)
        try:
            found = table_exists(conn, table)
            ids_missing = found and cfg.server.line_ids and not has_line_id(conn, table)
        finally:
            conn.close()
        state = "exists" if found else "is missing (the workers create it at start, `prefork initdb` now)"
        if ids_missing:
            state += f" without its unique {LINE_ID_COLUMN} column (the workers add it at start, `prefork initdb` now)"
        return f"database {cfg.pool.dsn.redacted} answers, table `{table}` {state}"

    def initdb(self, worker: WorkerInfo) -> str:
        """``prefork initdb``: create the table (and the marker tables) if missing; with server.line_ids on,
        add the line id column and its unique key if missing."""
        cfg = worker.config
        table = cfg.section(IngestSettings).table
        conn = connect_once(cfg.pool.dsn)
        try:
            ensure_table(conn, table, line_ids=cfg.server.line_ids)
        except pymysql.err.MySQLError as exc:
            raise RuntimeError(f"cannot create table `{table}` in {cfg.pool.dsn.redacted}: {exc}") from None
        finally:
            conn.close()
        return f"table `{table}` ready in {cfg.pool.dsn.redacted}"

    def ensure_tables(self) -> None:
        """Create the ingest table and the marker table if they are missing (and the line id column, with
        server.line_ids on)."""
        with self.pool.connection() as conn:
            ensure_table(conn, self.table, line_ids=self.line_ids)

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
            "pending_bytes": self.pending_bytes,
            "batches": self.batches_committed,
            "rows": self.rows_committed,
            "rejected": self.rejected,
            "already_stored": self.already_stored,
        }

    def close(self, timeout: float) -> None:
        """Finish every queued batch (within timeout), then close the pool."""
        self._stopping = True
        self._work.set()
        gevent.joinall(self._flushers, timeout=timeout)
        self._expirer.kill(block=False)
        self.pool.close()


def _line_id_taken(exc: Exception) -> bool:
    """A duplicate key error on the line id key (not on a unique key an operator added)."""
    args: tuple[Any, ...] = getattr(exc, "args", ())
    return (
        isinstance(exc, pymysql.err.MySQLError)
        and len(args) > 1
        and args[0] == DUPLICATE_KEY
        and LINE_ID_TAKEN.search(str(args[1])) is not None
    )


def _session_setup(conn: Any) -> None:
    """Each new connection of ingest's pool: the server gives up on a stalled statement of ours soon."""
    cur = conn.cursor()
    set_session_variable(cur, "net_read_timeout", STALLED_CLIENT_S)
    set_session_variable(cur, "idle_write_transaction_timeout", STALLED_CLIENT_S)  # MariaDB only
    cur.close()


def _escape_field(text: str) -> str:
    """Escape a field of a LOAD file (LOAD_FORMAT): backslash, tab and NUL (LF never occurs in a line)."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\0", "\\0")


def _first_warning(conn: Any) -> str:
    try:
        warnings = conn.show_warnings()
        return str(warnings[0][2]) if warnings else "none listed"
    except Exception as exc:
        return f"unreadable: {exc}"


def _force_close(conn: Any) -> None:
    """Close a connection's socket without a word to the server (QUIT could be misread mid-protocol)."""
    force = getattr(conn, "_force_close", None)
    try:
        force() if force is not None else conn.close()
    except Exception:
        pass
