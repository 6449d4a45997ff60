"""``workers.ingest:app``: every line becomes a row, group-committed; ``OK`` only once it is committed.

Lines from all clients of a worker join the open batch; up to ``ingest.flushers`` transactions at a time
each take the oldest batch (at most ``ingest.batch_size`` rows), write it plus a marker row, COMMIT, and
only then release the batch's replies. There is no artificial delay: under light
load a line is committed at once, under heavy load batches grow while the flushers are busy. While one
flusher is busy, the others leave the open batch to grow for up to two recent commit times
(``workers.ingest.pending``): a worker's transactions at once share its CPU and slow each other down.

How a batch is written (``ingest.method``): ``load`` streams it from memory as the file of one
``LOAD DATA LOCAL INFILE`` (the cheapest way into InnoDB: no SQL to build or parse per row); ``insert``
uses multi-row INSERTs; ``auto`` (the default) loads, and falls back to INSERT for good, with one log
line, when the server refuses LOCAL INFILE. LOCAL turns a value the table refuses into a warning and a
truncated or skipped row instead of an error, so a load that reports any warning, or fewer rows than
the batch has, is rolled back and the batch is sent again with INSERT, where a bad value is an error
(and is bisected, below). Either way the rows hold every byte of every payload as sent.

Failures (README: "Reliability"):

- A batch that fails (disconnect, deadlock, database down) is retried through the pool with capped
  backoff; the pool discards broken connections. A line not committed within ``ingest.commit_timeout`` of
  its own arrival gets ``ERR unavailable`` then, whichever batch it joined (``workers.ingest.batch``): a retried
  batch answers its lines whose time is up and retries the others. A line never gets ``OK`` unless its
  row is committed.
- When the connection breaks during COMMIT the outcome is unknown. The worker reconnects, makes sure the
  old session is gone (so its COMMIT cannot still land), and looks up the batch's marker: found means
  committed (``OK``), missing means not (retry, or ``ERR`` past the deadline). So a retry never stores a
  line twice and ``ERR`` always means not stored.
- Any failure of the COMMIT itself (a disconnect, an error packet, a lost packet sequence) leaves the
  outcome unknown and goes through that lookup (``workers.ingest.outcome``); a duplicate key on the marker when
  a batch is retried means it is already stored.
- Lines still queued when they reach ``commit_timeout`` were never sent to the database: they get
  ``ERR unavailable`` even while every flusher is stuck (say, resolving an unknown outcome during an
  outage).
- A line the database rejects for its value (a charset the column cannot hold, a constraint) does not
  fail its batch: the batch is split in halves until the offending lines are alone; they get
  ``ERR rejected`` and the others are stored.
- With ``ingest.max_pending`` lines or ``ingest.max_pending_bytes`` of them waiting, ``handle`` blocks its
  reader: the worker stops reading from clients until batches drain, and memory stays bounded however
  long the outage.

Line ids (``server.line_ids = on``): the table gets a ``line_id`` column with a unique key (added if
missing), and each line's client-chosen id is stored with it (NULL for a line without one). A batch with
ids first looks its ids up, in its own transaction: a line whose id is already stored is answered ``OK``
and not written again, and lines of one batch with the same id are written once. When another transaction
commits one of the ids meanwhile (another worker, another flusher), the INSERT waits for it and fails with
a duplicate key on ``line_id`` (a LOAD skips the row with a warning, and is redone with INSERT, which
fails so): that is no rejected value, the batch is rolled back and tried again, and its lookup then finds
the id. So a line resent after a lost reply is stored once.

The modules, in the order a line meets them: ``flow`` (``IngestApp``, the hooks prefork calls, the
flushers' loop), ``pending`` (the queue of batches, backpressure, expiry), ``batch`` (a batch and the
futures of its replies), ``commit`` (retries, bisection, unknown outcomes), ``write`` (one try in one
transaction), ``encoding`` (LOAD file bytes and INSERT statements), ``outcome`` (the marker lookup after a
failed COMMIT); ``settings`` declares ``[ingest]``.
"""

from workers.ingest.flow import IngestApp
from workers.ingest.settings import IngestSettings

__all__ = ["IngestApp", "IngestSettings", "app"]

app = IngestApp()  # what server.app = workers.ingest:app names: one per process, set up in each worker
