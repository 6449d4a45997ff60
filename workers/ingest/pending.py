"""The lines a worker has accepted and not yet answered: the queue of batches the flushers take, the bounds
that make readers wait (backpressure, ``ingest.max_pending`` and ``ingest.max_pending_bytes``), and the
expiry of lines past their deadline (``ingest.commit_timeout``), queued or being retried.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque

import gevent
from gevent.event import Event

from workers.ingest.batch import Batch, Rows, Share, Source

log = logging.getLogger("workers.ingest")

EXPIRE_INTERVAL_S = 0.25  # how often queued lines are checked against their deadline
# While a flusher is busy, the open batch waits this many recent commit times (at most) for another to
# take it (measured in bench: 1 and 3 did worse or no better than 2).
HOLD_CYCLES = 2
HOLD_MAX_S = 0.05  # and never longer (after a batch that took long, retried through an outage, say)
CYCLE_WEIGHT = 0.125  # weight of the latest batch in the moving average of commit times


class Pending:
    """The batches waiting for a flusher, and the count and memory of every line not yet answered."""

    def __init__(self, batch_size: int, commit_timeout: float, max_pending: int, max_pending_bytes: int) -> None:
        self.batch_size = batch_size
        self.commit_timeout = commit_timeout
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.batches: deque[Batch] = deque()  # oldest first; the last one is open while not taken
        self.lines = 0  # lines accepted and not yet answered
        self.nbytes = 0  # the memory their text holds
        self._work = Event()  # set when a batch is queued (or the queue closes): a flusher goes on
        self._room = Event()  # set while there is room: a reader waiting for it goes on
        self._room.set()
        self._closed = False  # no more lines come: a flusher finding the queue empty returns
        self.busy = 0  # flushers holding a batch
        self.cycle_s = 0.0  # how long a batch took to commit lately (a moving average)
        self.taken = 0  # batches taken by a flusher
        self.taken_lines = 0  # and their lines
        self.queued_s = 0.0  # the time those lines waited in the queue, summed over the lines

    def add(self, lines: list[str], addr: Source, ids: list[str | None] | None) -> list[Share]:
        """Queue the lines of one read from ``addr``; return the futures of their replies, one per line
        (lines that join the same batch share one). Blocks while the queue is full."""
        if ids is not None and ids.count(None) == len(ids):
            ids = None  # no line of this read has an id: nothing to keep per line
        while self.lines >= self.max_pending or self.nbytes >= self.max_pending_bytes:
            # Backpressure: this reader waits, so the worker stops reading from clients.
            self._room.clear()
            self._room.wait()
        received = time.time()
        due = time.monotonic() + self.commit_timeout  # these lines' own deadline, whichever batch they join
        batches = self.batches
        replies: list[Share] = []
        done = 0
        opened = False  # a batch was opened: one for an idle flusher, or the one before is full (ends a hold)
        while done < len(lines):
            batch = batches[-1] if batches else None
            if batch is None or batch.taken or len(batch.texts) >= self.batch_size:
                batch = Batch()
                batches.append(batch)
                opened = True
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
            self.lines += count
            self.nbytes += size
            done += count
        # Lines that only join the open batch wake nobody: a flusher holding it waits for its time, a full
        # batch or the busy one's end (``take``), and waking it at every read cost a switch per read.
        if opened and not self._work.is_set():
            self._work.set()
        return replies

    def take(self) -> Batch | None:
        """The oldest batch, which no more lines join now; waits for one. None once closed and empty.

        While another flusher is busy, the open batch is taken only once it is full or its first line has
        waited HOLD_CYCLES recent commit times (at most HOLD_MAX_S), or when no flusher is busy any more:
        two transactions of one worker at once share its CPU and the table's AUTO-INC lock, so each takes
        about twice as long, and a second one is worth it only when the first cannot keep up (measured:
        at half load p50 and p99 fell by a third and more).
        """
        while True:
            batches = self.batches
            if not batches:
                if self._closed:
                    return None
                self._work.clear()
                self._work.wait()
                continue
            batch = batches[0]
            if self.busy == 0 or self._closed or len(batches) > 1 or not batch.shares:
                break
            if len(batch.texts) >= self.batch_size:
                break
            waited = time.monotonic() - (batch.shares[0].due - self.commit_timeout)
            hold = min(self.cycle_s * HOLD_CYCLES, HOLD_MAX_S)
            if waited >= hold:
                break
            self._work.clear()
            self._work.wait(hold - waited)
        batch = batches.popleft()
        batch.taken = True
        self.busy += 1
        now = time.time()  # runs hold the arrival in epoch seconds (they become received_at)
        self.taken += 1
        self.taken_lines += len(batch.texts)
        self.queued_s += sum(count * (now - received) for received, _, count in batch.runs)
        return batch

    def done(self, seconds: float) -> None:
        """A flusher is through with its batch, which took this long to commit."""
        self.busy -= 1
        self.cycle_s += (seconds - self.cycle_s) * CYCLE_WEIGHT
        self._work.set()

    def close(self) -> None:
        """No more lines come: flushers finish what is queued, then ``take`` gives None."""
        self._closed = True
        self._work.set()

    def settle(self, batch: Batch, reply: str) -> None:
        """Release a batch's replies and its room in the queue."""
        batch.resolve(reply)
        self._release(len(batch.texts), batch.nbytes)
        batch.texts = []  # answered: the texts are not needed any more
        batch.runs = []
        batch.shares = []
        batch.ids = None

    def _release(self, lines: int, nbytes: int) -> None:
        """Lines answered: their room in the queue is free (a reader waiting for it goes on)."""
        self.lines -= lines
        self.nbytes -= nbytes
        if not self._room.is_set() and self.lines < self.max_pending and self.nbytes < self.max_pending_bytes:
            self._room.set()

    def unexpired(self, batch: Batch, now: float) -> tuple[Rows, float]:
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

    def expire_loop(self) -> None:
        """Answer ERR unavailable to queued lines past their commit_timeout: they were never sent to the
        database, so this is safe even while every flusher is stuck."""
        batches = self.batches
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
