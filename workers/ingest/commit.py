"""Storing lines exactly once if at all possible, each before its own deadline: retries with capped backoff,
an unknown COMMIT outcome resolved through the batch's marker, a rejected batch split in halves until the
offending lines are alone.

The committer decides what a failed try (``workers.ingest.write``) means and what comes next; it never
answers a line ``OK`` unless its row is committed, nor ``ERR`` while its row may be.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable

import gevent
from pymysql.constants import ER

from prefork.db import errors as E
from prefork.interface import ERR_UNAVAILABLE
from prefork.pool import Pool, PoolError, is_disconnect
from workers.ingest.batch import Batch, Rows
from workers.ingest.outcome import Session, marker_committed
from workers.ingest.write import LineIdTaken, Rejected, UnknownOutcome, Writer

log = logging.getLogger("workers.ingest")

OK = "OK"
ERR_REJECTED = "ERR rejected"
RETRY_DELAY_MIN = 0.05
RETRY_DELAY_MAX = 2.0
# Lock wait timeout, deadlock, and "failed to read auto-increment value": a wait for the table's AUTO-INC
# lock (which a LOAD holds for its whole statement) that timed out.
RETRYABLE_CODES = frozenset({ER.LOCK_WAIT_TIMEOUT, ER.LOCK_DEADLOCK, E.AUTOINC_READ_FAILED})

# ``pick(now)``: the lines still to store and the earliest of their deadlines, those whose deadline has
# passed being answered (no rows: none is left).
Pick = Callable[[float], tuple[Rows, float]]


class Committer:
    """Commits lines through a ``Writer`` and counts what it stored (for ``prefork status``)."""

    def __init__(
        self, pool: Pool, writer: Writer, commit_timeout: float, line_ids: bool, ensure_tables: Callable[[], None]
    ):
        self.pool = pool
        self.writer = writer
        self.commit_timeout = commit_timeout
        self.line_ids = line_ids
        self._ensure_tables = ensure_tables  # called (and must not raise) when the table or its column is missing
        self.batches_committed = 0
        self.rows_committed = 0
        self.rejected = 0
        self.already_stored = 0  # lines answered OK because their id was stored before

    def commit(self, pick: Pick) -> str:
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
                skipped = self.writer.write(lines, marker, deadline)
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
                if not self.retryable(exc):
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

    def bisect(self, batch: Batch, rows: Rows, deadline: float, exc: Rejected) -> str:
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
                reply = self.commit(functools.partial(self._until, part, deadline))
            except Rejected as part_exc:
                self.bisect(batch, part, deadline, part_exc)
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

    def retryable(self, exc: Exception) -> bool:
        """Whether a try that failed so may succeed later (a missing table is created first)."""
        if isinstance(exc, PoolError) or is_disconnect(exc):
            return True
        code = E.error_code(exc)
        # A missing table, or an unknown column (line_id or client_cert not added yet: just turned on).
        if code == ER.NO_SUCH_TABLE or (code == ER.BAD_FIELD_ERROR and self.line_ids):
            self._ensure_tables()
            return True
        return code in RETRYABLE_CODES

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
                if not self.retryable(exc):
                    log.warning("ingest: resolving a COMMIT outcome failed, retrying: %s", exc)
            gevent.sleep(delay)
            delay = min(RETRY_DELAY_MAX, delay * 2)
