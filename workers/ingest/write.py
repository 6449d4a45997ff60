"""One try at storing some lines: the batch's marker, the line-id lookup, the rows (LOAD DATA LOCAL INFILE
or INSERT, ``ingest.method``) and the COMMIT, in one transaction; and what a failure of that try means.

A try ends in one of four ways: the rows are committed; ``UnknownOutcome`` (the COMMIT itself failed: they
may be stored, ``workers.ingest.outcome`` finds out); ``Rejected`` (the database refused a value: retrying
the same rows is futile); ``LineIdTaken`` (another transaction committed one of the ids meanwhile: the next
try's lookup finds it); or the driver's or the pool's own error, which the committer judges
(``workers.ingest.commit``).
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import pymysql
from pymysql.constants import ER

from prefork.db import errors as E
from prefork.db.connection import force_close
from prefork.db.server import MARIADB, flavour
from prefork.pool import Pool, set_session_variable
from workers.ingest.batch import Rows
from workers.ingest.encoding import Encoder
from workers.ingest.outcome import Session, server_of
from workers.schema import LINE_ID_COLUMN, MARKER_TABLE

log = logging.getLogger("workers.ingest")

MARKER_INSERT = f"INSERT INTO `{MARKER_TABLE}` (batch_id) VALUES (%s)"
# The shortest wait for a connection that a try is given, even with its deadline (nearly) passed.
MIN_CONNECT_WAIT_S = 0.05
# How long the server waits for a stalled worker of ours on ingest's connections, in a statement
# (net_read_timeout) and between the statements of a transaction (MariaDB's
# idle_write_transaction_timeout), before it drops the session and so rolls its transaction back. A worker
# that hangs (frozen, starved of CPU, cut off) would otherwise hold its locks for as long as it hangs:
# the table's AUTO-INC lock, which a LOAD holds until its last data packet (innodb_autoinc_lock_mode = 1,
# the default), and the row locks of its line ids, which the same lines resent elsewhere must wait for.
# The statements of a batch follow each other within milliseconds, and our data is in memory.
STALLED_CLIENT_S = 5
# The server refuses LOAD DATA LOCAL INFILE: ER_NOT_ALLOWED_COMMAND (older servers), MariaDB's
# ER_LOAD_INFILE_CAPABILITY_DISABLED (local_infile = OFF), MySQL 8's "loading local data is disabled"
# (local_infile = OFF, MySQL 8's default).
LOAD_REFUSED_CODES = frozenset(
    {ER.NOT_ALLOWED_COMMAND, E.LOAD_INFILE_CAPABILITY_DISABLED, E.CLIENT_LOCAL_FILES_DISABLED}
)
# A duplicate on the line id key ("for key 'line_id'", MySQL 8: "'table.line_id'"): the id was committed
# by another transaction meanwhile. An id never holds a quote, so the key's name is the last quoted part.
LINE_ID_TAKEN = re.compile(rf"for key '(?:[^']*\.)?{LINE_ID_COLUMN}'$")
# Errors about a value, which the same rows get every time: bad column value, cannot be NULL, duplicate
# key (a unique index an operator added), out of range, data too long, incorrect string value (charset),
# invalid characters, foreign key, CHECK constraint.
DATA_ERROR_CODES = frozenset(
    {
        ER.BAD_NULL_ERROR,
        ER.DUP_ENTRY,
        ER.WARN_DATA_OUT_OF_RANGE,
        ER.TRUNCATED_WRONG_VALUE,
        ER.INVALID_CHARACTER_STRING,
        ER.TRUNCATED_WRONG_VALUE_FOR_FIELD,
        ER.ILLEGAL_VALUE_FOR_TYPE,
        ER.DATA_TOO_LONG,
        ER.NO_REFERENCED_ROW_2,
        E.CHECK_CONSTRAINT_VIOLATED,
        ER.CONSTRAINT_FAILED,
    }
)


class UnknownOutcome(Exception):
    """The COMMIT itself failed: the lines may or may not be stored."""

    def __init__(self, session: Session):
        super().__init__(session)
        self.session = session


class Rejected(Exception):
    """The database refused a value of these lines (DATA_ERROR_CODES): retrying them as they are is futile."""


class LineIdTaken(Exception):
    """Another transaction committed one of the batch's line ids meanwhile: try again, the lookup finds it."""


class Writer:
    """Tries to store lines through the pool, the way ``ingest.method`` says (``auto`` falls back to INSERT
    for good once the server refuses LOAD DATA LOCAL INFILE)."""

    def __init__(self, pool: Pool, encoder: Encoder, method: str) -> None:
        self.pool = pool
        self.encoder = encoder
        self.method = method
        self._use_load = method != "insert"  # False for good once a server refused LOAD (method auto)
        self._unclean_loads = 0  # LOADs redone with INSERT because of warnings (the first one is logged)
        # Where a try's time goes (``prefork status``, and make bench's latency breakdown): from the
        # connection in hand to the rows sent (marker, lookup, LOAD or INSERTs), and the COMMIT's round trip
        # (the redo log's flush, at innodb_flush_log_at_trx_commit = 1).
        self.write_s = 0.0
        self.commit_s = 0.0

    def write(self, lines: Rows, marker: bytes, deadline: float) -> int:
        """One try at storing the lines with their marker; return how many were not written because their
        id was stored already (or earlier in the same lines)."""
        timeout = max(MIN_CONNECT_WAIT_S, min(self.pool.timeout, deadline - time.monotonic()))
        session: Session | None = None  # known once the COMMIT is about to be sent
        try:
            with self.pool.connection(timeout=timeout) as conn:
                began = time.monotonic()
                server = server_of(conn)
                cur = conn.cursor()
                # Without ids to look up first, the marker goes in the LOAD's round trip (one query of two
                # statements: the LOAD is not run if the marker's INSERT fails).
                together = self._use_load and lines.ids is None and getattr(conn, "multi_statements", False)
                try:
                    if not together:
                        cur.execute(MARKER_INSERT, (marker,))
                        rows = lines if lines.ids is None else self._unstored(conn, lines)
                    else:
                        rows = lines
                    loaded = together and self._load(conn, rows, marker, with_marker=True)
                except pymysql.err.IntegrityError as exc:
                    # Only the marker's INSERT can fail so here (LOAD LOCAL makes a duplicate row a warning).
                    if E.error_code(exc) == ER.DUP_ENTRY:
                        return 0  # an earlier try of this batch did commit: stored once, done
                    raise
                if not together:
                    loaded = bool(rows.texts) and self._load(conn, rows, marker, with_marker=False)
                if rows.texts and not loaded:
                    for sql in self.encoder.inserts(conn.escape, rows):
                        cur.execute(sql)
                session = Session(server, conn.thread_id())
                written = time.monotonic()
                self.write_s += written - began
                try:
                    conn.commit()
                    self.commit_s += time.monotonic() - written
                except BaseException:
                    # Whatever failed, the server may have committed, and this connection's protocol state
                    # is unknown: it must not serve another batch (nor be the session we KILL later).
                    force_close(conn)
                    raise
        except Exception as exc:
            # Only here, outside the block, does the error become UnknownOutcome: the pool must see the
            # failure itself to discard the connection rather than roll it back and reuse it.
            if session is not None:
                raise UnknownOutcome(session) from exc
            if lines.ids is not None and _line_id_taken(exc):
                raise LineIdTaken(f"a line id of a batch of {len(lines)} lines was committed meanwhile") from exc
            if E.error_code(exc) in DATA_ERROR_CODES:
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
        for sql in self.encoder.id_lookups(conn.escape, wanted):
            cur.execute(sql)
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

    def _load(self, conn: Any, lines: Rows, marker: bytes, with_marker: bool) -> bool:
        """Write the rows with LOAD DATA LOCAL INFILE if the method says so; True if they are written.
        ``with_marker``: the marker's INSERT goes first in the same round trip (else it is in already).

        False leaves the transaction as it was (the marker alone in it): the caller INSERTs the rows.
        """
        if not self._use_load:
            return False
        first = MARKER_INSERT % conn.escape(marker) if with_marker else None
        try:
            stored, warnings = conn.load_local_data(
                self.encoder.load_statement(lines), self.encoder.load_data(lines), first
            )
        except pymysql.err.MySQLError as exc:
            if E.error_code(exc) not in LOAD_REFUSED_CODES:
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


def session_setup(conn: Any) -> None:
    """Each new connection of ingest's pool: the server gives up on a stalled statement of ours soon."""
    cur = conn.cursor()
    for name, value in session_variables(flavour(conn)):
        set_session_variable(cur, name, value)
    cur.close()
    if hasattr(conn, "set_multi_statements"):  # prefork's connection class (a test may hand another)
        # The marker's INSERT then goes in the LOAD's round trip (Writer.write). Every value in our SQL is
        # escaped by the driver, so a second statement can only be one we wrote.
        conn.set_multi_statements(True)


def session_variables(server_flavour: str) -> list[tuple[str, int]]:
    """The session variables ``session_setup`` sets on a server of this flavour (``prefork.db.server``).
    MySQL has no idle_write_transaction_timeout: there, ``wait_timeout`` (the server's, 8 hours by default)
    ends a hung session and its transaction, and innodb_lock_wait_timeout bounds the waits of others on its
    locks (README, "MySQL 8")."""
    variables = [("net_read_timeout", STALLED_CLIENT_S)]
    if server_flavour == MARIADB:
        variables.append(("idle_write_transaction_timeout", STALLED_CLIENT_S))
    return variables


def _line_id_taken(exc: Exception) -> bool:
    """A duplicate key error on the line id key (not on a unique key an operator added)."""
    args: tuple[Any, ...] = getattr(exc, "args", ())
    return (
        isinstance(exc, pymysql.err.MySQLError)
        and len(args) > 1
        and args[0] == ER.DUP_ENTRY
        and LINE_ID_TAKEN.search(str(args[1])) is not None
    )


def _first_warning(conn: Any) -> str:
    try:
        warnings = conn.show_warnings()
        return str(warnings[0][2]) if warnings else "none listed"
    except Exception as exc:
        return f"unreadable: {exc}"
